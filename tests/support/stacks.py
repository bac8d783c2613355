"""Services started for a test, on free ports of 127.0.0.1, each an async context manager that stops what it
started: auth, a BFF (alone, or with auth and the fake aggregator, with or without its alert evaluator), a
real aggregator, an ETL on chDB, and a replay exchange with a socket_proxy in front of it. The engines
(PostgreSQL, Redis, Kafka) are the session's, from tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from support.credentials import redis_user_url, service_token_file
from support.polling import eventually

from aggregator.app import start as start_aggregator
from aggregator.settings import AggregatorSettings
from auth.server import start as start_auth
from auth.settings import AuthSettings
from auth.tokens import generate_private_key_pem
from crypto_mesh.kafka import ensure_topics
from support.ports import free_port
from crypto_mesh.redisclient import connect as connect_redis
from crypto_mesh.redisclient import pubsub as subscribe_redis
from crypto_mesh.service import Running
from etl.app import start as start_etl
from etl.service import EtlService
from etl.settings import EtlSettings
from launcher.embedded import EmbeddedPostgres, ManagedProcess, chdb_url
from profile_bff.app import start as start_bff
from profile_bff.settings import BffSettings
from socket_proxy.server import start as start_proxy
from socket_proxy.settings import ProxySettings
from support.bff import Bff, write_exchange_info
from support.databases import new_database
from support.fake_aggregator import FakeAggregator

#: The BFF's rate limits and per-user and per-address ceilings, lifted: most BFF tests register and log in
#: many users from one address. tests/test_security_bff.py and tests/test_security_ceilings.py test them.
NO_RATE_LIMITS = {
    setting: "1000000/minute"
    for setting in (
        "login_rate_per_name",
        "login_rate_per_address",
        "login_rate_per_name_and_address",
        "login_rate_per_device",
        "register_rate_per_name",
        "register_rate_per_address",
        "write_rate_per_user",
        "ws_ticket_rate_per_user",
        "public_rate_per_address",
        "ws_upgrade_rate_per_address",
    )
}


@asynccontextmanager
async def serve_auth(database_url: str, key_dir: Path, **overrides):
    """The real auth server on a free port (bcrypt cost 4) with a new signing key, ``key_dir/jwt.pem``, on
    ``database_url``; ``overrides`` are further :class:`AuthSettings` fields. Yields the running server
    (``.port``)."""
    key_file = key_dir / "jwt.pem"
    key_file.write_bytes(generate_private_key_pem())
    settings = {"port": 0, "database_url": database_url, "jwt_private_key_file": key_file, "bcrypt_cost": 4}
    running = await start_auth(AuthSettings(**{**settings, **overrides}))
    try:
        yield running
    finally:
        await running.stop()


def bff_process_environment(
    database_url: str, redis_url: str, auth_port: int, aggregator_url: str, exchange_info: Path, kafka_bootstrap: str
) -> dict[str, str]:
    """The ``BFF_*`` variables a ``python -m profile_bff`` process needs on these engines: the database, Redis as
    the BFF's own user, the auth server on 127.0.0.1:``auth_port``, the aggregator at ``aggregator_url``, the
    exchangeInfo file, the broker, and new service token files. A test adds its port and what it varies."""
    return {
        "BFF_DATABASE_URL": database_url,
        "BFF_REDIS_URL": redis_user_url(redis_url, "bff"),
        "BFF_AUTH_TARGET": f"127.0.0.1:{auth_port}",
        "BFF_AGGREGATOR_URL": aggregator_url,
        "BFF_AGGREGATOR_TOKEN_FILE": str(service_token_file()),
        "BFF_ETL_TOKEN_FILE": str(service_token_file()),
        "BFF_METRICS_TOKEN_FILE": str(service_token_file()),
        "BFF_EXCHANGE_INFO_FILE": str(exchange_info),
        "BFF_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
    }


@asynccontextmanager
async def serve_bff(
    database_url: str,
    redis_url: str,
    auth_port: int,
    aggregator: FakeAggregator | str,
    exchange_info: Path | None = None,
    *,
    default_limits: bool = False,
    **overrides,
) -> AsyncIterator[Bff]:
    """A BFF on a free port, ready (``/healthz`` 200), on profile database ``database_url``, Redis
    ``redis_url`` (the tests' own user: the BFF connects as its own) and auth on ``auth_port``.

    ``aggregator``: the fake it calls, or the URL of a real aggregator (or of nothing, for a BFF whose routes
    under test never call it). ``exchange_info``: its ``BFF_EXCHANGE_INFO_FILE`` (default: the shipped
    snapshot). Its rate limits and ceilings are :data:`NO_RATE_LIMITS` unless ``default_limits``;
    ``overrides`` are further :class:`BffSettings` fields, and win.
    """
    fake = aggregator if isinstance(aggregator, FakeAggregator) else None
    settings = BffSettings(
        **{
            "port": 0,
            "database_url": database_url,
            "redis_url": redis_user_url(redis_url, "bff"),
            "auth_target": f"127.0.0.1:{auth_port}",
            "aggregator_url": fake.url if fake else aggregator,
            "aggregator_token_file": service_token_file(),
            "etl_token_file": service_token_file(),
            **({"exchange_info_file": exchange_info} if exchange_info else {}),
            **({} if default_limits else NO_RATE_LIMITS),
            **overrides,
        }
    )
    running = await start_bff(settings)
    url = f"http://127.0.0.1:{running.port}"
    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:

            async def ready() -> bool:
                async with http.get(f"{url}/healthz") as resp:
                    return resp.status == 200

            await eventually(ready, what="the BFF ready")
            yield Bff(url, http, fake, redis, database_url, running)
    finally:
        await running.stop()
        await redis.aclose()


@asynccontextmanager
async def serve_stack(
    postgres: EmbeddedPostgres, redis_url: str, tmp_path_factory, **overrides
) -> AsyncIterator[Bff]:
    """Auth, the fake aggregator and a BFF (:func:`serve_bff`) on new databases, with :data:`TEST_SYMBOLS
    <support.bff.TEST_SYMBOLS>` listed: the stack a module-scoped ``bff`` fixture shares between tests that
    each use new users and symbols. ``overrides`` are further :class:`BffSettings` fields (``etl_url``)."""
    async with (
        serve_auth(new_database(postgres, "auth"), tmp_path_factory.mktemp("auth")) as auth,
        FakeAggregator() as aggregator,
        serve_bff(
            new_database(postgres, "profile"),
            redis_url,
            auth.port,
            aggregator,
            write_exchange_info(tmp_path_factory.mktemp("exchange")),
            **overrides,
        ) as running,
    ):
        yield running


@asynccontextmanager
async def serve_alerting_stack(
    postgres: EmbeddedPostgres,
    redis_url: str,
    tmp_path_factory,
    kafka_bootstrap: str,
    topic: str,
    **overrides,
) -> AsyncIterator[Bff]:
    """:func:`serve_stack` with the BFF's alert evaluator on: it consumes SecondStats from ``topic`` (created
    here, one partition) on ``kafka_bootstrap`` in a consumer group of its own and looks at the rules again
    every 0.1 s. ``overrides`` are further :class:`BffSettings` fields."""
    await ensure_topics(kafka_bootstrap, {topic: 1})
    async with serve_stack(
        postgres,
        redis_url,
        tmp_path_factory,
        kafka_bootstrap_servers=kafka_bootstrap,
        alerts_topic=topic,
        alerts_group_id=f"bff-alerts-{uuid.uuid4().hex[:8]}",
        alerts_refresh_s=0.1,
        **overrides,
    ) as running:
        yield running


def etl_settings(kafka_bootstrap: str, clickhouse_url: str, **overrides) -> EtlSettings:
    """The settings of an ETL on a free port, on ClickHouse ``clickhouse_url``, consuming topics and a group
    of its own (one partition each, so that offsets read as record positions) from ``kafka_bootstrap``, its
    API behind the session's service credential; ``overrides`` are further :class:`EtlSettings` fields."""
    name = uuid.uuid4().hex[:8]
    return EtlSettings(
        **{
            "port": 0,
            "api_token_file": service_token_file(),
            "kafka_bootstrap_servers": kafka_bootstrap,
            "kafka_group_id": f"etl-{name}",
            "kafka_topic": f"tickers-{name}",
            "kafka_second_topic": f"seconds-{name}",
            "kafka_deadletter_topic": f"deadletter-{name}",
            "clickhouse_url": clickhouse_url,
            **overrides,
        }
    )


