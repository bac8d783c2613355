"""Run a service until SIGTERM or SIGINT, then let it stop cleanly: the one ``__main__`` of every service.

Every service runs on uvloop where it is installed (Linux: a dependency of the project there), else on
asyncio's own loop (:func:`default_loop_factory`). uvloop's transports and event loop cost less per event
than asyncio's selector loop: each frame of the market path crosses several of them (the exchange's websocket,
socket_proxy's gRPC stream, the aggregator's Redis and Kafka writes), as does each message the BFF pushes.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import ValidationError

try:
    import uvloop
except ImportError:  # not Linux: asyncio's own loop
    uvloop = None

from crypto_mesh.logs import configure_logging, get_logger
from crypto_mesh.service import Running
from crypto_mesh.settings import ServiceSettings
from crypto_mesh.tracing import configure_tracing

log = get_logger(__name__)

S = TypeVar("S", bound=ServiceSettings)


def raise_if_cancelling() -> None:
    """Raise ``asyncio.CancelledError`` if the running task has been asked to cancel.

    For the loops of background tasks, at the top of every iteration and in the handler of the errors they
    retry on: a library may swallow a cancellation (seen with redis-py's pipeline: the task was left
    "cancelling" and went on publishing) or turn it into one of its own errors (Python 3.11's
    ``asyncio.timeout`` raises ``TimeoutError`` when the task is cancelled as the timeout expires, and
    clients wrap that in theirs). The loop would then go on for ever, and whoever awaits the cancelled task
    (a service's ``stop()``) would wait for ever. ``Task.cancelling()`` stays above zero in both cases.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def tune_garbage_collector(generation0: int, generation1: int = 10, generation2: int = 10) -> None:
    """Garbage collection for a long-running service process; call once, after its imports and before it
    serves.

    Collects, then freezes what start-up made (:func:`gc.freeze`: never walked by the collector again),
    and sets the collector's thresholds (CPython's defaults: 700, 10, 10). A young collection waits for
    ``generation0`` net new container objects; raise it above what one unit of the service's work keeps
    alive, so those objects die of reference counting before any collection walks and promotes them. The
    collector is only needed for reference cycles. Callers document the figures that chose their values.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(generation0, generation1, generation2)


def default_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes a service's event loop: ``uvloop.new_event_loop`` where uvloop is installed, else ``None``
    (asyncio's default loop)."""
    return uvloop.new_event_loop if uvloop is not None else None


def run_until_stopped(
    main: Callable[[asyncio.Event], Awaitable[None]],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Run ``main(stop)`` in a new event loop; ``stop`` is set on the first SIGTERM or SIGINT.

    ``loop_factory`` makes that loop (``uvloop.new_event_loop``, say); ``None``: asyncio's default loop.

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

    with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
        loop_runner.run(runner())


async def serve_until(start: Callable[[S], Awaitable[Running]], settings: S, stop: asyncio.Event) -> None:
    """``await start(settings)``, serve until ``stop`` is set, then ``stop()`` the service.

    A stop that comes while ``start`` is still waiting (for a database that never comes up, say) cancels the
    start, so SIGTERM always works.
    """
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


def run_service(
    name: str,
    settings_class: type[S],
    start: Callable[[S], Awaitable[Running]],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = default_loop_factory(),
) -> None:
    """``python -m <service>``: read ``settings_class`` from the environment, configure logging and, with
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, tracing (:mod:`crypto_mesh.tracing`) as ``name``, and serve with ``start``
    until SIGTERM/SIGINT, in a loop made by ``loop_factory`` (default: :func:`default_loop_factory`, uvloop
    where installed; ``None``: asyncio's default loop).

    Settings that are missing or invalid end the process with exit status 2 and one line per problem that
    names the environment variable, never a traceback.
    """
    try:
        settings = settings_class()
    except ValidationError as error:
        prefix = settings_class.model_config.get("env_prefix", "")
        for problem in error.errors():
            variable = prefix.upper() + "_".join(str(part) for part in problem["loc"]).upper()
            print(f"{name}: setting {variable}: {problem['msg']}", file=sys.stderr)
        sys.exit(2)
    configure_logging(name, settings.log_level, settings.log_format)
    configure_tracing(name)
    run_until_stopped(lambda stop: serve_until(start, settings, stop), loop_factory=loop_factory)


def _request_stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("stopping", signal=sig.name)
        stop.set()
