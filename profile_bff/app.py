"""The BFF's HTTP transport and its wiring: the routes, the middlewares, start and stop. The profile
WebSocket and its tickets are :mod:`profile_bff.websocket`.

Routes and shapes: docs/CONTRACTS.md, "BFF REST", and the OpenAPI 3.1 document served at ``/openapi.json``
(:mod:`profile_bff.openapi`). The REST views (:mod:`profile_bff.views`) are thin: they call the use cases
(:mod:`profile_bff.accounts`, :mod:`profile_bff.portfolios`, :mod:`profile_bff.search`,
:mod:`profile_bff.candles`), and every error is answered as ``{"error": {"code", "message"}}`` by one error
layer (:mod:`profile_bff.views.errors`). In front of the views, in this order: that error layer, the login and
register limits (:mod:`profile_bff.ratelimit`), and the per-address ceilings (:mod:`profile_bff.ceilings`).

Lifecycle (:mod:`crypto_mesh.service`): :func:`start` opens the BFF's parts one after another
(:func:`open_bff`: the symbol list, the profile database's pool, Redis, the auth channel, the aggregator and
ETL clients, the socket manager, the ceilings' and the login limits' Redis connections), starts the background
work (:func:`_migrate_then_maintain`, with ``BFF_EXCHANGE_REST_URL`` :func:`_refresh_instruments`, with
``BFF_KAFKA_BOOTSTRAP_SERVERS`` the alert evaluator and the webhook sender, :func:`_after_migration`) and
serves; stopping undoes it in reverse order: the port takes no new connection, every WebSocket is closed with
1001, requests in flight get 5 s, then the background work stops and the clients close.

The database schema is migrated in the background (retried with backoff while PostgreSQL is down) and the
Redis subscriber connects in the background: ``/healthz`` answers 503 until both are ready. One of several
workers (``BFF_WORKERS``) joins the shared port only once both are, or after :data:`WORKER_JOIN_WAIT_S`
(:func:`ready_or_late`), so that no connection the kernel hands it meets a 503 while the others serve. Once
the schema is migrated, the follower set of every holder is PUT at the aggregator again
(``PUT /v1/followers/user:<id>``), so an aggregator that lost followers while the BFF was down tracks every
held symbol again without waiting for clients to reconnect.

The symbol list is read from ``BFF_EXCHANGE_INFO_FILE`` at start (a BFF without one does not start); with
``BFF_EXCHANGE_REST_URL`` the exchange's ``GET /api/v3/exchangeInfo`` is fetched in the background at once and
then every ``BFF_EXCHANGE_INFO_REFRESH_S``, retried with backoff, the last good list kept on failure
(:class:`profile_bff.instruments.InstrumentRefresh`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from aiohttp.log import access_logger
from redis.backoff import NoBackoff
from redis.retry import Retry

from crypto_mesh.binance import BinanceRest, RestUnavailable
from crypto_mesh.logs import get_logger
from crypto_mesh.metrics import RedisMetrics, serve_metrics_port
from crypto_mesh.redisclient import connect
from crypto_mesh.observe import GrpcMetrics, client_observers, observe_http, set_request_id_on_prepare
from crypto_mesh.retry import raise_if_cancelling, retrying
from crypto_mesh.service import Lifecycle, Running, start_service
from crypto_mesh.servicecreds import read_token
from crypto_mesh.throttle import device_audience, name_bucket
from profile_bff import ceilings
from profile_bff.accounts import Accounts
from profile_bff.alerts import Alerts
from profile_bff.alertstore import AlertStore
from profile_bff.ceilings import Ceilings
from profile_bff.candles import MarketHistory
from profile_bff.clients import AggregatorClient, AuthClient, EtlClient
from profile_bff.connections import ConnectionManager
from profile_bff.cookies import device_cookie
from profile_bff.errors import AggregatorUnavailable, StoreUnavailable
from profile_bff.evaluator import AlertEvaluator, EvaluatorSettings
from profile_bff.webhooks import WebhookSender
from profile_bff.idempotency import Idempotency
from profile_bff.instruments import InstrumentRefresh, Instruments, log_refresh
from profile_bff.portfolios import Portfolios
from profile_bff.metrics import registry_for
from profile_bff.ratelimit import LoginDevices, RateLimiter, RoutePolicy, from_trusted_proxy, login_limits
from profile_bff.search import InstrumentSearch
from profile_bff.settings import BffSettings
from profile_bff.store import MarketBus, ProfileStore
from profile_bff.tokens import AccessTokenVerifier, InvalidToken, KeysUnavailable
from profile_bff.views import dashboard
from profile_bff.views.accounts import AccountViews
from profile_bff.views.alerts import AlertViews
from profile_bff.views.errors import ERRORS
from profile_bff.views.market import MarketViews
from profile_bff.views.portfolios import PortfolioViews
from profile_bff.views.public import PublicViews
from profile_bff.service import SERVICES, Bff
from profile_bff.websocket import issue_ws_ticket, profile_socket

log = get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
#: Pending connections the listening socket queues (aiohttp's default is 128; the kernel caps it at
#: ``net.core.somaxconn``). A process holding 10,000 sockets sees them all come back at once after a restart;
#: with 128, connection attempts beyond it are dropped and retried by the client after 1, 3, 7 s...
LISTEN_BACKLOG = 1024
#: Seconds requests in flight get to finish when the BFF stops.
SHUTDOWN_TIMEOUT_S = 5.0
#: Expired idempotency keys of all users are deleted this often (s).
IDEMPOTENCY_PRUNE_S = 3600.0
#: How often work that needs the migrated schema looks whether it is (s).
MIGRATION_POLL_S = 0.2




def create_app(bff: Bff) -> web.Application:
    """The aiohttp application of ``bff``: routes, middlewares, and the closing of sockets at shutdown."""
    settings = bff.settings
    trusted = settings.trusted_proxies
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            # A client's X-Request-Id is believed only from a trusted proxy (whose own id it then is).
            observe_http(
                bff.http_metrics,
                access_log=settings.access_log,
                trust_request_id=lambda request: from_trusted_proxy(request, trusted),
            ),
            ERRORS,
            login_limits(bff.login_limiter, _login_policies(settings), trusted, bff.login_devices),
            ceilings.address_limits(
                bff.ceilings, settings.public_rate_per_address, settings.ws_upgrade_rate_per_address, trusted
            ),
        ],
    )
    app[SERVICES] = bff
    app[ceilings.CEILINGS] = bff.ceilings
    accounts = AccountViews(bff.accounts, bff.auth, bff.verifier, settings)
    portfolios = PortfolioViews(
        bff.portfolios, bff.idempotency, bff.verifier, bff.ceilings, settings.write_rate_per_user
    )
    alerts = AlertViews(bff.alerts, bff.idempotency, bff.verifier, bff.ceilings, settings.write_rate_per_user)
    public = PublicViews(bff.search, bff.readiness)
    market = MarketViews(bff.market)
    app.router.add_post("/v1/register", accounts.register)
    app.router.add_post("/v1/login", accounts.login)
    app.router.add_post("/v1/refresh", accounts.refresh)
    app.router.add_post("/v1/logout", accounts.logout)
    # The original Crypto-Service's route of the same operation, for its clients (docs/DIFFERENCES.md).
    app.router.add_post("/v1/auth/logout", accounts.logout)
    app.router.add_post("/v1/password", accounts.change_password)
    app.router.add_get("/v2/coin/symbols", portfolios.list_coins)
    app.router.add_post("/v2/coin/symbol", portfolios.add_coin)
    app.router.add_patch("/v2/coin/symbol", portfolios.update_coin)
    app.router.add_delete("/v2/coin/symbol", portfolios.delete_coin)
    app.router.add_get("/v2/user/profile", portfolios.get_profile)
    app.router.add_delete("/v2/user/profile", portfolios.delete_profile)
    app.router.add_get("/v2/user/profile/ws", profile_socket)
    app.router.add_post("/v2/user/ws-ticket", issue_ws_ticket)
    app.router.add_get("/v2/user/history", portfolios.list_history)
    # The events routes before /v2/user/alerts/{id}, which would match them.
    app.router.add_get("/v2/user/alerts/events", alerts.events)
    app.router.add_post("/v2/user/alerts/events/{alert_id}/ack", alerts.ack)
    app.router.add_post("/v2/user/alerts", alerts.create)
    app.router.add_get("/v2/user/alerts", alerts.list_rules)
    # Digits only, so that the methods of /v2/user/alerts/events (its Allow header) are its own.
    app.router.add_patch(r"/v2/user/alerts/{id:[0-9]+}", alerts.update)
    app.router.add_delete(r"/v2/user/alerts/{id:[0-9]+}", alerts.delete)
    app.router.add_get("/v1/instruments", public.search_instruments)
    app.router.add_get("/v1/instruments/{symbol}", public.instrument)
    app.router.add_get("/v1/instruments/{symbol}/candles", market.candles)
    app.router.add_get("/v1/instruments/{symbol}/indicators", market.indicators)
    app.router.add_get("/openapi.json", public.openapi_json)
    app.router.add_get("/healthz", public.healthz)
    dashboard.add_routes(app, dashboard.DashboardFiles())
    app.on_response_prepare.append(ceilings.no_store)
    app.on_response_prepare.append(set_request_id_on_prepare)
    app.on_shutdown.append(_close_sockets)
    return app


def _login_policies(settings: BffSettings) -> dict[str, RoutePolicy]:
    """The limits of ``POST /v1/login`` and ``POST /v1/register`` (:mod:`profile_bff.ratelimit`)."""
    return {
        "/v1/login": RoutePolicy(
            "login",
            settings.login_rate_per_address,
            settings.login_rate_per_name,
            refund_success=True,
            per_name_and_address=settings.login_rate_per_name_and_address,
            per_device=settings.login_rate_per_device,
        ),
        "/v1/register": RoutePolicy(
            "register",
            settings.register_rate_per_address,
            settings.register_rate_per_name,
            refund_success=False,
        ),
    }


async def start(settings: BffSettings) -> Running[Bff]:
    """Start serving on ``settings.host:settings.port`` (port 0: a free one); returns once listening (see the
    module docstring for what is opened, and closed again by ``stop()``).

    Connections are accepted through :class:`profile_bff.ceilings.GuardedProtocol` (connection caps and the
    first request's header-read timeout); aiohttp's keep-alive timeout, ``BFF_KEEPALIVE_TIMEOUT_S``, bounds
    the idle time and the head of every later request on a connection. Raises ``OSError`` (the exchangeInfo
    file, the aggregator's or the ETL's token or the TLS files cannot be read, the port cannot be bound) and
    ``ValueError`` (the exchangeInfo file is not one); nothing is left open then.
    """

    async def build(lifecycle: Lifecycle) -> tuple[int, Bff]:
        bff = open_bff(lifecycle, settings)
        lifecycle.task(_migrate_then_maintain(bff), "bff-migrate")
        if bff.evaluator is not None:
            lifecycle.task(_after_migration(bff, bff.evaluator.run()), "bff-alerts")
            lifecycle.task(_after_migration(bff, _webhook_sender(bff).run()), "bff-webhooks")
        if bff.instrument_refresh is not None and settings.exchange_rest_url is not None:
            lifecycle.task(
                _refresh_instruments(bff.instrument_refresh, settings.exchange_rest_url), "bff-instruments"
            )
        bff.metrics_port = await serve_metrics_port(lifecycle, registry_for(bff), settings.host, settings)
        if settings.workers > 1:
            await ready_or_late(bff.readiness, WORKER_JOIN_WAIT_S)
        return await _serve(lifecycle, create_app(bff), settings), bff

    return await start_service("profile_bff", build)


def open_bff(lifecycle: Lifecycle, settings: BffSettings) -> Bff:
    """The BFF's parts for ``settings``, each closed by ``lifecycle`` at stop. Connections are made lazily,
    by the first call that needs them; the socket manager's pub/sub reader and the socket leases' renewal
    start here."""
    # Read first and not caught: a BFF without a symbol list must not start.
    instruments = Instruments.load(settings.exchange_info_file)
    refresh = None
    if settings.exchange_rest_url:
        refresh = InstrumentRefresh(instruments, settings.exchange_info_refresh_s)
    aggregator_token = read_token(settings.aggregator_token_file)
    etl_token = read_token(settings.etl_token_file)
    tls = settings.mesh_tls()
    redis_url = settings.redis_url.get_secret_value()
    store = ProfileStore(settings.database_url)
    lifecycle.on_stop(store.close)
    alert_store = AlertStore(store)
    grpc_metrics = GrpcMetrics("bff", "client")
    redis_metrics = RedisMetrics("bff")
    bus = MarketBus(redis_url)
    bus.instrument(redis_metrics)
    lifecycle.on_stop(bus.close)
    auth = AuthClient(settings.auth_target, tls, interceptors=client_observers(grpc_metrics))
    lifecycle.on_stop(auth.close)
    aggregator = AggregatorClient(settings.aggregator_url, aggregator_token)
    lifecycle.on_stop(aggregator.close)
    etl = EtlClient(settings.etl_url, etl_token)
    lifecycle.on_stop(etl.close)
    manager = ConnectionManager(
        store, bus, aggregator, alerts=alert_store, coalesce_s=settings.ws_coalesce_ms / 1000
    )
    manager.start()
    lifecycle.on_stop(manager.close)
    limits = Ceilings(redis_url, settings.max_sockets_per_user)
    limits.start()
    lifecycle.on_stop(limits.close)
    # The login limits fail closed (503 while Redis is down), on a connection of their own: fast timeouts,
    # one retry.
    login_redis = connect(
        redis_url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 1)
    )
    redis_metrics.instrument(login_redis)
    lifecycle.on_stop(login_redis.aclose)
    # Login-device tokens: the same keys as access tokens, another audience.
    device_verifier = AccessTokenVerifier(
        auth.public_keys_json, issuer=settings.jwt_issuer, audience=device_audience(settings.jwt_audience)
    )
    return Bff(
        settings=settings,
        store=store,
        bus=bus,
        auth=auth,
        aggregator=aggregator,
        etl=etl,
        verifier=AccessTokenVerifier(
            auth.public_keys_json, issuer=settings.jwt_issuer, audience=settings.jwt_audience
        ),
        manager=manager,
        ceilings=limits,
        login_limiter=RateLimiter(login_redis),
        login_devices=LoginDevices(
            device_cookie(settings.cookie_secure).name, _device_name_verifier(device_verifier)
        ),
        accounts=Accounts(auth, store),
        portfolios=Portfolios(
            store, instruments, aggregator, bus, auth, max_coins=settings.max_coins_per_user, prices=manager
        ),
        idempotency=Idempotency(store, settings.idempotency_ttl_s),
        search=InstrumentSearch(instruments, bus),
        market=MarketHistory(instruments, etl, bus),
        alert_store=alert_store,
        alerts=Alerts(alert_store, instruments, max_rules=settings.max_alerts_per_user),
        instrument_refresh=refresh,
        evaluator=(
            AlertEvaluator(EvaluatorSettings.of(settings), alert_store, bus)
            if settings.kafka_bootstrap_servers
            else None
        ),
        grpc_metrics=grpc_metrics,
        redis_metrics=redis_metrics,
    )


def _device_name_verifier(verifier: AccessTokenVerifier) -> Callable[[str], Awaitable[str | None]]:
    """For the login limits: the name bucket a login-device token was issued for, or ``None`` if it does not
    verify (or the keys cannot be fetched: the client is then counted as any other)."""

    async def verify(token: str) -> str | None:
        try:
            return name_bucket((await verifier.verify(token)).name)
        except (InvalidToken, KeysUnavailable):
            return None

    return verify


#: How long a worker of several (``BFF_WORKERS``) waits for its dependencies before it joins the shared port
#: anyway, answering 503 while they are not ready (s).
WORKER_JOIN_WAIT_S = 10.0
#: How often a worker checks its readiness before it joins the shared port (s).
WORKER_JOIN_POLL_S = 0.05


async def ready_or_late(readiness: Callable[[], dict[str, bool]], wait_s: float) -> bool:
    """Return True once every check of ``readiness()`` (:meth:`profile_bff.service.Bff.readiness`) holds, or
    False after ``wait_s`` seconds (logged as ``port_joined_before_ready``). A worker of several joins the
    shared port (``SO_REUSEPORT``) only then: the kernel hands a listening worker its share of new
    connections, so a worker that listened while it migrated or connected to Redis (one restarted after a
    crash, while the others serve) would answer its share with 503. A dependency down for longer than
    ``wait_s`` is reported by the 503 of ``/healthz`` as for a lone BFF."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while not all((checks := readiness()).values()):
        if loop.time() >= deadline:
            log.warning("port_joined_before_ready", waited_s=wait_s, **checks)
            return False
        await asyncio.sleep(WORKER_JOIN_POLL_S)
    return True


async def _serve(lifecycle: Lifecycle, app: web.Application, settings: BffSettings) -> int:
    """Serve ``app`` on ``settings.host:settings.port`` with :meth:`Lifecycle.serve_http
    <crypto_mesh.service.Lifecycle.serve_http>`, behind the connection guard of :mod:`profile_bff.ceilings`
    (requests in flight get :data:`SHUTDOWN_TIMEOUT_S` at stop), with ``SO_REUSEPORT`` when it is one of
    ``BFF_WORKERS`` workers; the bound port."""
    descriptors = ceilings.descriptor_limit()
    counter = ceilings.ConnectionCounter(
        ceilings.connection_cap(settings.max_connections, descriptors),
        settings.max_connections_per_address,
        exempt=settings.trusted_proxies,
    )
    port = await lifecycle.serve_http(
        app,
        settings.host,
        settings.port,
        access_log=access_logger,
        shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
        keepalive_timeout_s=settings.keepalive_timeout_s,
        guard=lambda low_level: ceilings.guarded_factory(low_level, counter, settings.header_timeout_s),
        backlog=LISTEN_BACKLOG,
        # The workers of one BFF (BFF_WORKERS) share the port; each is this process.
        reuse_port=settings.workers > 1,
    )
    log.info(
        "serving",
        host=settings.host,
        port=port,
        max_connections=counter.max_total,
        descriptor_limit=descriptors,
    )
    return port


async def _migrate_then_maintain(bff: Bff) -> None:
    """Migrate; then restore the aggregator followers of every holder (retried while the aggregator or the
    database is down); then delete expired idempotency keys every hour."""
    # Every failure is retried, not only StoreUnavailable: a database that does not exist yet or a migration
    # locked by another replica also clear up by themselves, and /healthz says 503 meanwhile.
    async for attempt in retrying("profile_migrations_retrying", base_s=0.2, max_s=5.0):
        with attempt:
            await bff.store.migrate()
    log.info("profile_database_migrated")
    async for attempt in retrying(
        "followers_rebuild_retrying",
        retry_on=(AggregatorUnavailable, StoreUnavailable),
        base_s=0.5,
        max_s=30.0,
    ):
        with attempt:
            holders = await bff.portfolios.rebuild_followers()
    log.info("followers_rebuilt", holders=holders)
    while True:
        try:
            pruned = await bff.store.prune_idempotency_keys()
        except StoreUnavailable as exc:
            raise_if_cancelling()  # a driver may turn a cancellation into its own error
            log.warning("idempotency_prune_failed", error=str(exc))
        else:
            log.info("idempotency_keys_pruned", deleted=pruned)
        await asyncio.sleep(IDEMPOTENCY_PRUNE_S)


async def _after_migration(bff: Bff, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` (the alert evaluator, the webhook sender) once the schema is migrated."""
    try:
        while not bff.store.migrated:
            await asyncio.sleep(MIGRATION_POLL_S)
    except BaseException:
        work.close()
        raise
    await work


def _webhook_sender(bff: Bff) -> WebhookSender:
    """The webhook sender of ``bff`` (:mod:`profile_bff.webhooks`): its allow-list, limits and CAs."""
    settings = bff.settings
    context = ssl.create_default_context(cafile=settings.webhook_ca_file) if settings.webhook_ca_file else None
    return WebhookSender(
        bff.alert_store,
        allowed=settings.webhook_allowed_networks,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
        ssl_context=context,
    )


async def _refresh_instruments(refresh: InstrumentRefresh, base_url: str) -> None:
    """Fetch the exchange's symbol list from the REST API at ``base_url`` now, and again after each
    outcome's ``next_fetch_s`` (:class:`~profile_bff.instruments.InstrumentRefresh` decides and counts)."""
    exchange = BinanceRest(base_url)
    try:
        while True:
            try:
                body = await exchange.exchange_info()
            except RestUnavailable as exc:
                raise_if_cancelling()  # aiohttp turns a cancellation at its timeout into a TimeoutError
                outcome = refresh.failed(str(exc), exc.retry_after_s)
            else:
                # Some 10 ms per megabyte of JSON (Binance's body is megabytes): read off the event loop.
                outcome = refresh.apply(await asyncio.to_thread(refresh.decide, body))
            log_refresh(outcome)
            await asyncio.sleep(outcome.next_fetch_s)
    finally:
        await exchange.close()


async def _close_sockets(app: web.Application) -> None:
    await app[SERVICES].manager.close()
