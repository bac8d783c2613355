"""Settings of the BFF: environment variables with the ``BFF_`` prefix (docs/CONTRACTS.md, "Settings")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from crypto_mesh.settings import ServiceSettings
from profile_bff.instruments import DEFAULT_EXCHANGE_INFO
from profile_bff.ratelimit import IPNetwork, Rate, parse_networks


class BffSettings(ServiceSettings):
    """Environment of ``python -m profile_bff``.

    - ``BFF_HOST`` (``127.0.0.1``), ``BFF_PORT`` (``8080``; ``0`` picks a free port): where REST and the
      WebSocket listen.
    - ``BFF_DATABASE_URL`` (required): SQLAlchemy asyncpg URL of the profile database,
      ``postgresql+asyncpg://user:pass@host/profile``.
    - ``BFF_REDIS_URL`` (required): ``redis://host:6379/0``; prices and portfolio-change notices.
    - ``BFF_AUTH_TARGET`` (``127.0.0.1:50051``): gRPC target of the auth service.
    - ``BFF_AGGREGATOR_URL`` (``http://127.0.0.1:8088``): the aggregator's control HTTP base URL.
    - ``BFF_JWT_ISSUER`` (``crypto-mesh-auth``), ``BFF_JWT_AUDIENCE`` (``crypto-mesh``): the ``iss`` and
      ``aud`` an access token must carry; the same values as the auth service's.
    - ``BFF_COOKIE_SECURE`` (``true``): the ``Secure`` attribute of the refresh-token and login-device
      cookies, which then take the ``__Host-`` prefix (:mod:`profile_bff.cookies`). Only a mesh served over
      plain-HTTP localhost sets it false, since a Secure cookie is not sent back there.
    - ``BFF_ALLOWED_ORIGINS`` (empty): comma-separated browser origins (``https://app.example``) allowed to
      open the WebSocket and, besides the BFF's own origin, to use the session cookie (``/v1/refresh``,
      ``/v1/logout``). A request that carries an ``Origin`` header outside this list is refused with 403;
      clients that send no ``Origin`` (curl, wscat, services) are not browsers and are let through.
    - ``BFF_EXCHANGE_INFO_FILE`` (the shipped snapshot ``crypto_mesh/data/binance/exchangeInfo_2021-10-12.json.gz``):
      a Binance ``GET /api/v3/exchangeInfo`` body (``.json`` or ``.json.gz``); coins must be listed there with
      status ``TRADING``, and ``GET /v1/instruments`` searches it.
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
    """

    model_config = SettingsConfigDict(env_prefix="BFF_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str
    redis_url: str
    auth_target: str = "127.0.0.1:50051"
    aggregator_url: str = "http://127.0.0.1:8088"
    jwt_issuer: str = "crypto-mesh-auth"
    jwt_audience: str = "crypto-mesh"
    cookie_secure: bool = True
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    exchange_info_file: Path = DEFAULT_EXCHANGE_INFO
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

    @model_validator(mode="after")
    def _one_address_cannot_spend_a_names_budget(self) -> BffSettings:
        if not self.login_rate_per_name_and_address.never_outpaces(self.login_rate_per_name):
            raise ValueError(
                f"BFF_LOGIN_RATE_PER_NAME_AND_ADDRESS ({self.login_rate_per_name_and_address}) must allow no "
                f"larger burst and no faster pace than BFF_LOGIN_RATE_PER_NAME ({self.login_rate_per_name}), "
                "else one address could spend a name's budget and lock its owner out"
            )
        return self

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())
        return value
