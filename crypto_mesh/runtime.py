"""Run a service's main coroutine until SIGTERM or SIGINT, then let it stop cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from crypto_mesh.logs import get_logger

log = get_logger(__name__)


def run_until_stopped(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` in a new event loop; ``stop`` is set on the first SIGTERM or SIGINT.

    ``main`` is expected to start its servers, ``await stop.wait()``, then close them. A second signal
    while stopping is ignored; the supervisor (``crypto-mesh up`` or the container runtime) escalates
    to SIGKILL if stopping takes too long.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _request_stop, stop, sig)
        await main(stop)

    asyncio.run(runner())


def _request_stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("stopping", signal=sig.name)
        stop.set()
