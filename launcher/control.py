"""Operating a mesh from outside its ``crypto-mesh up`` process: who holds a data directory, which processes
run since when, and their output.

- :class:`MeshLock`: ``up`` holds an exclusive ``flock`` on ``<data_dir>/mesh.lock`` for the mesh's whole
  lifetime, with its pid and start time written in the file. A second ``up`` in the same directory fails to
  take it and touches nothing; ``status``, ``down`` and ``logs -f`` ask :func:`lock_holder` whether a mesh
  runs (a shared lock they cannot take means an ``up`` holds it). The kernel drops the lock when the ``up``
  process ends, however it ends, so a lock file left behind by a killed mesh never blocks the next one.
- :class:`ProcessTable`: each process's pid, start time and exit status, from the supervisor's ``<name> started
  (pid=N)`` / ``<name> stopped (rc=N)`` lines (:mod:`launcher.supervisor`, in honcho's wording), kept in
  ``<data_dir>/processes.json`` for ``status``; a restart's new pid replaces the old one.
- :class:`LogFiles`: every line a process prints, also appended to ``<data_dir>/logs/<name>.log`` as
  ``<ISO local time> <line>`` (by :class:`MeshPrinter`, a honcho printer); :func:`merged` interleaves
  several such files in time order for ``logs``.
- :func:`port_in_use`, :func:`format_duration`, :func:`status_table`: what ``up`` and ``status`` decide and
  print.

Everything here is plain files and system calls: no service is imported.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import json
import os
import re
import shlex
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from honcho.manager import SYSTEM_PRINTER_NAME
from honcho.printer import Printer

from launcher.settings import LOCK_FILE, LOGS_DIR, PROCESSES_FILE


class MeshBusyError(Exception):
    """Another ``crypto-mesh up`` holds the data directory; ``holder`` is what it wrote in the lock file
    (``{"pid": int, "started_at": Unix seconds}``), or ``{}`` if it has not written it yet."""

    def __init__(self, data_dir: Path, holder: Mapping[str, object]) -> None:
        self.data_dir = data_dir
        self.holder = dict(holder)
        pid = f" (pid {holder['pid']})" if "pid" in holder else ""
        super().__init__(f"another mesh{pid} runs in {data_dir}")


@dataclass
class MeshLock:
    """The exclusive lock of one data directory, held by the ``up`` process while its mesh lives.

    :meth:`acquire` creates ``<data_dir>/mesh.lock`` if needed, takes ``flock(LOCK_EX)`` without blocking
    (retrying for ``wait_s`` seconds, so that a ``status`` probing the lock at that instant does not refuse a
    start) and writes ``{"pid", "started_at"}`` in it; raises :class:`MeshBusyError` if another process holds
    it. The descriptor is close-on-exec, and a child forked by the holder without exec drops its copy, so the
    lock ends with the ``up`` process itself. :meth:`release` (idempotent) unlocks; the file stays.
    """

    data_dir: Path
    _fd: int | None = field(default=None, init=False, repr=False)

    @property
    def path(self) -> Path:
        return self.data_dir / LOCK_FILE

    def acquire(self, wait_s: float = 1.0, poll_s: float = 0.05) -> MeshLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise MeshBusyError(self.data_dir, holder) from None
                time.sleep(poll_s)
        record = json.dumps({"pid": os.getpid(), "started_at": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        os.register_at_fork(after_in_child=self._forget_in_child)
        return self

    def _forget_in_child(self) -> None:
        # A forked child shares the lock (flock belongs to the open file description); closing its copy keeps
        # the lock tied to the holder's life alone.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_holder(data_dir: Path) -> dict | None:
    """What the ``up`` holding ``data_dir`` wrote in its lock file (``{"pid", "started_at"}``, ``{}`` while
    it starts), or None when no mesh holds it. Takes and drops a shared lock to find out; never creates the
    file or the directory."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def port_in_use(host: str, port: int) -> bool:
    """True if ``host:port`` cannot be bound because something listens there (as the BFF binds: with
    ``SO_REUSEADDR``, so a port whose old connections linger in TIME_WAIT counts as free). Other bind errors
    (a host that is not local, a privileged port) are raised as ``OSError``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


_STARTED = re.compile(r"^(?P<name>\S+) started \(pid=(?P<pid>\d+)\)$")
_STOPPED = re.compile(r"^(?P<name>\S+) stopped \(rc=(?P<rc>-?\d+|None)\)$")


@dataclass
class ProcessTable:
    """Each process of a mesh: name → ``{"pid", "started_at" (Unix seconds), "returncode" (once stopped)}``.

    :meth:`observe` reads one line of the supervisor's own output (``auth started (pid=4242)``, ``auth
    stopped (rc=0)``) and returns True if it changed the table; other lines are ignored. ``path``, when given, is
    rewritten (atomically) at each change.
    """

    path: Path | None = None
    processes: dict[str, dict] = field(default_factory=dict)

    def observe(self, line: str, at: float) -> bool:
        line = line.strip()
        if started := _STARTED.match(line):
            self.processes[started["name"]] = {"pid": int(started["pid"]), "started_at": at}
        elif stopped := _STOPPED.match(line):
            rc = None if stopped["rc"] == "None" else int(stopped["rc"])
            self.processes.setdefault(stopped["name"], {})["returncode"] = rc
        else:
            return False
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.processes, indent=2))
            tmp.replace(self.path)
        return True


def read_processes(data_dir: Path) -> dict[str, dict]:
    """The :class:`ProcessTable` a running mesh keeps in ``<data_dir>/processes.json`` (``{}`` if none)."""
    try:
        return json.loads((data_dir / PROCESSES_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def format_duration(seconds: float) -> str:
    """A duration as ``42s``, ``5m07s``, ``3h05m`` or ``2d04h`` (negative counts as 0)."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


