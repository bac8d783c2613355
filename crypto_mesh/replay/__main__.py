"""``python -m crypto_mesh.replay``: serve the recordings of ``REPLAY_FILES`` until SIGTERM."""

from __future__ import annotations

import asyncio

from crypto_mesh.logs import configure_logging
from crypto_mesh.replay.server import start
from crypto_mesh.replay.settings import ReplaySettings
from crypto_mesh.runtime import run_until_stopped


def main() -> None:
    settings = ReplaySettings()
    configure_logging("replay", settings.log_level, settings.log_format)

    async def serve(stop: asyncio.Event) -> None:
        running = await start(settings)
        await stop.wait()
        await running.stop()

    run_until_stopped(serve)


if __name__ == "__main__":
    main()
