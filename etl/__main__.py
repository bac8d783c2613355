"""``python -m etl``: the Kafka → ClickHouse loader and its read-only SQL endpoint, until SIGTERM."""

from __future__ import annotations

import asyncio

from crypto_mesh.logs import configure_logging
from crypto_mesh.runtime import run_until_stopped
from etl.app import start
from etl.settings import EtlSettings


def main() -> None:
    settings = EtlSettings()
    configure_logging("etl", settings.log_level, settings.log_format)

    async def serve(stop: asyncio.Event) -> None:
        running = await start(settings)
        await stop.wait()
        await running.stop()

    run_until_stopped(serve)


if __name__ == "__main__":
    main()
