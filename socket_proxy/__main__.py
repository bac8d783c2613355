"""``python -m socket_proxy``: serve the gRPC SocketProxy until SIGTERM."""

from __future__ import annotations

import asyncio

from crypto_mesh.logs import configure_logging
from crypto_mesh.runtime import run_until_stopped
from socket_proxy.server import start
from socket_proxy.settings import ProxySettings


def main() -> None:
    settings = ProxySettings()
    configure_logging("socket_proxy", settings.log_level, settings.log_format)

    async def serve(stop: asyncio.Event) -> None:
        running = await start(settings)
        await stop.wait()
        await running.stop()

    run_until_stopped(serve)


if __name__ == "__main__":
    main()
