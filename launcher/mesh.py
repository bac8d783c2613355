"""The plan of a whole mesh on one machine: which processes run, on which ports, with which settings.

``crypto-mesh up`` builds a :class:`MeshPlan` from :class:`MeshSettings`, starts the embedded PostgreSQL itself,
and hands the plan's processes to :class:`launcher.supervisor.Supervisor`, which runs them with their output
prefixed by name, restarts one that crashes and stops them in their :attr:`MeshProcess.stop_stage` order on
Ctrl-C. Every backing service whose URL is not given gets its embedded default
(``launcher.embedded``); every internal server binds to 127.0.0.1 on a free port; only the BFF has a fixed
port (``MESH_BFF_PORT``, 8080).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from sqlalchemy.engine import make_url

from aggregator.settings import format_trade_stream_by_symbol
from crypto_mesh import pki
from crypto_mesh.kafka import MINI_TICKER_TOPIC, SECOND_TOPIC
from etl.settings import EtlSettings
from launcher.embedded import EmbeddedPostgres, chdb_url, redis_command, tansu_command
from launcher.replay.recording import trade_stream_kinds
from launcher.replay.settings import recording_paths
from crypto_mesh.grpc_tls import health_status
from crypto_mesh.netutil import PortPicker, port_open
from crypto_mesh.redisacl import USER_RULES, acl_file_text, url_with_user, without_credentials
from crypto_mesh.secrets import ensure_secret, random_token, read_secret, secrets_dir, replace_secret
from launcher.settings import AGGREGATOR_TOKEN_FILE, ETL_TOKEN_FILE, METRICS_TOKEN_FILE, STATE_FILE, MeshSettings


@dataclass
class HealthCheck:
    """How to tell one process is ready: ``kind`` is ``http`` (GET ``target`` answers 200), ``grpc``
    (grpc.health.v1 at ``target`` says SERVING) or ``tcp`` (``target`` ``host:port`` accepts connections).

    A ``grpc`` check speaks mutual TLS (:func:`crypto_mesh.grpc_tls.health_status`): it presents the
    certificate ``cert_file`` (key ``key_file``) and accepts a server certified by ``ca_file`` as
    ``server_identity``."""

    name: str
    kind: str
    target: str
    server_identity: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def ok(self) -> bool:
        """True if the process answers healthy now; never raises."""
        try:
            if self.kind == "http":
                with urllib.request.urlopen(self.target, timeout=1.0) as response:
                    return response.status == 200
            if self.kind == "grpc":
                tls = pki.load_tls(Path(self.ca_file), Path(self.cert_file), Path(self.key_file))
                status = health_status(self.target, tls, self.server_identity, timeout_s=1.0)
                return status == health_pb2.HealthCheckResponse.SERVING
            host, port = self.target.rsplit(":", 1)
            return port_open(host, int(port))
        except (OSError, urllib.error.URLError, grpc.RpcError, ValueError):
            return False


#: The consumer-group session of every group member on the embedded broker (ms): the ETL, the aggregator (its
#: follow group) and the BFF's alert evaluator. Tansu answers a JoinGroup after half the session timeout, in
#: whole seconds and at least 1 s (measured: 5 s with a 10 s session, 3 s with 6 s, 2 s with 3 s, 1 s with 2 s
#: or less), a member joins anew at every start and after every broker crash, and a killed member's partitions
#: wait for its session to expire. Each service consumes nothing until it has joined, so the session sets how
#: soon the mesh is ready and how soon a restarted process resumes. 2 s: the shortest join, with heartbeats
#: (every third of it) that a loaded machine still keeps up. (Apache Kafka refuses sessions under 6 s by
#: default: with a real broker, each service's own default applies.)
TANSU_SESSION_TIMEOUT_MS = 2000

#: Stop stages of a graceful stop (:class:`launcher.supervisor.Supervisor`): what produces or serves first
#: (the producers of the Kafka topics, socket_proxy and the aggregator, among them), then the ETL once it has
#: loaded what the broker holds (:attr:`MeshPlan.drain`), then the engines (the broker last but with Redis).
STOP_FIRST, STOP_ETL, STOP_ENGINES = 0, 1, 2


@dataclass
class MeshProcess:
    """One process of the mesh: its name, argv, extra environment and :data:`STOP_FIRST`-style stop stage."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stop_stage: int = STOP_FIRST
    #: Processes stopped when this one crashes and started again once it is back and :attr:`ready`
    #: (:attr:`launcher.supervisor.Child.restart_also`).
    restart_also: tuple[str, ...] = ()
    #: The check that says this process serves its clients (:attr:`launcher.supervisor.Child.ready`).
    ready: HealthCheck | None = None


