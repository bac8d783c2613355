"""Several worker processes of one service on one port: ``<PREFIX>WORKERS``
(:class:`crypto_mesh.settings.WorkerSettings`).

A Python process serves on one core. A service that must use more of a machine's cores than one (the BFF's
WebSocket fan-out) runs ``N`` worker processes, each a whole service of its own (its lifecycle, engine
connections, Redis subscription, consumer-group membership), all listening on the same ``host:port`` with
``SO_REUSEPORT``: the kernel hashes each new connection's address and port pair onto one of the listening
sockets, so connections spread evenly without a process in their path, and a worker's own connections are
never touched by another's crash.

``python -m <service>`` with ``<PREFIX>WORKERS=N > 1`` runs :class:`WorkerPool` (from
:func:`crypto_mesh.runtime.run_service`) instead of serving: a supervisor that serves nothing itself,

- checks that the port is free (:func:`check_port_free`: no other process, with or without ``SO_REUSEPORT``,
  listens there, so that two services never silently share a port), then starts the ``N`` workers, each the
  same command line (``sys.orig_argv``) with :func:`worker_environment`: its index in
  :data:`WORKER_INDEX_VARIABLE`, the supervisor's pid in :data:`SUPERVISOR_PID_VARIABLE`, and its metrics
  port ``<PREFIX>METRICS_PORT + index``;
- starts a worker that exits again (a crash, a SIGKILL, even status 0) after a
  :class:`~crypto_mesh.retry.RestartPolicy` delay (0.5 s doubling to 10 s, with jitter) while the others
  keep serving; after 5 exits of one worker within 60 s it gives up: it stops the others and exits 1, for the
  supervisor above it (compose, ``crypto-mesh up``) to act on;
- on SIGTERM or SIGINT sends SIGTERM to every worker, each of which stops as a single process does (its
  sockets closed with 1001, requests in flight given their time), SIGKILL to one still running after
  ``stop_timeout_s``, and exits 0 once all have exited.

A worker whose supervisor is gone (killed with SIGKILL, which cannot be forwarded) notices within a second
(:func:`stop_when_orphaned`) and stops as on SIGTERM, so no worker outlives its supervisor.

Why not gunicorn's pre-fork master: its workers accept on the master's socket and run the application
gunicorn builds, while a service here starts through its own lifecycle (:mod:`crypto_mesh.service`: the
connection guard in front of aiohttp, a metrics port of its own, background work) and already stops cleanly
on SIGTERM; what is left to do is this small loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence

from crypto_mesh.logs import get_logger
from crypto_mesh.retry import RestartPolicy
from crypto_mesh.settings import MetricsPortSettings, WorkerSettings

log = get_logger(__name__)

#: Environment variable that makes a process one of the workers of a :class:`WorkerPool`: its index, 0 to N-1.
#: Set by the pool only; a process without it and with ``<PREFIX>WORKERS > 1`` is the pool itself.
WORKER_INDEX_VARIABLE = "CRYPTO_MESH_WORKER_INDEX"
#: Environment variable naming the pid of a worker's supervisor (:func:`stop_when_orphaned`).
SUPERVISOR_PID_VARIABLE = "CRYPTO_MESH_WORKER_SUPERVISOR"
#: Seconds a worker gets to stop after SIGTERM before it is killed: below the 10 s that ``crypto-mesh up``
#: and compose (``stop_grace_period``) give the supervisor itself.
STOP_TIMEOUT_S = 8.0
#: How often a worker looks whether its supervisor is still there (s).
ORPHAN_CHECK_S = 0.5


def worker_index(environ: Mapping[str, str]) -> int | None:
    """The index of the worker this process is (``environ[WORKER_INDEX_VARIABLE]``), or None when it is no
    worker of a pool. Raises ``ValueError`` for a value that is not a non-negative integer."""
    value = environ.get(WORKER_INDEX_VARIABLE)
    if value is None:
        return None
    index = int(value)
    if index < 0:
        raise ValueError(f"{WORKER_INDEX_VARIABLE} must be 0 or more, not {index}")
    return index


def worker_environment(
    environ: Mapping[str, str], settings: WorkerSettings, index: int, supervisor_pid: int
) -> dict[str, str]:
    """The environment of worker ``index`` (0-based) of a service with ``settings``, started by the process
    ``supervisor_pid`` whose environment is ``environ``: ``environ`` with the worker's index and its
    supervisor's pid, and, when the service serves metrics on a port of its own
    (:class:`~crypto_mesh.settings.MetricsPortSettings` with a port), ``<PREFIX>METRICS_PORT`` moved on by
    ``index`` so that each worker's series are their own target. Everything else (``<PREFIX>PORT``,
    ``<PREFIX>WORKERS``) is the same for every worker."""
    environment = dict(environ)
    environment[WORKER_INDEX_VARIABLE] = str(index)
    environment[SUPERVISOR_PID_VARIABLE] = str(supervisor_pid)
    if isinstance(settings, MetricsPortSettings) and settings.metrics_port:
        prefix = str(settings.model_config.get("env_prefix", "")).upper()
        environment[f"{prefix}METRICS_PORT"] = str(settings.metrics_port + index)
    return environment


def check_port_free(host: str, port: int) -> None:
    """Raise ``OSError`` (``EADDRINUSE``) if a process listens on ``host:port`` already.

    Binds a socket without ``SO_REUSEPORT`` (with ``SO_REUSEADDR``, as every server here binds, so that the
    remnants of connections closed a moment ago do not count) and closes it again: it fails where any socket
    listens on the port, also one of another pool's workers, which a socket with ``SO_REUSEPORT`` of the same
    user would otherwise join without a word."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


