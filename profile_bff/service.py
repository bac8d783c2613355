"""What a running BFF is made of, apart from HTTP: :class:`Bff`, the ``service`` of its
:class:`~crypto_mesh.service.Running`, and the key under which the views find it in their application.

:func:`profile_bff.app.start` opens and closes the parts (:mod:`crypto_mesh.service`); the views
(:mod:`profile_bff.views`, :mod:`profile_bff.websocket`) translate HTTP to the use cases here and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from crypto_mesh.metrics import RedisMetrics
from crypto_mesh.observe import GrpcMetrics, HttpMetrics

from profile_bff.accounts import Accounts
from profile_bff.alerts import Alerts
from profile_bff.alertstore import AlertStore
from profile_bff.ceilings import Ceilings
from profile_bff.candles import MarketHistory
from profile_bff.clients import AggregatorClient, AuthClient, EtlClient
from profile_bff.connections import ConnectionManager
from profile_bff.evaluator import AlertEvaluator
from profile_bff.idempotency import Idempotency
from profile_bff.instruments import InstrumentRefresh
from profile_bff.portfolios import Portfolios
from profile_bff.ratelimit import LoginDevices, RateLimiter
from profile_bff.search import InstrumentSearch
from profile_bff.settings import BffSettings
from profile_bff.store import MarketBus, ProfileStore
from profile_bff.tokens import AccessTokenVerifier


@dataclass
class Bff:
    """The BFF's parts, opened by :func:`open_bff`: its settings, adapters (profile database, Redis, auth,
    aggregator, ETL), the socket manager, the limits, and the use cases the views call; with
    ``BFF_EXCHANGE_REST_URL``, the refresh of the symbol list, and with ``BFF_KAFKA_BOOTSTRAP_SERVERS`` the
    alert evaluator (each ``None`` without). The ``service`` of the :class:`~crypto_mesh.service.Running` BFF.
    The RED series of its routes and of its calls to auth, and its Redis client's series
    (:mod:`profile_bff.metrics`); the bound metrics port (None when metrics are off)."""

    settings: BffSettings
    store: ProfileStore
    bus: MarketBus
    auth: AuthClient
    aggregator: AggregatorClient
    etl: EtlClient
    verifier: AccessTokenVerifier
    manager: ConnectionManager
    ceilings: Ceilings
    login_limiter: RateLimiter
    login_devices: LoginDevices
    accounts: Accounts
    portfolios: Portfolios
    idempotency: Idempotency
    search: InstrumentSearch
    market: MarketHistory
    alert_store: AlertStore
    alerts: Alerts
    grpc_metrics: GrpcMetrics
    redis_metrics: RedisMetrics
    instrument_refresh: InstrumentRefresh | None = None
    evaluator: AlertEvaluator | None = None
    http_metrics: HttpMetrics = field(default_factory=lambda: HttpMetrics("bff"))
    metrics_port: int | None = None

    def require_store(self) -> ProfileStore:
        """The profile store once its schema is migrated; raises :class:`~profile_bff.errors.Starting`
        before."""
        self.store.require_migrated()
        return self.store

    def readiness(self) -> dict[str, bool]:
        """``{"database": schema migrated, "redis": pub/sub subscriber up}``."""
        return {"database": self.store.migrated, "redis": self.manager.subscriber_connected}


SERVICES = web.AppKey("services", Bff)
