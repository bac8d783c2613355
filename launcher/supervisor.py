"""The process supervisor of ``crypto-mesh up``: runs the mesh's processes, restarts one that crashes, stops
them all in an order that loses no record.

honcho's ``Manager``, which ran the mesh before, stops every process as soon as one exits; a mesh for people
to use should keep serving while one part restarts, as compose's ``restart: unless-stopped`` does. This is a
small asyncio loop over ``asyncio.create_subprocess_exec`` (no extra dependency; supervisord and circus are
daemons of their own with configuration files, more than one foreground command needs):

- **Output** as honcho prints it (honcho's :class:`~honcho.printer.Printer`: ``HH:MM:SS name | line``), every
  line also going to the printer's log files; the supervisor's own lines come from ``system``:
  ``<name> started (pid=N)``, ``<name> stopped (rc=N)`` (which :class:`launcher.control.ProcessTable` reads,
  so ``crypto-mesh status`` shows each restart's new pid and uptime), ``sending SIGTERM to <name> (pid N)``.
- **Restarts**: a process of :class:`Child` with ``restart`` that exits while the mesh is not stopping (a
  crash, a ``kill -9``, even status 0) is started again after a delay from
  :class:`~crypto_mesh.retry.RestartPolicy`; after ``max_crashes`` exits within ``window_s`` seconds the
  supervisor gives up on it and stops the whole mesh (:attr:`Supervisor.gave_up` names it; ``up`` then exits
  with status 1). A process without ``restart`` (the readiness watcher) may exit with status 0; any other
  status stops the mesh.
- **Dependents**: the :attr:`Child.restart_also` of a process that crashed are stopped at once (SIGTERM, then
  SIGKILL after ``stop_timeout_s``; not counted as crashes, ``stopping <name> until <crashed> is back``); the
  crashed process is started again once they have exited, and they are started again once it is
  :attr:`Child.ready` (``starting <name> again: <crashed> is ready``). The embedded broker comes back empty,
  so its clients start again, creating their topics and joining their consumer group anew; stopping them
  first keeps a client's own stop (a last commit, leaving its group) from reaching the new, empty broker,
  where it would leave a member behind that the new client's join must wait out.
- **Stop** (SIGINT/SIGTERM, or giving up): the children are stopped stage by stage, lowest
  :attr:`Child.stop_stage` first; before each stage its ``before_stop`` hook runs (``up`` waits there until the
  ETL has loaded what the embedded broker holds: :func:`launcher.drain.wait_until_consumed`). Each process gets
  SIGTERM, and SIGKILL after ``stop_timeout_s``. A second signal during the stop skips the remaining hooks and
  kills what is left.

Children run in their own session, so a Ctrl-C in the terminal reaches ``up`` alone, which orders the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from honcho.colour import get_colours
from honcho.manager import SYSTEM_PRINTER_NAME
from honcho.printer import Message

from crypto_mesh.retry import RestartPolicy

#: Longest line read from a child at once (bytes); a longer one is printed in pieces.
LINE_LIMIT = 1 << 20


@dataclass
class Child:
    """One supervised process: ``name``, ``argv`` (executed directly, no shell), ``env`` (the whole
    environment), whether to ``restart`` it, its ``stop_stage`` (lower stops first), ``before_stop``, an
    async hook run once before its stage stops (the first hook of a stage runs, others are ignored), and
    ``restart_also``, and ``ready``."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    restart: bool = True
    stop_stage: int = 0
    before_stop: Callable[[Callable[[str], None]], Awaitable[None]] | None = None
    #: Processes stopped (SIGTERM, not counted as crashes) as soon as this one crashes, and started again
    #: once it is restarted and :attr:`ready`: the clients of the memory-only broker, which comes back empty.
    restart_also: tuple[str, ...] = ()
    #: Whether this process serves its clients now (called on a worker thread, e.g. "its port accepts
    #: connections"); polled after a restart before its ``restart_also`` start again. None: ready once started.
    ready: Callable[[], bool] | None = None


