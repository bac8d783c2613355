"""``python -m auth``: run the auth service with settings from ``AUTH_*`` environment variables."""

from __future__ import annotations

import asyncio

from auth.server import start
from auth.settings import AuthSettings
from crypto_mesh.logs import configure_logging
from crypto_mesh.runtime import run_until_stopped


async def serve(settings: AuthSettings, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set. A stop that comes while the start still waits for the database cancels
    the start, so SIGTERM works even when PostgreSQL never comes up."""
    starting = asyncio.create_task(start(settings))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return
    running = starting.result()
    await stop.wait()
    await running.stop()


def main() -> None:
    settings = AuthSettings()
    configure_logging("auth", settings.log_level, settings.log_format)
    run_until_stopped(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