@asynccontextmanager
async def serve_etl(kafka_bootstrap: str, directory: Path) -> AsyncIterator[Running[EtlService]]:
    """A real ETL (:func:`etl_settings`) on a new chDB in ``directory``, migrated when this yields; yields the
    running ETL (``.port``, ``.service.store``)."""
    running = await start_etl(etl_settings(kafka_bootstrap, chdb_url(directory)))
    try:
        yield running
    finally:
        await running.stop()


def aggregator_settings(
    redis_url: str, kafka_bootstrap: str, proxy: int | str, **overrides
) -> AggregatorSettings:
    """The settings of a real aggregator on Redis ``redis_url`` (the tests' own user: the aggregator connects
    as its own), Kafka ``kafka_bootstrap`` and socket_proxy at ``proxy`` (a port of 127.0.0.1, or a whole gRPC
    target such as ``ipv4:127.0.0.1:p1,127.0.0.1:p2``), on a free port unless ``overrides`` (further
    :class:`AggregatorSettings` fields) say ``port``. Each gets a follow topic and consumer group of its own, so
    that it streams every symbol followed in its Redis database alone, unless ``overrides`` name the
    ``follow_topic`` and ``group_id`` that replicas share."""
    name = uuid.uuid4().hex[:8]
    return AggregatorSettings(
        **{
            "port": 0,
            "follow_topic": f"follows-{name}",
            "group_id": f"aggregator-{name}",
            # The embedded broker answers a group's first join after half the session timeout (at least 1 s).
            "group_session_timeout_ms": 2000,
            "api_token_file": service_token_file(),
            "redis_url": redis_user_url(redis_url, "aggregator"),
            "kafka_bootstrap_servers": kafka_bootstrap,
            "socket_proxy_target": proxy if isinstance(proxy, str) else f"127.0.0.1:{proxy}",
            "kafka_enable_idempotence": False,
            **overrides,
        }
    )


