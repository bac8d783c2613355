"""``python -m profile_bff``: the REST + WebSocket backend-for-frontend, until SIGTERM."""

from __future__ import annotations

import asyncio

from crypto_mesh.logs import configure_logging
from crypto_mesh.runtime import run_until_stopped
from profile_bff.app import start
from profile_bff.settings import BffSettings


def main() -> None:
    """Read ``BFF_*`` settings, serve until SIGTERM/SIGINT, then close sockets (code 1001) and pools."""
    settings = BffSettings()
    configure_logging("profile_bff", settings.log_level, settings.log_format)

    async def serve(stop: asyncio.Event) -> None:
        running = await start(settings)
        await stop.wait()
        await running.stop()

    run_until_stopped(serve)


if __name__ == "__main__":
    main()
