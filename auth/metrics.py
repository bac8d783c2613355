"""Prometheus metrics of the auth service, served at ``GET /metrics`` on ``AUTH_METRICS_PORT`` (with the
``AUTH_METRICS_TOKEN_FILE`` credential, :class:`crypto_mesh.settings.MetricsPortSettings`).

Series (prefix ``auth_``): the RED series of every RPC, ``grpc_server_handled_total{grpc_method,grpc_code}`` and
``grpc_server_handling_seconds{grpc_method}`` (:mod:`crypto_mesh.observe`); the PostgreSQL pool,
``db_pool_size`` and ``db_pool_checked_out`` (:func:`crypto_mesh.metrics.pool_gauges`); the password-hashing
queue, ``password_checks_total{outcome}`` with outcome ``admitted``, ``refused``, ``expired``, ``skipped``,
``completed`` (:class:`auth.passwords.QueueCounts`).
"""

from __future__ import annotations

from dataclasses import fields

from prometheus_client import CollectorRegistry

from auth.passwords import QueueCounts
from auth.service import AuthService
from crypto_mesh.metrics import Declared, counter, metrics_registry, pool_gauges


def _password_checks(service: AuthService) -> dict[tuple[str, ...], int]:
    counts = service.password_checks
    return {(field.name,): getattr(counts, field.name) for field in fields(QueueCounts)}


METRICS: tuple[Declared[AuthService], ...] = (
    counter(
        "password_checks", "Password checks of the hashing queue, by outcome.", _password_checks, labels=("outcome",)
    ),
    *pool_gauges(lambda service: service.engine.sync_engine.pool),
)


def registry_for(service: AuthService) -> CollectorRegistry:
    """A registry of its own with the series of :data:`METRICS` and the RED series of the RPCs."""
    return metrics_registry("auth", METRICS, service, service.grpc_metrics)
