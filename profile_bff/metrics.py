"""Prometheus metrics of the BFF, served at ``GET /metrics`` on ``BFF_METRICS_PORT`` (never on the public port;
with the ``BFF_METRICS_TOKEN_FILE`` credential, :class:`crypto_mesh.settings.MetricsPortSettings`).

Series (prefix ``bff_``): the RED series of every route, ``http_requests_total{method,route,status}`` and
``http_request_duration_seconds{method,route}``, and of every call to auth,
``grpc_client_handled_total{grpc_method,grpc_code}`` and ``grpc_client_handling_seconds{grpc_method}``
(:mod:`crypto_mesh.observe`); Redis, ``redis_command_duration_seconds{command}`` and
``redis_command_errors_total{command}`` (:class:`crypto_mesh.metrics.RedisMetrics`); the PostgreSQL pool,
``db_pool_size`` and ``db_pool_checked_out``; the WebSockets, ``ws_connections`` (open now) and
``ws_fan_out_seconds`` (a price read from Redis → its profiles written, :mod:`profile_bff.connections`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crypto_mesh.metrics import Declared, gauge, metrics_registry, pool_gauges
from profile_bff.service import Bff

METRICS: tuple[Declared[Bff], ...] = (
    gauge("ws_connections", "WebSocket connections open now.", lambda bff: bff.manager.socket_count),
    *pool_gauges(lambda bff: bff.store.pool),
)


def registry_for(bff: Bff) -> CollectorRegistry:
    """A registry of its own with the series of :data:`METRICS`, the RED series of the routes and of the calls
    to auth, the Redis client's series and the fan-out latency."""
    return metrics_registry(
        "bff",
        METRICS,
        bff,
        bff.http_metrics,
        bff.grpc_metrics,
        bff.redis_metrics,
        bff.manager.fan_out_latency,
    )