#: The key of ``mesh.json``'s ``urls`` that is a process's address, where it is not the process's own name.
URL_KEY = {"profile_bff": "bff"}


def status_table(
    state: Mapping, processes: Mapping[str, Mapping], healthy: Mapping[str, bool], now: float
) -> list[list[str]]:
    """The rows of ``crypto-mesh status``: a header, then one row per health-checked process of ``state``
    (``mesh.json``: ``checks`` and ``urls``) in start order: name, ``healthy``/``UNHEALTHY``, uptime (from
    ``processes``, ``-`` if unknown or stopped), pid, URL."""
    rows = [["SERVICE", "HEALTH", "UPTIME", "PID", "URL"]]
    for check in state["checks"]:
        name = check["name"]
        process = processes.get(name, {})
        running = "started_at" in process and "returncode" not in process
        uptime = format_duration(now - process["started_at"]) if running else "-"
        pid = str(process["pid"]) if running else "-"
        url = state["urls"].get(URL_KEY.get(name, name), "")
        rows.append([name, "healthy" if healthy.get(name) else "UNHEALTHY", uptime, pid, url])
    return rows


def format_rows(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, trailing blanks trimmed; one line per row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


class LogFiles:
    """``<data_dir>/logs/<name>.log``, one per process (directory 0700), emptied when a mesh starts;
    :meth:`write` appends each line of ``text`` as ``<time.isoformat(timespec="milliseconds")> <line>``.
    Names are the process names (``auth``, ``redis``, ..., ``system`` for the supervisor's own lines, ``mesh``
    for the readiness watcher)."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / LOGS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)  # what users of the mesh did is for its own user only, as its terminal is
        for old in self.directory.glob("*.log"):
            old.unlink()
        self._files: dict[str, object] = {}

    def write(self, name: str, at: datetime, text: str) -> None:
        file = self._files.get(name)
        if file is None:
            file = self._files[name] = (self.directory / f"{name}.log").open("a", encoding="utf-8")
        stamp = at.isoformat(timespec="milliseconds")
        file.write("".join(f"{stamp} {line}\n" for line in text.splitlines()))  # type: ignore[attr-defined]
        file.flush()  # type: ignore[attr-defined]

    def close(self) -> None:
        for file in self._files.values():
            file.close()  # type: ignore[attr-defined]
        self._files.clear()


def log_names(data_dir: Path) -> list[str]:
    """The process names with a log file in ``<data_dir>/logs``, sorted."""
    return sorted(path.stem for path in (data_dir / LOGS_DIR).glob("*.log"))


def merged(lines_by_name: Mapping[str, Iterable[str]]) -> Iterator[tuple[str, str]]:
    """``(name, line)`` of every line of :class:`LogFiles` format, the files interleaved by their timestamps
    (lines of one file keep their order; a line without a timestamp sorts with the one before it)."""

    def keyed(name: str, lines: Iterable[str]) -> Iterator[tuple[str, str, str]]:
        last = ""
        for line in lines:
            stamp = line.split(" ", 1)[0]
            last = stamp if _looks_like_time(stamp) else last
            yield last, name, line

    streams = [keyed(name, lines) for name, lines in lines_by_name.items()]
    for _stamp, name, line in heapq.merge(*streams, key=lambda item: item[0]):
        yield name, line


def _looks_like_time(stamp: str) -> bool:
    return len(stamp) >= 19 and stamp[4] == "-" and stamp[10] == "T"


def labelled(name: str, line: str, width: int) -> str:
    """One line of ``crypto-mesh logs``: ``<time> <name padded to width> | <text>``."""
    stamp, _, text = line.rstrip("\n").partition(" ")
    if not _looks_like_time(stamp):
        stamp, text = "", line.rstrip("\n")
    return f"{stamp} {name.ljust(width)} | {text}"


class MeshPrinter(Printer):
    """The printer of ``crypto-mesh up``'s supervisor (a honcho printer): prints as honcho does, and also
    appends every line to its process's file in ``logs`` (:class:`LogFiles`) and feeds the supervisor's own
    lines (name ``system``) to ``processes`` (:class:`ProcessTable`)."""

    def __init__(self, output, logs: LogFiles, processes: ProcessTable) -> None:
        super().__init__(output)
        self._logs = logs
        self._processes = processes

    def write(self, message) -> None:
        super().write(message)
        text = message.data.decode("utf-8", "replace") if isinstance(message.data, bytes) else message.data
        name = message.name or SYSTEM_PRINTER_NAME
        self._logs.write(name, message.time, text)
        if name == SYSTEM_PRINTER_NAME:
            self._processes.observe(text, message.time.timestamp())


def runnable_command(
    script: Path, on_path: str | None, cwd: Path, data_dir: Path, default_data_dir: Path
) -> str:
    """How a user runs ``script`` (the ``crypto-mesh`` of this installation) on the mesh of ``data_dir`` from
    ``cwd``: ``crypto-mesh`` if ``on_path`` (``shutil.which``'s answer) is that script, else its path relative
    to ``cwd`` when under it (``.venv/bin/crypto-mesh``), else absolute; prefixed with ``MESH_DATA_DIR=...``
    when ``data_dir`` is not ``default_data_dir`` (both absolute)."""
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        command = "crypto-mesh"
    elif script.is_relative_to(cwd):
        command = str(script.relative_to(cwd))
    else:
        command = str(script)
    if data_dir != default_data_dir:
        shown = data_dir.relative_to(cwd) if data_dir.is_relative_to(cwd) else data_dir
        command = f"MESH_DATA_DIR={shlex.quote(str(shown))} {command}"
    return command