@dataclass
class MeshPlan:
    """Everything ``crypto-mesh up`` runs, and what ``crypto-mesh sql`` and the tests need to reach it."""

    data_dir: Path
    processes: list[MeshProcess]
    checks: list[HealthCheck]
    urls: dict[str, str]
    #: With the embedded (memory-only) broker, what :func:`launcher.drain.wait_until_consumed` waits for before
    #: the ETL stops: ``{"bootstrap_servers", "group_id", "topics"}``; None with a real Kafka.
    drain: dict | None = None

    def state(self) -> dict:
        """The JSON written to ``<data_dir>/mesh.json`` once the mesh is healthy: the pid of ``crypto-mesh
        up``, the URLs, the data directory and the health check of each process (``crypto-mesh status``
        runs them again)."""
        return {
            "pid": os.getpid(),
            "urls": self.urls,
            "data_dir": str(self.data_dir),
            "checks": [asdict(check) for check in self.checks],
        }


def _python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def _database_url(server_url: str, database: str) -> str:
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


def ensure_jwt_key(data_dir: Path) -> Path:
    """Path of the auth service's Ed25519 signing key under ``data_dir/secrets``, generated on first use (0600).

    Only the auth service reads it; nothing in the code carries a default key.
    """
    from auth.tokens import generate_private_key_pem

    return ensure_secret(secrets_dir(data_dir / "secrets") / "jwt_ed25519.pem", generate_private_key_pem)


def ensure_service_token(data_dir: Path, name: str) -> Path:
    """Path of the service-credential file ``name`` under ``data_dir/secrets``, holding a random token made on
    first use (0600). Its server and its callers read the same file."""
    return ensure_secret(secrets_dir(data_dir / "secrets") / name, random_token)


#: Under ``<MESH_DATA_DIR>/secrets``: the embedded Redis's ACL file (rewritten from the passwords at every
#: start) and the password file of each of its users, ``redis_<user>_password``.
REDIS_ACL_FILE = "redis_users.acl"


def ensure_redis_passwords(data_dir: Path) -> dict[str, str]:
    """The password of each Redis user of :data:`crypto_mesh.redisacl.USER_RULES` (user → password), each
    kept in ``data_dir/secrets/redis_<user>_password`` and made on first use (0600)."""
    directory = secrets_dir(data_dir / "secrets")
    return {
        user: read_secret(ensure_secret(directory / f"redis_{user}_password", random_token)) for user in USER_RULES
    }


