"""Settings of the BFF: environment variables with the ``BFF_`` prefix (docs/CONTRACTS.md, "Settings")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict
from yarl import URL

from crypto_mesh.binance import DEFAULT_EXCHANGE_INFO
from crypto_mesh.kafka import SECOND_TOPIC, KafkaClientSettings
from crypto_mesh.settings import MeshTlsSettings, MetricsPortSettings, WorkerSettings
from crypto_mesh.throttle import Rate, check_name_budgets
from profile_bff.ratelimit import IPNetwork, parse_networks


class BffSettings(MeshTlsSettings, KafkaClientSettings, MetricsPortSettings, WorkerSettings):
    """Environment of ``python -m profile_bff``.

    - ``BFF_HOST`` (``127.0.0.1``), ``BFF_PORT`` (``8080``; ``0`` picks a free port): where REST and the
      WebSocket listen.
    - ``BFF_WORKERS`` (``1``): worker processes serving ``BFF_PORT`` together with ``SO_REUSEPORT``, each a
      whole BFF with its own Redis subscription, pub/sub reader and alert-evaluator group membership,
      supervised by ``python -m profile_bff`` (:class:`crypto_mesh.settings.WorkerSettings`,
      :mod:`crypto_mesh.workers`); ``BFF_PORT`` must then be fixed, and worker ``i`` serves its metrics on
      ``BFF_METRICS_PORT + i``. ``BFF_MAX_CONNECTIONS`` and ``BFF_MAX_CONNECTIONS_PER_ADDRESS`` hold per
      worker process; every limit kept in Redis holds across all of them.
    - ``BFF_DATABASE_URL`` (required): SQLAlchemy asyncpg URL of the profile database,
      ``postgresql+asyncpg://user:pass@host/profile``.
    - ``BFF_REDIS_URL`` (required, secret): ``redis://user:password@host:6379/0`` (the ``bff`` ACL user), or
      ``redis+cluster://user:password@host:port[,host:port…]/0`` for a Redis Cluster
      (:mod:`crypto_mesh.redisclient`);
      prices, portfolio-change notices, WebSocket tickets and rate-limit keys.
    - ``BFF_AUTH_TARGET`` (``127.0.0.1:50051``): gRPC target of the auth service.
    - ``BFF_METRICS_PORT`` (``0``: off), ``BFF_METRICS_TOKEN_FILE``: Prometheus ``GET /metrics`` on a port of its
      own, never the public one (:class:`crypto_mesh.settings.MetricsPortSettings`, :mod:`profile_bff.metrics`).
    - ``BFF_TLS_CA_FILE``, ``BFF_TLS_CERT_FILE``, ``BFF_TLS_KEY_FILE`` (required): the mesh CA and the
      ``profile_bff`` identity's certificate and key, presented to auth over mutual TLS (see
      :class:`crypto_mesh.settings.MeshTlsSettings`, docs/SECURITY.md).
    - ``BFF_AGGREGATOR_URL`` (``http://127.0.0.1:8088``): the aggregator's control HTTP base URL.
    - ``BFF_AGGREGATOR_TOKEN_FILE`` (required): the aggregator's service credential (the file of
      ``AGGREGATOR_API_TOKEN_FILE``; the first line is presented, :mod:`crypto_mesh.servicecreds`).
    - ``BFF_ETL_URL`` (``http://127.0.0.1:8089``): the ETL's HTTP base URL (its read API: candles).
    - ``BFF_ETL_TOKEN_FILE`` (required): the ETL's service credential (the file of ``ETL_API_TOKEN_FILE``;
      the first line is presented, :mod:`crypto_mesh.servicecreds`).
    - ``BFF_JWT_ISSUER`` (``crypto-mesh-auth``), ``BFF_JWT_AUDIENCE`` (``crypto-mesh``): the ``iss`` and
      ``aud`` an access token must carry; the same values as the auth service's.
    - ``BFF_COOKIE_SECURE`` (``true``): the ``Secure`` attribute of the refresh-token and login-device
      cookies, which then take the ``__Host-`` prefix (:mod:`profile_bff.cookies`). Only a mesh served over
      plain-HTTP localhost sets it false, since a Secure cookie is not sent back there.
    - ``BFF_ALLOWED_ORIGINS`` (empty): comma-separated browser origins (``https://app.example``) allowed,
      besides the BFF's own origin (whose page is the dashboard at ``/``), to open the WebSocket and to use
      the session cookie (``/v1/refresh``, ``/v1/logout``). A request that carries an ``Origin`` header outside this list is refused with 403;
      clients that send no ``Origin`` (curl, wscat, services) are not browsers and are let through.
    - ``BFF_EXCHANGE_INFO_FILE`` (the shipped snapshot ``crypto_mesh/data/binance/exchangeInfo_2021-10-12.json.gz``):
      a Binance ``GET /api/v3/exchangeInfo`` body (``.json`` or ``.json.gz``); coins must be listed there with
      status ``TRADING``, and ``GET /v1/instruments[/{symbol}]`` lists it. Read at start (a BFF without it does not
      start); with ``BFF_EXCHANGE_REST_URL`` it serves only until the first fetch from the exchange succeeds.
    - ``BFF_EXCHANGE_REST_URL`` (unset): base URL of the exchange's spot REST API
      (``https://api.binance.com``, ``https://data-api.binance.vision``, or the replay exchange's
      ``http://127.0.0.1:<port>``). Set, the
      BFF fetches ``GET /api/v3/exchangeInfo`` there at start and every ``BFF_EXCHANGE_INFO_REFRESH_S``
      (:mod:`profile_bff.instruments`); unset, the file's list is used for good.
    - ``BFF_EXCHANGE_INFO_REFRESH_S`` (``300``): seconds between two fetches of the list. Each costs 20 of the
      6,000 request weight a minute Binance allows an IP (:mod:`crypto_mesh.binance.rest`).
    - ``BFF_IDEMPOTENCY_TTL_S`` (``86400``): how long a stored ``Idempotency-Key`` answer is replayed (s).
    - ``BFF_WS_TICKET_TTL_S`` (``30``): lifetime of a one-time WebSocket ticket (s).
    - ``BFF_WS_SEND_TIMEOUT_S`` (``10``): a socket whose peer does not take a message within this time (it
      stopped reading and the kernel buffers are full) is dropped (its TCP connection is aborted).
    - ``BFF_WS_COALESCE_MS`` (``0``, 0 to 1000): coalescing window of price pushes (ms). With ``0`` the fan-out
      starts as soon as the event loop gets to it, which is after the pub/sub reader has dispatched every
      message Redis delivered at once: the aggregator publishes the SecondStats its clock closes in one tick
      in one pipelined round trip, so they already reach a user holding several of them as one message, and
      prices that arrive while a fan-out runs join it for every user not yet served. A window of ``n`` ms
      starts the fan-out ``n`` ms after the first price not yet pushed, for publishers whose prices of one
      second arrive a few milliseconds apart; it adds up to ``n`` ms to every price's latency.
    - ``BFF_LOGIN_RATE_PER_ADDRESS`` (``30/minute``), ``BFF_LOGIN_RATE_PER_NAME_AND_ADDRESS``
      (``10/15 minutes``), ``BFF_LOGIN_RATE_PER_NAME`` (``100/hour``), ``BFF_LOGIN_RATE_PER_DEVICE``
      (``10/15 minutes``): failed logins allowed per client address, per (name, client address), per name, and
      per login device (a successful login is not counted), as ``<count>/[<n>] second|minute|hour|day``;
      beyond them ``POST /v1/login`` answers 429 with Retry-After. The per-(name, address) rate may be no
      faster than the per-name one (checked), so that one address cannot spend a name's whole budget and lock
      its owner out; see :mod:`profile_bff.ratelimit`.
    - ``BFF_REGISTER_RATE_PER_NAME`` (``5/minute``), ``BFF_REGISTER_RATE_PER_ADDRESS`` (``60/hour``):
      registrations attempted per name and per client address. See :mod:`profile_bff.ratelimit`.
    - ``BFF_TRUSTED_PROXIES`` (empty): comma-separated addresses or networks of reverse proxies whose
      ``X-Forwarded-For`` names the client. Empty: the socket peer is the client and the header is ignored.

    Alerts (:mod:`profile_bff.evaluator`, :mod:`profile_bff.webhooks`; docs/CONTRACTS.md, "Alerts"):

    - ``BFF_KAFKA_BOOTSTRAP_SERVERS`` (unset: this replica evaluates no alert rule; its routes and sockets
      still serve them): the brokers of topic ``binance.second``; set, the replica joins consumer group
      ``BFF_ALERTS_GROUP_ID`` (``bff-alerts``) and evaluates the rules of the partitions assigned to it.
      ``BFF_KAFKA_SECURITY_PROTOCOL``, ``BFF_KAFKA_SASL_MECHANISM``, ``BFF_KAFKA_SASL_USERNAME``,
      ``BFF_KAFKA_SASL_PASSWORD_FILE``: as the aggregator's (:class:`crypto_mesh.kafka.KafkaClientSettings`).
    - ``BFF_ALERTS_TOPIC`` (``binance.second``), ``BFF_KAFKA_SESSION_TIMEOUT_MS`` (``10000``),
      ``BFF_ALERTS_REFRESH_S`` (``1``: how often the evaluator looks for changed rules and portfolios).
    - ``BFF_WEBHOOK_ALLOWED_NETWORKS`` (empty): comma-separated addresses or networks a webhook may reach
      although they are private, loopback or link-local (an operator's own receivers); everything else of
      that kind is refused (SSRF, docs/SECURITY.md). ``BFF_WEBHOOK_TIMEOUT_S`` (``5``),
      ``BFF_WEBHOOK_MAX_ATTEMPTS`` (``8``): one call's time limit and the attempts before a firing's webhook
      is given up. ``BFF_WEBHOOK_CA_FILE`` (unset: the system's CAs): the CAs a webhook's TLS certificate must
      chain to.

    Ceilings (:mod:`profile_bff.ceilings`; docs/SECURITY.md, "Abuse ceilings"), rates written as the login
    ones:

    - ``BFF_MAX_COINS_PER_USER`` (``200``): coins one portfolio may hold; one more is 409
      ``coin_limit_reached``.
    - ``BFF_MAX_ALERTS_PER_USER`` (``50``): alert rules one user may have; one more is 409
      ``alert_limit_reached``.
    - ``BFF_MAX_SOCKETS_PER_USER`` (``10``): profile WebSockets one user may hold open at once, counted in
      Redis across every BFF replica; one more upgrade is refused with 429 ``too_many_sockets``.
    - ``BFF_WRITE_RATE_PER_USER`` (``60/minute``): writes per user (``POST``/``PATCH``/``DELETE
      /v2/coin/symbol``, ``DELETE /v2/user/profile``); ``BFF_WS_TICKET_RATE_PER_USER`` (``30/minute``):
      ``POST /v2/user/ws-ticket`` per user. Beyond them: 429 with Retry-After.
    - ``BFF_PUBLIC_RATE_PER_ADDRESS`` (``300/minute``): requests per client address to the routes that need no
      credentials (``GET /v1/instruments[/{symbol}]``, ``GET /v1/instruments/{symbol}/candles`` and
      ``.../indicators``, ``GET /openapi.json``; not ``/healthz``, which probes call);
      ``BFF_WS_UPGRADE_RATE_PER_ADDRESS`` (``60/minute``): WebSocket upgrades per client address, failed ones
      included. Beyond them: 429 with Retry-After.
    - ``BFF_HEADER_TIMEOUT_S`` (``10``): a new connection must deliver its first request's whole head (request
      line and headers) this long after it opens, or it is answered 408 and closed.
    - ``BFF_KEEPALIVE_TIMEOUT_S`` (``75``): a kept-alive connection must deliver the whole head of its next
      request this long after its previous answer, or it is closed (aiohttp's ``keepalive_timeout``). Behind a
      reverse proxy or load balancer that reuses connections, keep it above the proxy's idle timeout (60 s
      for AWS ALB), or the proxy may send a request on a connection the BFF is closing.
    - ``BFF_MAX_CONNECTIONS`` (``16384``): open HTTP and WebSocket connections of the process, at most the
      descriptor limit (``RLIMIT_NOFILE``) minus 256 kept for the process's own files and pools; beyond it a
      new connection is answered 503 and closed. ``BFF_MAX_CONNECTIONS_PER_ADDRESS`` (``256``): open
      connections per client address (socket peer; IPv6 per /64; ``BFF_TRUSTED_PROXIES`` are exempt, since
      every client behind them shares their address); beyond it 429 and closed.
    """

    model_config = SettingsConfigDict(env_prefix="BFF_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str
    redis_url: SecretStr
    auth_target: str = "127.0.0.1:50051"
    aggregator_url: str = "http://127.0.0.1:8088"
    aggregator_token_file: FilePath
    etl_url: str = "http://127.0.0.1:8089"
    etl_token_file: FilePath
    jwt_issuer: str = "crypto-mesh-auth"
    jwt_audience: str = "crypto-mesh"
    cookie_secure: bool = True
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    exchange_info_file: Path = DEFAULT_EXCHANGE_INFO
    exchange_rest_url: str | None = None
    exchange_info_refresh_s: float = Field(default=300.0, gt=0)
    idempotency_ttl_s: int = Field(default=86_400, gt=0)
    ws_ticket_ttl_s: int = Field(default=30, gt=0)
    ws_send_timeout_s: float = Field(default=10.0, gt=0)
    ws_coalesce_ms: int = Field(default=0, ge=0, le=1000)
    login_rate_per_name: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(100, 3600)
    login_rate_per_address: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(30, 60)
    login_rate_per_name_and_address: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(10, 900)
    login_rate_per_device: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(10, 900)
    register_rate_per_name: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(5, 60)
    register_rate_per_address: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(60, 3600)
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode, BeforeValidator(parse_networks)] = ()
    max_coins_per_user: int = Field(default=200, gt=0)
    max_alerts_per_user: int = Field(default=50, gt=0)
    kafka_bootstrap_servers: str | None = None
    alerts_group_id: str = "bff-alerts"
    alerts_topic: str = SECOND_TOPIC
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000)
    alerts_refresh_s: float = Field(default=1.0, gt=0)
    webhook_allowed_networks: Annotated[tuple[IPNetwork, ...], NoDecode, BeforeValidator(parse_networks)] = ()
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_ca_file: FilePath | None = None
    max_sockets_per_user: int = Field(default=10, gt=0)
    write_rate_per_user: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(60, 60)
    ws_ticket_rate_per_user: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(30, 60)
    public_rate_per_address: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(300, 60)
    ws_upgrade_rate_per_address: Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)] = Rate(60, 60)
    header_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_timeout_s: float = Field(default=75.0, gt=0)
    max_connections: int = Field(default=16_384, gt=0)
    max_connections_per_address: int = Field(default=256, gt=0)

    @model_validator(mode="after")
    def _one_address_cannot_spend_a_names_budget(self) -> BffSettings:
        check_name_budgets(self.login_rate_per_name_and_address, self.login_rate_per_name, "BFF_")
        return self

    @field_validator("exchange_rest_url")
    @classmethod
    def _http_url_or_none(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = URL(value.strip())
        if url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
            raise ValueError("BFF_EXCHANGE_REST_URL must be an http(s) base URL (https://api.binance.com)")
        return str(url).rstrip("/")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())
        return value
