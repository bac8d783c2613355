"""The one lifecycle of every service: start, ready, stop.

Every service has ``async def start(settings) -> Running[...]`` in its ``app.py``/``server.py``, built with
:func:`start_service`:

- **start** opens the service's resources one after another on a :class:`Lifecycle` (clients, background tasks,
  the HTTP or gRPC port) and returns once the port serves. Each step registers how it is undone; if a later step
  fails (or the caller is cancelled), what was opened is closed again in reverse order and the error propagates,
  so a failed start leaves nothing behind.
- **ready** is what the service's health reports (``GET /healthz`` or the gRPC health service): dependencies that
  are not up yet are retried in the background (:mod:`crypto_mesh.retry`), never by failing the start.
- **stop** (:meth:`Running.stop`, idempotent) undoes the steps in reverse order: the port stops taking new work and
  lets calls in flight finish, background tasks are cancelled, clients are closed.

``python -m <service>`` runs ``start`` until SIGTERM/SIGINT with :func:`crypto_mesh.runtime.run_service`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from crypto_mesh.grpc_tls import HEALTH_SERVICE, REFLECTION_SERVICE
from crypto_mesh.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")


class Lifecycle:
    """The resources a service opened, undone in reverse order by :meth:`close` (a ``contextlib.AsyncExitStack``).

    ``name`` is the service's name for log events (``service_started``, ``service_stopped``).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._stack = AsyncExitStack()

    def on_stop(self, callback: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
        """Await ``callback(*args, **kwargs)`` at stop, before everything registered earlier is undone."""
        self._stack.push_async_callback(callback, *args, **kwargs)

    def on_stop_sync(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``callback(*args, **kwargs)`` at stop (e.g. closing a thread pool)."""
        self._stack.callback(callback, *args, **kwargs)

    def task(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Run ``coroutine`` as a background task named ``name``; at stop it is cancelled and awaited.

        A task that ends with an error is logged at once (``background_task_failed``, with its traceback), not
        only at stop, so that a loop that died is seen while the service still runs (its health says what it
        lacks); a service that must react to such an end watches the task itself.
        """
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_report_failure)
        self._stack.push_async_callback(_cancel_and_wait, task)
        return task

    async def serve_http(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        access_log: Any = None,
        shutdown_timeout_s: float = 5.0,
        keepalive_timeout_s: float = 75.0,
        guard: Callable[[Any], Callable[[], asyncio.BaseProtocol]] | None = None,
        backlog: int = 128,
        reuse_port: bool = False,
    ) -> int:
        """Serve ``app`` on ``host:port`` (0: a free port) and return the bound port; at stop the listening
        socket closes first, then in-flight requests get ``shutdown_timeout_s`` to finish and idle keep-alive
        connections (kept ``keepalive_timeout_s``) are closed.

        ``guard``, for a public edge: given aiohttp's low-level server (a protocol factory), returns the
        protocol factory the listening socket uses instead, e.g. one that counts and caps connections before
        aiohttp sees them. ``reuse_port``: bind with ``SO_REUSEPORT``, so that the worker processes of one service
        (:mod:`crypto_mesh.workers`) listen on the same port, the kernel spreading new connections over them.
        Raises ``OSError`` if the port cannot be bound (nothing is left open)."""
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=access_log,
            shutdown_timeout=shutdown_timeout_s,
            keepalive_timeout=keepalive_timeout_s,
        )
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        if guard is None:
            await web.TCPSite(runner, host, port, backlog=backlog, reuse_port=reuse_port).start()
            return runner.addresses[0][1]
        assert runner.server is not None
        server = await asyncio.get_running_loop().create_server(
            guard(runner.server), host, port, backlog=backlog, reuse_address=True, reuse_port=reuse_port
        )
        self._stack.callback(server.close)
        return server.sockets[0].getsockname()[1]

    async def serve_grpc(
        self,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        services: tuple[str, ...],
        *,
        grace_s: float,
        serving: bool = True,
    ) -> None:
        """Start ``server`` with server reflection (``grpc.reflection.v1alpha.ServerReflection``) listing
        ``services``, health and reflection itself; set health of ``""`` and each of ``services`` to SERVING (or
        NOT_SERVING when ``serving`` is false: the service turns it on when ready). At stop: health NOT_SERVING
        for every service, then the calls in flight get ``grace_s`` seconds before the server ends them.

        ``services`` are full names (``crypto.auth.v1.Auth``) whose descriptors the generated stubs registered;
        who may call reflection is decided by the server's interceptor like any other service
        (:data:`crypto_mesh.grpc_tls.OPEN_TO_THE_MESH`)."""
        # Set before the port opens: a new HealthServicer reports "" as SERVING until told otherwise.
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", *services):
            await health_servicer.set(service, status)
        reflection.enable_server_reflection((*services, HEALTH_SERVICE, REFLECTION_SERVICE), server)
        await server.start()
        self._stack.push_async_callback(server.stop, grace_s)
        self._stack.push_async_callback(health_servicer.enter_graceful_shutdown)

    async def close(self) -> None:
        """Undo every registered step in reverse order (idempotent)."""
        await self._stack.aclose()


async def _cancel_and_wait(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # an error is logged by _report_failure


def _report_failure(task: asyncio.Task) -> None:
    """Done callback of every background task: log the error it ended with, if any."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None and isinstance(error, Exception):
        log.error(
            "background_task_failed",
            task=task.get_name(),
            error=f"{type(error).__name__}: {error}",
            exc_info=error,
        )


@dataclass
class Running(Generic[T]):
    """A started service: ``name``, the bound ``port`` and ``service``, the object that holds its state (counters,
    health, clients) for the tests, the benchmarks and the operator's endpoints. ``await stop()`` shuts it down
    (idempotent)."""

    name: str
    port: int
    service: T
    _lifecycle: Lifecycle = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    async def stop(self) -> None:
        """Undo the start in reverse order (see :class:`Lifecycle`); a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        await self._lifecycle.close()
        log.info("service_stopped", port=self.port)


async def start_service(name: str, build: Callable[[Lifecycle], Awaitable[tuple[int, T]]]) -> Running[T]:
    """Start a service: ``await build(lifecycle)`` opens its resources on ``lifecycle`` and returns ``(bound port,
    service object)``. If ``build`` raises or is cancelled, everything it opened is closed in reverse order and the
    error propagates. Logs ``service_started`` with the port."""
    lifecycle = Lifecycle(name)
    try:
        port, service = await build(lifecycle)
    except BaseException:
        await lifecycle.close()
        raise
    log.info("service_started", port=port)
    return Running(name, port, service, lifecycle)
