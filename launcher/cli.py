"""``crypto-mesh``: start, watch and stop the whole mesh on one machine; query its market history with SQL.

- ``crypto-mesh up``: embedded defaults for every backing service whose URL is not set (see
  :mod:`launcher.mesh`), then the five services and the replay exchange; waits until all are healthy,
  prints the URLs and the commands below, prefixes every log line with its process's name (and writes it to
  ``<MESH_DATA_DIR>/logs/<name>.log``), stops everything on Ctrl-C or SIGTERM. It refuses to start, with one
  line on stderr and exit status 1, when another mesh holds the data directory (:class:`MeshLock`) or the
  BFF's port is taken; then it has touched nothing.
- ``crypto-mesh status``: each process of the running mesh, its health (checked now), uptime, pid and URL;
  exit status 0 when all are healthy, 3 when one is not, 1 when no mesh runs in ``MESH_DATA_DIR``.
- ``crypto-mesh down``: stops the mesh of ``MESH_DATA_DIR`` started elsewhere (SIGTERM to its ``up``, the
  same graceful stop as Ctrl-C) and waits until its ``up`` has exited.
- ``crypto-mesh logs [NAME] [-f]``: the output of every process (or of one), interleaved in time order;
  ``-f`` follows it until the mesh stops.
- ``crypto-mesh topics list``, ``crypto-mesh topics tail TOPIC [-n N] [-f]``: the Kafka topics of the running
  mesh, read with aiokafka (:mod:`launcher.topics`; the embedded broker does not serve Debian's kcat).
- ``crypto-mesh db current|upgrade|downgrade``: the schema migrations of the auth and profile PostgreSQL
  databases (Alembic) and of ClickHouse (the ETL's SQL files, forward-only), on the mesh's databases or the
  URLs given (:mod:`launcher.db`).
- ``crypto-mesh sql "SELECT ..."``: a read-only query against ``crypto.*``. In embedded mode chDB is opened by
  the ETL process only, so the query goes through the ETL's SQL endpoint; with ``MESH_CLICKHOUSE_URL`` set it
  goes straight to that ClickHouse server. Either way it is checked by :mod:`etl.sql` (one SELECT over
  ``crypto``, allowed functions); a refused or unparseable query exits with status 2, a failed one with 1.
  The ETL's service credential is read from ``<MESH_DATA_DIR>/secrets/etl_api_token`` (``mesh.json`` holds
  no secret).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from crypto_mesh import jsonutil
from crypto_mesh.servicecreds import bearer_header, read_token
from launcher import control
from launcher.settings import ETL_TOKEN_FILE, PROCESSES_FILE, STATE_FILE, MeshSettings, read_state

#: Exit status of ``status`` when the mesh runs but a process is not healthy, and of ``db current`` when a
#: database is not at head.
STATUS_UNHEALTHY = 3
#: The databases of ``crypto-mesh db`` (:mod:`launcher.db`), in the order it reports them.
DB_NAMES = ("auth", "profile", "clickhouse")


@click.group()
@click.version_option(package_name="crypto-mesh", prog_name="crypto-mesh")
def main() -> None:
    """Real-time crypto-portfolio tracker: a gRPC service mesh."""


def _busy_message(error: control.MeshBusyError) -> str:
    return (
        f"{error}: stop it first (`crypto-mesh down`), or start this one with another MESH_DATA_DIR"
    )


@main.command()
def up() -> None:
    """Start the whole mesh (settings: MESH_* environment variables) until Ctrl-C or `crypto-mesh down`."""
    import asyncio

    from launcher.embedded import EmbeddedPostgres
    from launcher.mesh import build_plan, write_pending
    from launcher.replay.recording import RecordingError
    from launcher.supervisor import Child, Supervisor

    settings = MeshSettings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = control.MeshLock(data_dir).acquire()
    except control.MeshBusyError as error:
        raise click.ClickException(_busy_message(error)) from None
    # From here on the data directory is this mesh's: what an earlier mesh left (a state file, logs) is stale.
    postgres = None
    supervisor = None
    # Until the supervisor installs its own handlers, SIGTERM (`crypto-mesh down`) stops the start cleanly too.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        try:
            if control.port_in_use(settings.bff_host, settings.bff_port):
                raise click.ClickException(
                    f"port {settings.bff_port} on {settings.bff_host} is already in use (another program, "
                    "or a mesh in another data directory): free it or set MESH_BFF_PORT"
                )
        except OSError as error:
            raise click.ClickException(
                f"cannot listen on {settings.bff_host}:{settings.bff_port} (MESH_BFF_HOST, MESH_BFF_PORT): "
                f"{error.strerror or error}"
            ) from None
        for stale in (STATE_FILE, PROCESSES_FILE):
            (data_dir / stale).unlink(missing_ok=True)
        if settings.postgres_url is None:
            click.echo(f"starting embedded PostgreSQL in {data_dir / 'postgres'}")
            postgres = EmbeddedPostgres(data_dir / "postgres")
            postgres.start()
        try:
            plan = build_plan(settings, postgres)
        except RecordingError as error:
            raise click.ClickException(str(error)) from None
        pending = write_pending(plan)
        logs = control.LogFiles(data_dir)
        processes = control.ProcessTable(data_dir / PROCESSES_FILE)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        watcher = [sys.executable, "-m", "launcher.cli", "watch", str(pending), str(settings.ready_timeout_s)]
        supervisor = Supervisor(
            [*_children(plan, base_env), Child("readiness", watcher, base_env, restart=False)],
            control.MeshPrinter(sys.stdout, logs, processes),
        )
        asyncio.run(supervisor.run())
        logs.close()
    finally:
        if postgres is not None:
            postgres.stop()
        for state_file in (STATE_FILE, PROCESSES_FILE):
            (data_dir / state_file).unlink(missing_ok=True)
        lock.release()
    if supervisor.gave_up is not None:
        raise click.ClickException(
            f"the mesh stopped: {supervisor.gave_up} (see `crypto-mesh logs`; its last lines are above)"
        )
    sys.exit(supervisor.returncode)


def _children(plan, base_env: dict[str, str]) -> list:
    """The supervised processes of ``plan`` (:class:`launcher.supervisor.Child`), the ETL's stop preceded by
    draining the embedded broker (:attr:`launcher.mesh.MeshPlan.drain`)."""
    from launcher.drain import wait_until_consumed
    from launcher.mesh import STOP_ETL
    from launcher.supervisor import Child

    def drain(report) -> object:
        return wait_until_consumed(report=report, **plan.drain)

    return [
        Child(
            process.name, process.argv, {**base_env, **process.env}, stop_stage=process.stop_stage,
            restart_also=process.restart_also, ready=process.ready.ok if process.ready is not None else None,
            before_stop=drain if plan.drain is not None and process.stop_stage == STOP_ETL else None,
        )
        for process in plan.processes
    ]


def _exit_on_sigterm(_signum, _frame) -> None:
    sys.exit(143)


@main.command(hidden=True)
@click.argument("pending", type=click.Path(exists=True, path_type=Path))
@click.argument("timeout_s", type=float)
def watch(pending: Path, timeout_s: float) -> None:
    """Wait for every process to be healthy, print the URLs and exit (status 1 if not healthy in time)."""
    from launcher.mesh import wait_ready

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    report = lambda line: click.echo(line, nl=True)  # noqa: E731
    if not wait_ready(pending, timeout_s, report=report):
        sys.exit(1)
    state = read_state(pending.parent)
    urls = state["urls"]
    cwd = Path.cwd()
    command = control.runnable_command(
        Path(sys.executable).parent / "crypto-mesh", shutil.which("crypto-mesh"), cwd, pending.parent,
        (cwd / MeshSettings.model_fields["data_dir"].default).resolve(),
    )
    click.echo(
        "mesh ready\n"
        f"  dashboard  {urls['bff']}/ (open it in a browser)\n"
        f"  REST API   {urls['bff']}\n"
        f"  WebSocket  {urls['websocket']}\n"
        f"  exchange   {urls['exchange']}\n"
        f"  SQL        {command} sql \"SELECT symbol, count() FROM crypto.market_tickers GROUP BY symbol\"\n"
        f"  status     {command} status\n"
        f"  logs       {command} logs -f [service]\n"
        f"  stop       {command} down   (or Ctrl-C here)"
    )
    sys.stdout.flush()


def _running_mesh(data_dir: Path) -> dict:
    """What the ``up`` holding ``data_dir`` wrote in its lock file; a one-line error (exit status 1) when no
    mesh runs there."""
    holder = control.lock_holder(data_dir)
    if holder is None:
        raise click.ClickException(f"no mesh runs in {data_dir} (start one with `crypto-mesh up`)")
    return holder


@main.command()
def status() -> None:
    """Show each process of the running mesh: health (checked now), uptime, pid and URL.

    Exit status 0 when every process is healthy, 3 when one is not, 1 when no mesh runs in MESH_DATA_DIR.
    """
    from concurrent.futures import ThreadPoolExecutor

    from launcher.mesh import HealthCheck

    data_dir = MeshSettings().data_dir.resolve()
    holder = _running_mesh(data_dir)
    try:
        state = read_state(data_dir)
    except FileNotFoundError:
        pid = f" (pid {holder['pid']})" if "pid" in holder else ""
        click.echo(f"the mesh in {data_dir}{pid} is starting: not every process is healthy yet")
        sys.exit(STATUS_UNHEALTHY)
    checks = [HealthCheck(**check) for check in state["checks"]]
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        healthy = dict(zip((check.name for check in checks), pool.map(HealthCheck.ok, checks)))
    now = time.time()
    started = holder.get("started_at")
    uptime = f", up {control.format_duration(now - started)}" if isinstance(started, (int, float)) else ""
    click.echo(f"mesh in {data_dir} (pid {state['pid']}){uptime}")
    rows = control.status_table(state, control.read_processes(data_dir), healthy, now)
    click.echo(control.format_rows(rows))
    if not all(healthy.values()):
        sys.exit(STATUS_UNHEALTHY)


@main.command()
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the mesh to stop (its ETL may first load what the broker holds).")
def down(timeout_s: float) -> None:
    """Stop the mesh running in MESH_DATA_DIR (started in another terminal), as Ctrl-C there would, and wait
    until it has stopped."""
    data_dir = MeshSettings().data_dir.resolve()
    holder = _running_mesh(data_dir)
    pid = holder.get("pid")
    if not isinstance(pid, int):
        raise click.ClickException(f"the mesh in {data_dir} is still starting; try again in a moment")
    click.echo(f"stopping the mesh in {data_dir} (pid {pid})")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended between the look and the signal
    except PermissionError:
        raise click.ClickException(
            f"not allowed to stop pid {pid}: the mesh in {data_dir} is another user's"
        ) from None
    deadline = time.monotonic() + timeout_s
    while control.lock_holder(data_dir) is not None:
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"the mesh (pid {pid}) has not stopped after {timeout_s:.0f}s; see `crypto-mesh logs`"
            )
        time.sleep(0.2)
    click.echo("mesh stopped")


@main.command()
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the mesh stops.")
def logs(name: str | None, follow: bool) -> None:
    """Print the output of every process of the mesh (or of process NAME: auth, profile_bff, ...), in time
    order; it is kept in MESH_DATA_DIR/logs/ from the mesh's start until the next one."""
    from launcher.settings import LOGS_DIR

    data_dir = MeshSettings().data_dir.resolve()
    names = control.log_names(data_dir)
    if not names:
        raise click.ClickException(f"no logs in {data_dir / LOGS_DIR} (start a mesh with `crypto-mesh up`)")
    if name is not None:
        if name not in names:
            raise click.ClickException(f"no process named {name!r}; there are: {', '.join(names)}")
        names = [name]
    width = max(len(n) for n in names)
    files = {n: (data_dir / LOGS_DIR / f"{n}.log").open(encoding="utf-8", errors="replace") for n in names}
    try:
        pending = {n: "" for n in names}

        def new_lines(n: str) -> list[str]:
            # Whole lines only: a line being written is kept until its end arrives.
            text = pending[n] + files[n].read()
            *lines, pending[n] = text.split("\n")
            return lines

        for n, line in control.merged({n: new_lines(n) for n in names}):
            click.echo(control.labelled(n, line, width))
        while follow and control.lock_holder(data_dir) is not None:
            time.sleep(0.25)
            for n, line in control.merged({n: new_lines(n) for n in names}):
                click.echo(control.labelled(n, line, width))
    except KeyboardInterrupt:
        pass  # Ctrl-C ends `logs -f`
    finally:
        for file in files.values():
            file.close()