class Supervisor:
    """Runs ``children`` until a signal or a give-up, printing through ``printer`` (a honcho
    :class:`~honcho.printer.Printer`, e.g. :class:`launcher.control.MeshPrinter`). ``policy`` makes one
    :class:`~crypto_mesh.retry.RestartPolicy` per child. :meth:`run` returns the exit status for ``up``: 0
    after a stop asked by a signal, 1 after giving up (:attr:`gave_up` says why) or a non-restarted child's
    failure."""

    def __init__(
        self,
        children: Sequence[Child],
        printer,
        policy: Callable[[], RestartPolicy] = RestartPolicy,
        stop_timeout_s: float = 10.0,
        ready_timeout_s: float = 30.0,
    ) -> None:
        self.children = list(children)
        self.printer = printer
        self.printer.width = max([len(SYSTEM_PRINTER_NAME), *(len(c.name) for c in self.children)])
        self.stop_timeout_s = stop_timeout_s
        #: Longest wait for a restarted process to be :attr:`Child.ready` before its dependents start anyway.
        self.ready_timeout_s = ready_timeout_s
        self._policies = {child.name: policy() for child in self.children}
        colours = get_colours()
        self._colours = {child.name: next(colours) for child in self.children}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._bouncing: set[str] = set()
        #: Dependent → the event set once the process it waits for is back (:meth:`_hold`, :meth:`_release`).
        self._held: dict[str, asyncio.Event] = {}
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self.returncode = 0
        #: Why the supervisor stopped the mesh by itself (one line), or None.
        self.gave_up: str | None = None

    def say(self, text: str) -> None:
        """Print one line as ``system``."""
        self._print(SYSTEM_PRINTER_NAME, text + "\n", None)

    def _print(self, name: str, data: str, colour) -> None:
        self.printer.write(Message(type="line", data=data, time=datetime.now(), name=name, colour=colour))

    def request_stop(self, returncode: int = 0, reason: str | None = None) -> None:
        """Stop the mesh (idempotent; a second request while stopping hurries the stop)."""
        if self._stop.is_set():
            self._hurry.set()
            return
        self.returncode = returncode
        if reason is not None:
            self.gave_up = reason
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
            loop.add_signal_handler(signum, self._on_signal, name)
        keepers = [asyncio.create_task(self._keep(child)) for child in self.children]
        try:
            await self._stop.wait()
            await self._stop_in_stages()
            await asyncio.gather(*keepers, return_exceptions=True)
        finally:
            for task in keepers:
                task.cancel()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        return self.returncode

    def _on_signal(self, name: str) -> None:
        self.say(f"{name} received" + (": stopping at once" if self._stop.is_set() else ""))
        self.request_stop(0)

    async def _keep(self, child: Child) -> None:
        policy = self._policies[child.name]
        while not self._stop.is_set():
            if not await self._released(child.name):
                return
            process = await self._start(child)
            if process is None:
                returncode = 127
            else:
                if self._stop.is_set():  # started while the stop began: its stage may be past already
                    _signal(process, signal.SIGTERM)
                elif child.name in self._held:  # held while it was being started
                    self._bouncing.add(child.name)
                    _signal(process, signal.SIGTERM)
                pump = asyncio.create_task(self._pump(child, process))
                if any(name in self._held for name in child.restart_also):
                    await self._until_ready(child, process)
                    self._release(child)
                returncode = await process.wait()
                # The rest of its output; a grandchild still holding the pipe does not hold the supervisor.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(pump), 2.0)
                pump.cancel()
                self.say(f"{child.name} stopped (rc={returncode})")
            if self._stop.is_set():
                return
            if child.name in self._bouncing:
                self._bouncing.discard(child.name)
                continue
            if not child.restart:
                if returncode != 0:
                    self.request_stop(1, f"{child.name} failed (rc={returncode})")
                return
            crashed_at = time.monotonic()
            delay = policy.crashed(crashed_at)
            if delay is None:
                reason = (
                    f"{child.name} exited {policy.recent} times within {policy.window_s:.0f}s "
                    f"(last rc={returncode}): giving up on it"
                )
                self.say(reason + "; stopping the mesh")
                self.request_stop(1, reason)
                return
            self.say(f"{child.name} exited unexpectedly (rc={returncode}): restarting it in {delay:.1f}s")
            await self._hold(child)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, crashed_at + delay - time.monotonic()))

    async def _hold(self, child: Child) -> None:
        """Stop the :attr:`Child.restart_also` of ``child`` (which has just crashed) and keep them from
        starting until :meth:`_release`; return once the running ones have exited."""
        running: dict[str, asyncio.subprocess.Process] = {}
        for name in child.restart_also:
            self._held.setdefault(name, asyncio.Event())
            process = self._processes.get(name)
            if process is not None and process.returncode is None:
                self._bouncing.add(name)
                self.say(f"stopping {name} until {child.name} is back")
                running[name] = process
        await self._terminate(running)

    async def _released(self, name: str) -> bool:
        """Wait while ``name`` is held (:meth:`_hold`); False if the mesh stops meanwhile."""
        held = self._held.get(name)
        if held is not None:
            stop = asyncio.create_task(self._stop.wait())
            release = asyncio.create_task(held.wait())
            await asyncio.wait({stop, release}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            release.cancel()
        return not self._stop.is_set()

    async def _until_ready(self, child: Child, process: asyncio.subprocess.Process) -> None:
        """Poll :attr:`Child.ready` every 50 ms until it holds, the process exits, the mesh stops or
        :attr:`ready_timeout_s` passes (said)."""
        if child.ready is None:
            return
        deadline = time.monotonic() + self.ready_timeout_s
        while process.returncode is None and not self._stop.is_set():
            if await asyncio.to_thread(child.ready):
                return
            if time.monotonic() >= deadline:
                self.say(f"{child.name} is not ready after {self.ready_timeout_s:.0f}s")
                return
            await asyncio.sleep(0.05)

    def _release(self, child: Child) -> None:
        """Let the processes held for ``child`` start again."""
        for name in child.restart_also:
            held = self._held.pop(name, None)
            if held is not None:
                self.say(f"starting {name} again: {child.name} is ready")
                held.set()

    async def _start(self, child: Child) -> asyncio.subprocess.Process | None:
        try:
            process = await asyncio.create_subprocess_exec(
                *child.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=child.env,
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        except OSError as error:
            self.say(f"{child.name} cannot start: {error}")
            return None
        self._processes[child.name] = process
        self.say(f"{child.name} started (pid={process.pid})")
        return process

    async def _pump(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        colour = self._colours[child.name]
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line over LINE_LIMIT: print what is buffered and go on
                line = await process.stdout.read(LINE_LIMIT)
            if not line:
                return
            self._print(child.name, line.decode("utf-8", "replace"), colour)

    async def _stop_in_stages(self) -> None:
        for stage in sorted({child.stop_stage for child in self.children}):
            members = [child for child in self.children if child.stop_stage == stage]
            hook = next((c.before_stop for c in members if c.before_stop is not None), None)
            if hook is not None and not self._hurry.is_set():
                hurry = asyncio.create_task(self._hurry.wait())
                drain = asyncio.create_task(hook(self.say))
                await asyncio.wait({drain, hurry}, return_when=asyncio.FIRST_COMPLETED)
                for task in (drain, hurry):
                    task.cancel()
                if drain.done() and not drain.cancelled() and drain.exception() is not None:
                    self.say(f"before stopping {', '.join(c.name for c in members)}: {drain.exception()}")
            await self._stop_processes([child.name for child in members])

    async def _stop_processes(self, names: list[str]) -> None:
        alive = {
            name: process
            for name in names
            if (process := self._processes.get(name)) is not None and process.returncode is None
        }
        for name, process in alive.items():
            self.say(f"sending SIGTERM to {name} (pid {process.pid})")
        await self._terminate(alive)

    async def _terminate(self, alive: dict[str, asyncio.subprocess.Process]) -> None:
        """SIGTERM to each process of ``alive`` (name → process), SIGKILL to those still running after
        ``stop_timeout_s`` (or at once when the stop is hurried); return once all have exited."""
        for process in alive.values():
            _signal(process, signal.SIGTERM)
        waits = [asyncio.create_task(process.wait()) for process in alive.values()]
        if not waits:
            return
        hurry = asyncio.create_task(self._hurry.wait())
        await asyncio.wait(
            [asyncio.gather(*waits), hurry], timeout=self.stop_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        hurry.cancel()
        for name, process in alive.items():
            if process.returncode is None:
                self.say(f"sending SIGKILL to {name} (pid {process.pid})")
                _signal(process, signal.SIGKILL)
        await asyncio.gather(*waits)


def _signal(process: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)
