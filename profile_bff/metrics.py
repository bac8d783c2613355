"""Prometheus metrics of the BFF, served at ``GET /metrics`` on ``BFF_METRICS_PORT`` (never on the public port;
with the ``BFF_METRICS_TOKEN_FILE`` credential, :class:`crypto_mesh.settings.MetricsPortSettings`).

Series (prefix ``bff_``): the RED series of every route, ``http_requests_total{method,route,status}`` and
``http_request_duration_seconds{method,route}``, and of every call to auth,
``grpc_client_handled_total{grpc_method,grpc_code}`` and ``grpc_client_handling_seconds{grpc_method}``
(:mod:`crypto_mesh.observe`); Redis, ``redis_command_duration_seconds{command}`` and
``redis_command_errors_total{command}`` (:class:`crypto_mesh.metrics.RedisMetrics`); the PostgreSQL pools,
``db_pool_size`` and ``db_pool_checked_out`` (SQLAlchemy's), ``db_read_pool_size`` and
``db_read_pool_checked_out`` (the profile reads' own, :meth:`profile_bff.store.ProfileStore.load`); the
WebSockets, ``ws_connections`` (open now) and ``ws_fan_out_seconds`` (a price read from Redis → its profiles
written, :mod:`profile_bff.connections`); the profile reads' prices, ``watched_symbols`` (subscribed for them
now) and ``price_reads_total{source}`` (``subscription`` or ``redis``); the alert evaluator
(:mod:`profile_bff.evaluator`; 0 in a BFF without it), ``alert_partitions`` (partitions of the SecondStat topic
the consumer group assigns it now),
``alert_rules`` (active rules it evaluates), ``alert_records_total`` (SecondStats evaluated) and
``alert_firings_total`` (firings stored by it).
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
from prometheus_client import CollectorRegistry

from crypto_mesh.metrics import Declared, counter, gauge, metrics_registry, pool_gauges
from profile_bff.evaluator import AlertEvaluator
from profile_bff.service import Bff


def _evaluator(read: Callable[[AlertEvaluator], int]) -> Callable[[Bff], int]:
    """``read`` of the BFF's alert evaluator, 0 without one."""
    return lambda bff: read(bff.evaluator) if bff.evaluator is not None else 0


def _read_pool(bff: Bff, read: Callable[[asyncpg.Pool], int]) -> int:
    """``read`` of the store's read pool, 0 before it is opened by the first profile read."""
    pool = bff.store.read_pool
    return read(pool) if pool is not None else 0


METRICS: tuple[Declared[Bff], ...] = (
    gauge("ws_connections", "WebSocket connections open now.", lambda bff: bff.manager.socket_count),
    gauge(
        "watched_symbols",
        "Symbols subscribed for REST price reads now (read within the last PRICE_WATCH_S).",
        lambda bff: bff.manager.watched_count,
    ),
    counter(
        "price_reads",
        "Prices read for REST profile reads, by source: the pub/sub subscription or Redis's keys.",
        lambda bff: {(source,): count for source, count in bff.manager.price_reads.items()},
        labels=("source",),
    ),
    *pool_gauges(lambda bff: bff.store.pool),
    gauge(
        "db_read_pool_size",
        "PostgreSQL connections held open by the read pool of profile reads (asyncpg's).",
        lambda bff: _read_pool(bff, lambda pool: pool.get_size()),
    ),
    gauge(
        "db_read_pool_checked_out",
        "PostgreSQL connections of the read pool in use by a profile read now.",
        lambda bff: _read_pool(bff, lambda pool: pool.get_size() - pool.get_idle_size()),
    ),
    gauge(
        "alert_partitions",
        "Partitions of the SecondStat topic assigned to this BFF's alert evaluator now.",
        _evaluator(lambda evaluator: evaluator.partitions),
    ),
    gauge(
        "alert_rules",
        "Active alert rules this BFF's alert evaluator evaluates now.",
        _evaluator(lambda evaluator: len(evaluator.loaded_rule_ids)),
    ),
    counter("alert_records", "SecondStats evaluated by this BFF's alert evaluator.", _evaluator(lambda e: e.records)),
    counter("alert_firings", "Alert firings stored by this BFF's alert evaluator.", _evaluator(lambda e: e.firings)),
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