@main.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def sql(query: str, fmt: str) -> None:
    """Run a read-only SQL QUERY against the market history and print the result."""
    from etl import sql as etl_sql

    settings = MeshSettings()
    if settings.clickhouse_url:
        columns, _types, rows = _query_clickhouse(settings.clickhouse_url, query)
    else:
        columns, rows = _query_etl(settings.data_dir.resolve(), query)
    if fmt == "json":
        click.echo(etl_sql.format_json(columns, rows))
    elif fmt == "csv":
        click.echo(etl_sql.format_csv(columns, rows), nl=False)
    else:
        click.echo(etl_sql.format_table(columns, rows))


class QueryRefusedError(click.ClickException):
    """A query the analytics check refused (not one SELECT over ``crypto``, or unparseable): exit status 2,
    one line on stderr, like click's usage errors."""

    exit_code = 2


def _query_clickhouse(url: str, query: str):
    from clickhouse_connect.driver.exceptions import Error as ClickHouseError

    from etl import sql as etl_sql

    try:
        client = etl_sql.analytics_client(url)
    except (ClickHouseError, OSError) as error:
        if "UNKNOWN_DATABASE" in str(error):
            raise click.ClickException(
                f"ClickHouse at MESH_CLICKHOUSE_URL has no database {etl_sql.ANALYTICS_DATABASE} yet: the ETL "
                "creates it when it starts (or run `crypto-mesh db upgrade --database clickhouse`)"
            ) from None
        raise click.ClickException(f"cannot reach ClickHouse at MESH_CLICKHOUSE_URL: {error}") from None
    try:
        return etl_sql.run_read_only(client, query)
    except etl_sql.QueryRejected as error:
        raise QueryRefusedError(f"query refused: {error}") from None
    except (ClickHouseError, OSError) as error:
        raise click.ClickException(f"query failed: {etl_sql.one_line(str(error))}") from None
    finally:
        client.close()