def embedded_redis(data_dir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The embedded Redis of ``data_dir`` on 127.0.0.1:``port``: its argv, started with the ACL file
    ``data_dir/secrets/redis_users.acl`` (rewritten from :func:`ensure_redis_passwords`), and the URL of each
    service's user on database 0 (user → ``redis://<user>:<password>@127.0.0.1:<port>/0``)."""
    passwords = ensure_redis_passwords(data_dir)
    acl_file = replace_secret(data_dir / "secrets" / REDIS_ACL_FILE, acl_file_text(passwords))
    base = f"redis://127.0.0.1:{port}/0"
    urls = {user: url_with_user(base, user, password) for user, password in passwords.items()}
    return redis_command(port, data_dir / "redis", acl_file), urls


def ensure_mesh_pki(data_dir: Path) -> Mapping[str, pki.TlsFiles]:
    """The mesh CA and the TLS files of every gRPC party of the embedded mesh (auth, socket_proxy,
    profile_bff, aggregator and the readiness watcher's ``healthcheck``) under ``data_dir/secrets``, every
    file 0600: made on first use, kept afterwards, a certificate re-issued only when it must be
    (:func:`crypto_mesh.pki.ensure_mesh_pki`). Returns identity → its files."""
    return pki.ensure_mesh_pki(secrets_dir(data_dir / "secrets"), pki.EMBEDDED_IDENTITIES)


def build_plan(settings: MeshSettings, postgres: EmbeddedPostgres | None) -> MeshPlan:
    """Choose ports and settings for every process. ``postgres`` is the started embedded server, or None when
    ``settings.postgres_url`` names a real one.

    With the embedded replay exchange, the recordings of ``MESH_REPLAY_FILE`` are read here to tell the
    aggregator which trade stream (``@trade`` or ``@aggTrade``) each of their symbols has; raises
    :class:`launcher.replay.recording.RecordingError` (a ValueError) for one that cannot be replayed."""
    data_dir = settings.data_dir.resolve()
    logs = {"LOG_FORMAT": settings.log_format, "LOG_LEVEL": settings.log_level}
    processes: list[MeshProcess] = []
    checks: list[HealthCheck] = []
    urls: dict[str, str] = {}

    def service_env(prefix: str, **values: object) -> dict[str, str]:
        merged = {**logs, **values}
        return {f"{prefix}{key.upper()}": str(value) for key, value in merged.items()}

    if postgres is not None:
        auth_db, profile_db = postgres.url("auth"), postgres.url("profile")
    else:
        auth_db = _database_url(settings.postgres_url, "auth")
        profile_db = _database_url(settings.postgres_url, "profile")

    ports = PortPicker(settings.port_range)
    redis_url = settings.redis_url
    redis_urls = {user: redis_url for user in USER_RULES}
    if redis_url is None:
        port = ports.take()
        redis_url = f"redis://127.0.0.1:{port}/0"
        argv, redis_urls = embedded_redis(data_dir, port)
        processes.append(MeshProcess("redis", argv, stop_stage=STOP_ENGINES))
        checks.append(HealthCheck("redis", "tcp", f"127.0.0.1:{port}"))

    kafka = settings.kafka_bootstrap_servers
    kafka_is_tansu = kafka is None
    if kafka is None:
        port = ports.take()
        kafka = f"127.0.0.1:{port}"
        # Tansu keeps topics, records and consumer groups in memory: after a crash it comes back empty, and its
        # clients are stopped and start again once it listens (creating their topics, joining their group anew).
        kafka_check = HealthCheck("kafka", "tcp", kafka)
        processes.append(MeshProcess("kafka", tansu_command(port), stop_stage=STOP_ENGINES,
                                     restart_also=("aggregator", "etl"), ready=kafka_check))
        checks.append(kafka_check)

    clickhouse = settings.clickhouse_url or chdb_url(data_dir / "chdb")

    exchange = settings.exchange_url
    exchange_rest = settings.exchange_rest_url
    # Aggregator settings that follow the exchange: which trade stream each recorded symbol has (the live
    # exchange has both for every symbol, and the aggregator's default, @trade, serves it).
    exchange_streams: dict[str, str] = {}
    if exchange is None:
        kinds = trade_stream_kinds(recording_paths(settings.replay_file))
        exchange_streams["trade_stream_by_symbol"] = format_trade_stream_by_symbol(kinds)
        port = ports.take()
        exchange = f"ws://127.0.0.1:{port}"
        exchange_rest = f"http://127.0.0.1:{port}"
        processes.append(
            MeshProcess(
                "exchange",
                _python_module("launcher.replay"),
                service_env("REPLAY_", host="127.0.0.1", port=port, files=settings.replay_file,
                            speed=settings.replay_speed),
            )
        )
        checks.append(HealthCheck("exchange", "http", f"http://127.0.0.1:{port}/healthz"))
        urls["exchange_info"] = f"http://127.0.0.1:{port}/replay/v1/info"
        urls["exchange_metrics"] = f"http://127.0.0.1:{port}/metrics"
    urls["exchange"] = exchange

    auth_port, proxy_port, aggregator_port, etl_port = (ports.take() for _ in range(4))
    # Prometheus GET /metrics of the services without an HTTP API of their own (the BFF's is never public).
    auth_metrics, proxy_metrics = (ports.take() for _ in range(2))
    # Worker i of the BFF serves its metrics on bff_metrics + i.
    bff_metrics = ports.take_in_a_row(settings.bff_workers)
    key_file = ensure_jwt_key(data_dir)
    aggregator_token = ensure_service_token(data_dir, AGGREGATOR_TOKEN_FILE)
    etl_token = ensure_service_token(data_dir, ETL_TOKEN_FILE)
    metrics_token = ensure_service_token(data_dir, METRICS_TOKEN_FILE)
    tls = ensure_mesh_pki(data_dir)
    processes += [
        MeshProcess(
            "auth",
            _python_module("auth"),
            service_env("AUTH_", host="127.0.0.1", port=auth_port, database_url=auth_db,
                        jwt_private_key_file=key_file, metrics_port=auth_metrics,
                        metrics_token_file=metrics_token, **tls[pki.AUTH].settings()),
        ),
        MeshProcess(
            "socket_proxy",
            _python_module("socket_proxy"),
            service_env("PROXY_", host="127.0.0.1", port=proxy_port, exchange_url=exchange,
                        metrics_port=proxy_metrics, metrics_token_file=metrics_token,
                        **tls[pki.SOCKET_PROXY].settings()),
        ),
        MeshProcess(
            "aggregator",
            _python_module("aggregator"),
            service_env("AGGREGATOR_", host="127.0.0.1", port=aggregator_port, api_token_file=aggregator_token,
                        socket_proxy_target=f"127.0.0.1:{proxy_port}", redis_url=redis_urls["aggregator"],
                        kafka_bootstrap_servers=kafka,
                        # Tansu's memory storage refuses InitProducerId; message_id deduplicates downstream.
                        kafka_enable_idempotence=str(not kafka_is_tansu).lower(),
                        **({"group_session_timeout_ms": TANSU_SESSION_TIMEOUT_MS} if kafka_is_tansu else {}),
                        **exchange_streams, **tls[pki.AGGREGATOR].settings()),
        ),
        MeshProcess(
            "etl",
            _python_module("etl"),
            service_env("ETL_", host="127.0.0.1", port=etl_port, api_token_file=etl_token,
                        kafka_bootstrap_servers=kafka,
                        **({"kafka_session_timeout_ms": TANSU_SESSION_TIMEOUT_MS} if kafka_is_tansu else {}),
                        clickhouse_url=clickhouse),
            stop_stage=STOP_ETL,
        ),
        MeshProcess(
            "profile_bff",
            _python_module("profile_bff"),
            service_env("BFF_", host=settings.bff_host, port=settings.bff_port, workers=settings.bff_workers,
                        database_url=profile_db,
                        redis_url=redis_urls["bff"], auth_target=f"127.0.0.1:{auth_port}",
                        aggregator_url=f"http://127.0.0.1:{aggregator_port}", aggregator_token_file=aggregator_token,
                        **({"exchange_rest_url": exchange_rest} if exchange_rest else {}),
                        etl_url=f"http://127.0.0.1:{etl_port}", etl_token_file=etl_token,
                        # The alert evaluator (consumer group bff-alerts on binance.second).
                        kafka_bootstrap_servers=kafka,
                        **({"kafka_session_timeout_ms": TANSU_SESSION_TIMEOUT_MS} if kafka_is_tansu else {}),
                        metrics_port=bff_metrics, metrics_token_file=metrics_token,
                        # The embedded mesh serves plain HTTP on localhost, where a Secure cookie is never sent back.
                        cookie_secure="false", **tls[pki.PROFILE_BFF].settings()),
        ),
    ]
    watcher_files = {name: str(path) for name, path in asdict(tls[pki.HEALTHCHECK]).items()}
    checks += [
        HealthCheck("auth", "grpc", f"127.0.0.1:{auth_port}", pki.AUTH, **watcher_files),
        HealthCheck("socket_proxy", "grpc", f"127.0.0.1:{proxy_port}", pki.SOCKET_PROXY, **watcher_files),
        HealthCheck("aggregator", "http", f"http://127.0.0.1:{aggregator_port}/healthz"),
        HealthCheck("etl", "http", f"http://127.0.0.1:{etl_port}/healthz"),
        HealthCheck("profile_bff", "http", f"http://{settings.bff_host}:{settings.bff_port}/healthz"),
    ]
    urls.update(
        bff=f"http://{settings.bff_host}:{settings.bff_port}",
        websocket=f"ws://{settings.bff_host}:{settings.bff_port}/v2/user/profile/ws",
        auth=f"127.0.0.1:{auth_port}",
        socket_proxy=f"127.0.0.1:{proxy_port}",
        aggregator=f"http://127.0.0.1:{aggregator_port}",
        etl=f"http://127.0.0.1:{etl_port}",
        redis=without_credentials(redis_url),
        kafka=kafka,
        clickhouse=clickhouse,
        # Every /metrics: the aggregator's and the ETL's with their API token, the others with metrics_token.
        auth_metrics=f"http://127.0.0.1:{auth_metrics}/metrics",
        socket_proxy_metrics=f"http://127.0.0.1:{proxy_metrics}/metrics",
        bff_metrics=f"http://127.0.0.1:{bff_metrics}/metrics",
        **{
            f"bff_metrics_{i}": f"http://127.0.0.1:{bff_metrics + i}/metrics"
            for i in range(1, settings.bff_workers)
        },
        aggregator_metrics=f"http://127.0.0.1:{aggregator_port}/metrics",
        etl_metrics=f"http://127.0.0.1:{etl_port}/metrics",
    )
    drain = None
    if kafka_is_tansu:
        drain = {
            "bootstrap_servers": kafka,
            "group_id": EtlSettings.model_fields["kafka_group_id"].default,
            "topics": [MINI_TICKER_TOPIC, SECOND_TOPIC],
        }
    return MeshPlan(data_dir=data_dir, processes=processes, checks=checks, urls=urls, drain=drain)


def write_pending(plan: MeshPlan) -> Path:
    """Write the health checks and URLs for the readiness watcher; return the file's path."""
    path = plan.data_dir / "mesh.pending.json"
    path.write_text(json.dumps({"checks": [asdict(c) for c in plan.checks], "state": plan.state()}))
    return path


def wait_ready(pending: Path, timeout_s: float, report=print) -> bool:
    """Poll every health check of ``pending`` until all pass (then write ``mesh.json``) or ``timeout_s`` passes.

    ``report`` receives progress lines. Returns True once ready, False on time-out.
    """
    spec = json.loads(pending.read_text())
    checks = [HealthCheck(**c) for c in spec["checks"]]
    waiting = {c.name: c for c in checks}
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        for name, check in list(waiting.items()):
            if check.ok():
                report(f"{name} is healthy")
                del waiting[name]
        if waiting:
            time.sleep(0.25)
    if waiting:
        report(f"not healthy after {timeout_s:.0f}s: {', '.join(sorted(waiting))}")
        return False
    state_path = pending.with_name(STATE_FILE)
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec["state"], indent=2))
    tmp.replace(state_path)
    return True