async def stop_when_orphaned(
    stop: asyncio.Event, supervisor_pid: int, interval_s: float = ORPHAN_CHECK_S
) -> None:
    """Set ``stop`` once this process's parent is no longer ``supervisor_pid`` (the supervisor has exited
    and the process was handed to init or a subreaper); checked every ``interval_s``."""
    while not stop.is_set():
        if os.getppid() != supervisor_pid:
            log.warning("worker_orphaned", supervisor_pid=supervisor_pid)
            stop.set()
            return
        await asyncio.sleep(interval_s)


class WorkerPool:
    """``len(environments)`` worker processes, worker ``i`` running ``command`` with ``environments[i]``
    (the whole environment), kept running until a stop (see the module docstring).

    ``policy`` makes the :class:`~crypto_mesh.retry.RestartPolicy` of each worker; ``stop_timeout_s`` is the
    time a worker gets between SIGTERM and SIGKILL. :meth:`run` returns the exit status of the supervisor:
    0 after a stop asked for, 1 after giving up on a worker."""

    def __init__(
        self,
        command: Sequence[str],
        environments: Sequence[Mapping[str, str]],
        *,
        policy: Callable[[], RestartPolicy] = RestartPolicy,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        if not environments:
            raise ValueError("a worker pool needs at least one worker")
        self.command = list(command)
        self.environments = [dict(environment) for environment in environments]
        self.stop_timeout_s = stop_timeout_s
        self._policies = [policy() for _ in self.environments]
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._stop = asyncio.Event()
        self.returncode = 0

    async def run(self, stop: asyncio.Event) -> int:
        """Start every worker and keep them running until ``stop`` is set (or a worker is given up on), then
        stop them all; the exit status (0, or 1 after giving up)."""
        self._stop = stop
        log.info("workers_starting", workers=len(self.environments))
        keepers = [asyncio.create_task(self._keep(index)) for index in range(len(self.environments))]
        try:
            await stop.wait()
            await self._terminate()
            await asyncio.gather(*keepers)
        finally:
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        log.info("workers_stopped", returncode=self.returncode)
        return self.returncode

    async def _keep(self, index: int) -> None:
        policy = self._policies[index]
        while not self._stop.is_set():
            process = await self._start(index)
            pid = None if process is None else process.pid
            returncode = 127 if process is None else await process.wait()
            if self._stop.is_set():
                return
            delay = policy.crashed(time.monotonic())
            if delay is None:
                log.error(
                    "worker_given_up",
                    worker=index,
                    pid=pid,
                    returncode=returncode,
                    exits=policy.recent,
                    window_s=policy.window_s,
                )
                self.returncode = 1
                self._stop.set()
                return
            log.warning(
                "worker_exited", worker=index, pid=pid, returncode=returncode, restart_in_s=round(delay, 2)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _start(self, index: int) -> asyncio.subprocess.Process | None:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, env=self.environments[index], stdin=asyncio.subprocess.DEVNULL
            )
        except OSError as error:
            log.error("worker_start_failed", worker=index, error=str(error))
            return None
        self._processes[index] = process
        log.info("worker_started", worker=index, pid=process.pid)
        if self._stop.is_set():  # the stop began while it was starting: _terminate may have passed it by
            _signal(process, signal.SIGTERM)
        return process

    async def _terminate(self) -> None:
        """SIGTERM to every running worker, SIGKILL to those still running after ``stop_timeout_s``; returns
        once all have exited."""
        alive = [process for process in self._processes.values() if process.returncode is None]
        for process in alive:
            _signal(process, signal.SIGTERM)
        if not alive:
            return
        waits = [asyncio.create_task(process.wait()) for process in alive]
        await asyncio.wait(waits, timeout=self.stop_timeout_s)
        for process in alive:
            if process.returncode is None:
                log.warning("worker_killed", pid=process.pid, after_s=self.stop_timeout_s)
                _signal(process, signal.SIGKILL)
        await asyncio.gather(*waits)


def _signal(process: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)