@asynccontextmanager
async def serve_aggregator(
    redis_url: str, kafka_bootstrap: str, proxy: int | str, *, assigned: bool = True, **overrides
) -> AsyncIterator[str]:
    """A running real aggregator (:func:`aggregator_settings`), assigned the follow topic's partitions and
    streaming what its Redis database has followed (so a symbol followed from now on is a new follow, whose
    first second is published, not one taken over), unless ``assigned`` is false (as soon as it serves: for
    an aggregator whose Redis or Kafka is unreachable); yields its control API's base URL. Its routes want the
    session's service credential (:func:`credentials.service_headers`)."""
    running = await start_aggregator(aggregator_settings(redis_url, kafka_bootstrap, proxy, **overrides))
    try:
        if assigned:
            await eventually(lambda: running.service.followers_loaded, what="the aggregator assigned")
        yield f"http://127.0.0.1:{running.port}"
    finally:
        await running.stop()


@asynccontextmanager
async def published_on(redis_url: str, channel: str) -> AsyncIterator[list[bytes]]:
    """Subscribes to Redis ``channel`` (the tests' own user on ``redis_url``) and yields a list that receives
    the data of every message published there from then on, in order, until the block ends."""
    client = connect_redis(redis_url)
    pubsub = await subscribe_redis(client)
    await pubsub.subscribe(channel)
    published: list[bytes] = []

    async def collect() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                published.append(message["data"])

    collector = asyncio.create_task(collect())
    try:
        yield published
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await pubsub.aclose()
        await client.aclose()


@dataclass
class ExchangeProcess:
    """A replay exchange in its own process, as the mesh runs it: ``url`` (``ws://…``) and ``port``."""

    url: str
    port: int


@asynccontextmanager
async def replay_exchange(recording: Path, speed: float) -> AsyncIterator[ExchangeProcess]:
    """A replay exchange of ``recording`` at ``speed`` in a process of its own, stopped on exit.

    Played fast in the test's event loop it would compete with the proxy and the aggregators for the one
    thread, and fall behind its schedule for good on a busy machine.
    """
    port = free_port()
    process = ManagedProcess(
        "replay",
        [sys.executable, "-m", "launcher.replay"],
        port,
        Path(tempfile.mkdtemp(prefix="replay-")) / "replay.log",
        env={"REPLAY_PORT": str(port), "REPLAY_FILES": str(recording), "REPLAY_SPEED": str(speed)},
    )
    await asyncio.to_thread(process.start)
    try:
        yield ExchangeProcess(url=f"ws://127.0.0.1:{port}", port=port)
    finally:
        await asyncio.to_thread(process.stop)


@dataclass
class ProxyProcess:
    """A socket_proxy in its own process, as the mesh runs it: gRPC on ``port``, metrics on
    ``metrics_port`` (behind the session's service credential); ``process.kill()`` crashes it."""

    port: int
    metrics_port: int
    process: ManagedProcess


@asynccontextmanager
async def proxy_process(exchange_url: str) -> AsyncIterator[ProxyProcess]:
    """A socket_proxy process (``python -m socket_proxy``, its identity from the session's mesh PKI in the
    environment) on free ports of 127.0.0.1 in front of the exchange at ``exchange_url``, ready to accept
    connections when this yields; stopped (or reaped, if a test killed it) on exit."""
    port, metrics_port = free_port(), free_port()
    process = ManagedProcess(
        f"socket_proxy:{port}",
        [sys.executable, "-m", "socket_proxy"],
        port,
        Path(tempfile.mkdtemp(prefix="socket-proxy-")) / "socket_proxy.log",
        env={
            "PROXY_PORT": str(port),
            "PROXY_EXCHANGE_URL": exchange_url,
            "PROXY_METRICS_PORT": str(metrics_port),
            "PROXY_METRICS_TOKEN_FILE": str(service_token_file()),
        },
    )
    await asyncio.to_thread(process.start)
    try:
        yield ProxyProcess(port, metrics_port, process)
    finally:
        await asyncio.to_thread(process.stop)


@asynccontextmanager
async def exchange_and_proxy(recording: Path, speed: float, **proxy_overrides):
    """A replay exchange of ``recording`` at ``speed`` (:func:`replay_exchange`) and a socket_proxy on it in
    this process (metrics on; ``proxy_overrides`` are further :class:`ProxySettings` fields); yields
    ``(exchange, proxy)``."""
    async with replay_exchange(recording, speed) as exchange:
        proxy = await start_proxy(
            ProxySettings(
                port=0,
                exchange_url=exchange.url,
                metrics_port=free_port(),
                metrics_token_file=service_token_file(),
                **proxy_overrides,
            )
        )
        try:
            yield exchange, proxy
        finally:
            await proxy.stop()
