"""What a running auth server is made of, apart from gRPC: :class:`AuthService`.

:func:`auth.server.start` opens and closes the parts (:mod:`crypto_mesh.service`); the servicer only translates
gRPC to the use cases of :class:`auth.users.Accounts` and back.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from auth.passwords import PasswordHasher, QueueCounts
from auth.users import Accounts
from crypto_mesh.observe import GrpcMetrics


@dataclass(frozen=True)
class AuthService:
    """What a started auth server exposes to tests and benchmarks (``Running.service``): its use cases and
    its password-hashing queue; for the metrics (:mod:`auth.metrics`), the database engine and the RED series of
    the RPCs; the bound metrics port (None when metrics are off)."""

    accounts: Accounts
    hasher: PasswordHasher
    engine: AsyncEngine
    grpc_metrics: GrpcMetrics
    metrics_port: int | None = None

    @property
    def password_checks(self) -> QueueCounts:
        """What the password-hashing queue did since the start: checks admitted, refused on arrival, expired
        while queued, skipped and completed."""
        return self.hasher.queue.counts
