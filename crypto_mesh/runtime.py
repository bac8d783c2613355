"""Run a service until SIGTERM or SIGINT, then let it stop cleanly: the one ``__main__`` of every service.

Every service runs on uvloop where it is installed (Linux: a dependency of the project there), else on
asyncio's own loop (:func:`default_loop_factory`). uvloop's transports and event loop cost less per event
than asyncio's selector loop: each frame of the market path crosses several of them (the exchange's websocket,
socket_proxy's gRPC stream, the aggregator's Redis and Kafka writes), as does each message the BFF pushes.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from pydantic import ValidationError

try:
    import uvloop
except ImportError:  # not Linux: asyncio's own loop
    uvloop = None

from crypto_mesh.logs import configure_logging, get_logger
from crypto_mesh.service import Running
from crypto_mesh.settings import ServiceSettings, WorkerSettings
from crypto_mesh.tracing import configure_tracing
from crypto_mesh.workers import (
    SUPERVISOR_PID_VARIABLE,
    WorkerPool,
    check_port_free,
    stop_when_orphaned,
    worker_environment,
    worker_index,
)

log = get_logger(__name__)

S = TypeVar("S", bound=ServiceSettings)
R = TypeVar("R")


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
    main: Callable[[asyncio.Event], Awaitable[R]],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> R:
    """Run ``main(stop)`` in a new event loop and return what it returns; ``stop`` is set on the first
    SIGTERM or SIGINT.

    ``loop_factory`` makes that loop (``uvloop.new_event_loop``, say); ``None``: asyncio's default loop.

    ``main`` is expected to start its servers, ``await stop.wait()``, then close them. A second signal
    while stopping is ignored; the supervisor (``crypto-mesh up`` or the container runtime) escalates
    to SIGKILL if stopping takes too long.
    """

    async def runner() -> R:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _request_stop, stop, sig)
        return await main(stop)

    with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
        return loop_runner.run(runner())


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

    A service whose settings are :class:`~crypto_mesh.settings.WorkerSettings` with ``<PREFIX>WORKERS`` above
    1 does not serve in this process: it runs its workers (:mod:`crypto_mesh.workers`; this same command
    line, each process then serving as above, with ``worker=<index>`` in every log line) until SIGTERM/SIGINT,
    and exits with the pool's status (1 after giving up on a worker, or when the port is taken).
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
    index = worker_index(os.environ)
    if index is None and isinstance(settings, WorkerSettings) and settings.workers > 1:
        sys.exit(run_workers(settings))
    configure_tracing(name)
    if index is None:
        run_until_stopped(lambda stop: serve_until(start, settings, stop), loop_factory=loop_factory)
        return
    structlog.contextvars.bind_contextvars(worker=index)
    supervisor_pid = int(os.environ[SUPERVISOR_PID_VARIABLE])
    run_until_stopped(
        lambda stop: serve_as_worker(start, settings, stop, supervisor_pid), loop_factory=loop_factory
    )


def run_workers(settings: WorkerSettings) -> int:
    """Run ``settings.workers`` worker processes of this service (this process's own command line, each with
    :func:`crypto_mesh.workers.worker_environment`) in a :class:`~crypto_mesh.workers.WorkerPool` until
    SIGTERM/SIGINT; the exit status: 0 after the stop, 1 after giving up on a worker or when
    ``settings.host:settings.port`` is taken (logged as ``port_in_use``)."""
    try:
        check_port_free(settings.host, settings.port)
    except OSError as error:
        log.error("port_in_use", host=settings.host, port=settings.port, error=str(error))
        return 1
    command = [sys.executable, *sys.orig_argv[1:]]
    environments = [
        worker_environment(os.environ, settings, index, os.getpid()) for index in range(settings.workers)
    ]
    log.info("serving_with_workers", host=settings.host, port=settings.port, workers=settings.workers)
    return run_until_stopped(WorkerPool(command, environments).run)


async def serve_as_worker(
    start: Callable[[S], Awaitable[Running]], settings: S, stop: asyncio.Event, supervisor_pid: int
) -> None:
    """:func:`serve_until` in a worker process, which also stops (as on SIGTERM) once its supervisor
    ``supervisor_pid`` is gone (:func:`crypto_mesh.workers.stop_when_orphaned`)."""
    watcher = asyncio.create_task(stop_when_orphaned(stop, supervisor_pid))
    try:
        await serve_until(start, settings, stop)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def _request_stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("stopping", signal=sig.name)
        stop.set()
