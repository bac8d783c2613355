"""``python -m aggregator``: settings from ``AGGREGATOR_*`` environment variables, until SIGTERM."""

from __future__ import annotations

import asyncio

from aggregator.app import start
from aggregator.settings import AggregatorSettings
from crypto_mesh.logs import configure_logging
from crypto_mesh.runtime import run_until_stopped


async def main(stop: asyncio.Event) -> None:
    settings = AggregatorSettings()
    configure_logging("aggregator", settings.log_level, settings.log_format)
    running = await start(settings)
    await stop.wait()
    await running.stop()


if __name__ == "__main__":
    run_until_stopped(main)