def _query_etl(data_dir: Path, query: str) -> tuple[list[str], list[list]]:
    try:
        etl_url = read_state(data_dir)["urls"]["etl"]
    except FileNotFoundError:
        raise click.ClickException(
            f"no running mesh in {data_dir} (start one with `crypto-mesh up`, or set MESH_CLICKHOUSE_URL)"
        ) from None
    token_file = data_dir / "secrets" / ETL_TOKEN_FILE
    try:
        token = read_token(token_file)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot read the ETL's service credential {token_file}: {error}") from None
    request = urllib.request.Request(
        f"{etl_url}/v1/sql",
        data=jsonutil.dumps({"query": query}),
        headers={"Content-Type": "application/json", **bearer_header(token)},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail, code = error.read().decode(errors="replace"), None
        try:
            error_body = json.loads(detail)["error"]
            code, detail = error_body["code"], error_body["message"]
        except (ValueError, KeyError, TypeError):
            pass  # not the error JSON: the body as it came
        if error.code in (400, 403) and "_query" in str(code):
            raise QueryRefusedError(f"query refused ({error.code}): {detail}") from None
        raise click.ClickException(f"query failed ({error.code}): {detail}") from None
    except urllib.error.URLError as error:
        raise click.ClickException(f"the ETL at {etl_url} is not answering: {error.reason}") from None
    return body["columns"], body["rows"]


@main.group()
def topics() -> None:
    """Read the mesh's Kafka topics (binance.miniticker, binance.second, binance.deadletter).

    The broker is the running mesh's of MESH_DATA_DIR (its address in mesh.json), or MESH_KAFKA_BOOTSTRAP_SERVERS
    (without authentication: for compose's SASL broker use kcat, README). The embedded broker, Tansu, does not
    answer Debian's kcat (librdkafka 2.0.2); these commands use aiokafka, read without a consumer group and move
    no service's offsets.
    """


def _kafka() -> str:
    settings = MeshSettings()
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    data_dir = settings.data_dir.resolve()
    try:
        return read_state(data_dir)["urls"]["kafka"]
    except FileNotFoundError:
        raise click.ClickException(
            f"no running mesh in {data_dir} (start one with `crypto-mesh up`, or set MESH_KAFKA_BOOTSTRAP_SERVERS)"
        ) from None


@topics.command("list")
def topics_list() -> None:
    """Each topic: its partitions and the records they hold."""
    from aiokafka.errors import KafkaError

    from launcher import topics as kafka_topics

    servers = _kafka()
    try:
        summaries = kafka_topics.run(lambda _stop: kafka_topics.list_topics(servers))
    except (KafkaError, OSError) as error:
        raise click.ClickException(f"cannot read the broker at {servers}: {_one_line(error)}") from None
    rows = [["TOPIC", "PARTITIONS", "RECORDS"]]
    rows += [[t.name, str(t.partitions), str(t.records)] for t in summaries or []]
    click.echo(control.format_rows(rows))


@topics.command("tail")
@click.argument("topic")
@click.option("-n", "--lines", "last", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the newest records to print first.")
@click.option("-f", "--follow", is_flag=True, help="Then print new records as they arrive, until Ctrl-C.")
def topics_tail(topic: str, last: int, follow: bool) -> None:
    """Print the newest records of TOPIC, one a line: time (UTC), partition:offset, key, value."""
    from aiokafka.errors import KafkaError

    from launcher import topics as kafka_topics

    servers = _kafka()
    try:
        kafka_topics.run(
            lambda stop: kafka_topics.tail(servers, topic, last, follow, lambda line: click.echo(line), stop=stop)
        )
    except kafka_topics.TopicError as error:
        raise click.ClickException(str(error)) from None
    except (KafkaError, OSError) as error:
        raise click.ClickException(f"cannot read the broker at {servers}: {_one_line(error)}") from None


@main.group()
def db() -> None:
    """Schema migrations of the mesh's databases: auth and profile (PostgreSQL, Alembic) and clickhouse (the
    ETL's SQL files, forward-only).

    By default the databases of the mesh of MESH_DATA_DIR, as `crypto-mesh up` with the same environment
    reaches them: MESH_POSTGRES_URL (databases auth and profile on that server) and MESH_CLICKHOUSE_URL, else
    the embedded engines in the data directory (the running mesh's, or started for the command when none
    runs). --auth-url, --profile-url and --clickhouse-url name one database directly (SQLAlchemy asyncpg URL,
    clickhouse-connect DSN). Each service also migrates its database to head when it starts.
    """


def _database_option(multiple: bool):
    return click.option(
        "--database", "databases", type=click.Choice(DB_NAMES), multiple=multiple,
        required=not multiple, help="Which database (repeatable; default: all)." if multiple else "Which database.",
    )


def _url_options(fn):
    for name, what in (("clickhouse", "a clickhouse-connect DSN (http://user:pass@host:8123, chdb:///dir)"),
                       ("profile", "a SQLAlchemy asyncpg URL"), ("auth", "a SQLAlchemy asyncpg URL")):
        fn = click.option(f"--{name}-url", f"{name}_url", envvar=f"MESH_DB_{name.upper()}_URL",
                          help=f"The {name} database, {what} (env MESH_DB_{name.upper()}_URL).")(fn)
    return fn


@db.command("current")
@_database_option(multiple=True)
@_url_options
def db_current(databases: tuple[str, ...], auth_url, profile_url, clickhouse_url) -> None:
    """Show each database's current migration and the head this code ships.

    Exit status 0 when every database shown is at head, 3 when one is not.
    """
    from launcher import db as mesh_db

    names = databases or DB_NAMES
    given = {"auth": auth_url, "profile": profile_url, "clickhouse": clickhouse_url}
    revisions = []
    with _MeshDatabases(names, given, writing=False) as urls:
        for name in names:
            revisions.append(_revision(name, urls[name]))
    click.echo(control.format_rows(mesh_db.format_revisions(revisions)))
    if not all(revision.at_head for revision in revisions):
        sys.exit(STATUS_UNHEALTHY)


@db.command("upgrade")
@_database_option(multiple=True)
@click.option("--target", default="head", show_default=True,
              help="Revision to upgrade to (Alembic id, +N; a ClickHouse version number); one database only "
                   "unless head.")
@_url_options
def db_upgrade(databases: tuple[str, ...], target: str, auth_url, profile_url, clickhouse_url) -> None:
    """Apply the migrations of each database (default: all) up to --target."""
    names = databases or DB_NAMES
    if target != "head" and len(names) != 1:
        raise click.UsageError("--target other than head needs one --database")
    given = {"auth": auth_url, "profile": profile_url, "clickhouse": clickhouse_url}
    with _MeshDatabases(names, given, writing=True) as urls:
        for name in names:
            _migrate(name, urls[name], "upgrade", target)


@db.command("downgrade")
@_database_option(multiple=False)
@click.option("--target", required=True,
              help="Revision to downgrade to: an Alembic id, -N, or base (every table dropped).")
@_url_options
def db_downgrade(databases: str, target: str, auth_url, profile_url, clickhouse_url) -> None:
    """Undo the migrations of one PostgreSQL database down to --target (its service must run code that
    expects that schema). ClickHouse's migrations are forward-only."""
    name = databases
    if name == "clickhouse":
        raise click.ClickException(
            "the ClickHouse migrations are forward-only (etl/migrations has no down part): restore a backup, "
            "or write a new migration that undoes the change"
        )
    given = {"auth": auth_url, "profile": profile_url, "clickhouse": clickhouse_url}
    with _MeshDatabases((name,), given, writing=True) as urls:
        _migrate(name, urls[name], "downgrade", target)


def _migrate(name: str, url: str, direction: str, target: str) -> None:
    """``upgrade`` or ``downgrade`` database ``name`` at ``url`` to ``target`` and print where it stands; a
    refusal or the driver's error as one line (exit status 1)."""
    from launcher import db as mesh_db

    try:
        if name == "clickhouse":
            revision = mesh_db.upgrade_clickhouse(url, target)
        else:
            revision = mesh_db.migrate_postgres(name, url, direction, target)
    except mesh_db.DbCommandError as error:
        raise click.ClickException(str(error)) from None
    except Exception as error:  # noqa: BLE001 - the driver's: unreachable server, refused credentials
        raise click.ClickException(f"{name}: {direction} failed: {_one_line(error)}") from None
    click.echo(f"{name}: at {revision.current or 'none'} (head {revision.head})")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def _revision(name: str, url: str | _EtlHeld):
    from launcher import db as mesh_db

    try:
        if isinstance(url, _EtlHeld):
            return url.revision()
        if name == "clickhouse":
            return mesh_db.clickhouse_revision(url)
        return mesh_db.postgres_revision(name, url)
    except click.ClickException:
        raise
    except Exception as error:  # noqa: BLE001 - the driver's: unreachable server, refused credentials
        raise click.ClickException(f"{name}: cannot read its revision: {_one_line(error)}") from None


class _EtlHeld:
    """The embedded ClickHouse (chDB) of a running mesh, which only its ETL may open: read through the
    ETL's SQL endpoint."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def revision(self):
        from launcher import db as mesh_db

        _columns, rows = _query_etl(self.data_dir, "SELECT max(version), count() FROM crypto.schema_migrations")
        version, count = rows[0] if rows else (0, 0)
        current = f"{int(version):04d}" if int(count) else None
        return mesh_db.Revision("clickhouse", current, mesh_db.clickhouse_head())


class _MeshDatabases:
    """The URL of each database of ``names``: given (option or environment), or the mesh's as ``up`` with
    the same environment reaches them. With the embedded engines of MESH_DATA_DIR: the running mesh's
    PostgreSQL is attached to (and left running); when no mesh runs, the data directory is locked as ``up``
    locks it (an ``up`` meanwhile is refused) and its PostgreSQL is started for the command and stopped
    after. The running mesh's chDB is read through its ETL (``writing`` refuses it: only the ETL may open
    it, and it migrates at start)."""

    def __init__(self, names, given: dict[str, str | None], writing: bool) -> None:
        self.names = names
        self.given = given
        self.writing = writing
        self.lock = None
        self.postgres = None

    def __enter__(self) -> dict:
        from launcher.embedded import EmbeddedPostgres, chdb_url

        settings = MeshSettings()
        data_dir = settings.data_dir.resolve()
        running = control.lock_holder(data_dir) is not None
        urls: dict = {}
        try:
            for name in self.names:
                if self.given.get(name):
                    urls[name] = self.given[name]
                elif name == "clickhouse":
                    if settings.clickhouse_url:
                        urls[name] = settings.clickhouse_url
                    elif running and self.writing:
                        raise click.ClickException(
                            "the running mesh's ETL holds the embedded ClickHouse (chDB) and applied its "
                            "migrations when it started; stop the mesh (`crypto-mesh down`) to migrate it here"
                        )
                    elif running:
                        urls[name] = _EtlHeld(data_dir)
                    else:
                        urls[name] = chdb_url(self._existing(data_dir / "chdb", "ClickHouse (chDB)"))
                elif settings.postgres_url:
                    from launcher.mesh import _database_url

                    urls[name] = _database_url(settings.postgres_url, name)
                else:
                    if self.postgres is None:
                        pgdata = self._existing(data_dir / "postgres", "PostgreSQL")
                        if not running:
                            try:
                                self.lock = control.MeshLock(data_dir).acquire()
                            except control.MeshBusyError as error:
                                raise click.ClickException(_busy_message(error)) from None
                        self.postgres = EmbeddedPostgres(pgdata)
                        self.postgres.start()
                    urls[name] = self.postgres.url(name)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return urls

    @staticmethod
    def _existing(path: Path, what: str) -> Path:
        if not path.exists():
            raise click.ClickException(
                f"no embedded {what} in {path} (start a mesh once with `crypto-mesh up`, or give its URL)"
            )
        return path

    def __exit__(self, *_exc) -> None:
        if self.lock is not None:  # started here for this command: stop it again
            if self.postgres is not None:
                self.postgres.stop()
            self.lock.release()
            self.lock = None
        self.postgres = None


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def secrets(directory: Path) -> None:
    """Create the secret files compose.yaml mounts (random passwords, an Ed25519 signing key, ClickHouse's users
    file with the etl and analytics users) in DIRECTORY.

    Existing files are kept, so running it again never rotates a password behind a running database's back.
    It also makes the mesh CA (``mesh_ca.crt``; its key ``mesh_ca.key`` is never mounted) and the TLS
    certificate and key of each gRPC party (``<identity>_tls.crt``, ``<identity>_tls.key``); a certificate is
    re-issued for its kept key when it expires within 30 days or no longer matches the CA (docs/SECURITY.md).
    """
    from auth.tokens import generate_private_key_pem
    from etl.clickhouse_users import cluster_secret_xml, users_xml
    from crypto_mesh import pki
    from crypto_mesh.secrets import COMPOSE_MOUNTED, ensure_secret, random_token, read_secret, secrets_dir

    directory = secrets_dir(directory)

    def secret(name: str, make) -> str:
        return read_secret(ensure_secret(directory / name, make, COMPOSE_MOUNTED))

    passwords = {
        name: secret(name, random_token)
        for name in (
            "postgres_auth_password", "postgres_profile_password", "clickhouse_password",
            "clickhouse_analytics_password",
        )
    }
    secret("jwt_ed25519.pem", generate_private_key_pem)
    secret(
        "auth_database_url",
        lambda: f"postgresql+asyncpg://auth:{passwords['postgres_auth_password']}@postgres-auth:5432/auth",
    )
    secret(
        "bff_database_url",
        lambda: f"postgresql+asyncpg://profile:{passwords['postgres_profile_password']}@postgres-profile:5432/profile",
    )
    secret("etl_clickhouse_url", lambda: f"http://etl:{passwords['clickhouse_password']}@clickhouse:8123")
    secret(
        "etl_analytics_clickhouse_url",
        lambda: f"http://analytics:{passwords['clickhouse_analytics_password']}@clickhouse:8123",
    )
    secret(
        "clickhouse_users.xml",
        lambda: users_xml(passwords["clickhouse_password"], passwords["clickhouse_analytics_password"]),
    )
    secret("clickhouse_cluster_secret.xml", lambda: cluster_secret_xml(random_token()))
    _service_credentials(directory, secret)
    pki.ensure_mesh_pki(directory, pki.COMPOSE_IDENTITIES, COMPOSE_MOUNTED)
    click.echo(f"secrets in {directory}: {', '.join(sorted(p.name for p in directory.iterdir()))}")


def _service_credentials(directory: Path, secret) -> None:
    """The secret files of the internal surfaces for compose (docs/SECURITY.md, "Service credentials").

    ``secret(name, make)`` keeps a file made once (tokens, passwords); the files derived from them (Redis's
    ACL file and URLs, Kafka's JAAS and health-check configuration) are rewritten from them on every run, so
    rotating a password is deleting its file and running the command again.
    """
    from crypto_mesh.kafka import KAFKA_USERS, broker_jaas_config, client_properties
    from launcher.mesh import REDIS_ACL_FILE
    from launcher.settings import AGGREGATOR_TOKEN_FILE, MONITORING_SECRET_FILES
    from crypto_mesh.redisacl import USER_RULES, acl_file_text, url_with_user
    from crypto_mesh.secrets import COMPOSE_MOUNTED, random_token, replace_secret

    for name in (AGGREGATOR_TOKEN_FILE, ETL_TOKEN_FILE, *MONITORING_SECRET_FILES):
        secret(name, random_token)
    redis = {user: secret(f"redis_{user}_password", random_token) for user in USER_RULES}
    replace_secret(directory / REDIS_ACL_FILE, acl_file_text(redis, healthcheck=True), COMPOSE_MOUNTED)
    for user, password in redis.items():
        # Named like the service's setting (BFF_REDIS_URL, AGGREGATOR_REDIS_URL), read from /run/secrets.
        url = url_with_user("redis://redis:6379/0", user, password)
        replace_secret(directory / f"{user}_redis_url", url, COMPOSE_MOUNTED)
    kafka = {user: secret(f"kafka_{user}_password", random_token) for user in KAFKA_USERS}
    admin = secret("kafka_admin_password", random_token)
    replace_secret(directory / "kafka_server_jaas.conf", broker_jaas_config(admin, kafka), COMPOSE_MOUNTED)
    replace_secret(directory / "kafka_admin.properties", client_properties("admin", admin), COMPOSE_MOUNTED)


if __name__ == "__main__":
    main()
