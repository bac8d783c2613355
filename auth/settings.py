"""Settings of the auth service: environment variables with the ``AUTH_`` prefix (docs/CONTRACTS.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from crypto_mesh.settings import MeshTlsSettings, MetricsPortSettings
from crypto_mesh.throttle import Rate, check_name_budgets

RateSetting = Annotated[Rate, NoDecode, BeforeValidator(Rate.parse)]


class AuthSettings(MeshTlsSettings, MetricsPortSettings):
    """Where the auth service listens, its database, its signing key and its token lifetimes.

    Environment (``AUTH_`` prefix):

    - ``HOST`` (``127.0.0.1``), ``PORT`` (``50051``; ``0`` binds a free port, reported by ``Running.port``).
    - ``DATABASE_URL`` (required): SQLAlchemy asyncpg URL, ``postgresql+asyncpg://user:pass@host/auth``.
    - ``JWT_PRIVATE_KEY_FILE`` (required): PEM (PKCS#8) Ed25519 private key that signs access tokens; create
      one with :func:`auth.tokens.generate_private_key_pem`.
    - ``JWT_RETIRED_PUBLIC_KEYS_FILE`` (optional): concatenated PEM public keys of retired signing keys. They
      are still published by ``GetPublicKeys`` (and accepted by ``DeleteUser``) so that tokens they signed
      stay valid until they expire; drop a key from the file once ``ACCESS_TOKEN_TTL_S`` has passed.
    - ``JWT_ISSUER`` (``crypto-mesh-auth``), ``JWT_AUDIENCE`` (``crypto-mesh``): ``iss`` and ``aud`` claims.
    - ``ACCESS_TOKEN_TTL_S`` (900 s), ``REFRESH_TOKEN_TTL_S`` (2 592 000 s = 30 days): the refresh token's
      lifetime from its issue, so a session lives while it is refreshed at least that often.
    - ``SESSION_MAX_LIFETIME_S`` (2 592 000 s = 30 days): a session's absolute lifetime from its login; past
      it no refresh is accepted and the user logs in again.
    - ``DEVICE_TOKEN_TTL_S`` (7 776 000 s = 90 days): lifetime of the login-device token a login returns.
    - ``LOGIN_RATE_PER_NAME_AND_ADDRESS`` (``10/15 minutes``), ``LOGIN_RATE_PER_NAME`` (``100/hour``),
      ``LOGIN_RATE_PER_DEVICE`` (``10/15 minutes``): failed password checks allowed per (name, client address),
      per name, and per login device (:mod:`crypto_mesh.throttle`), as ``<count>/[<n>] second|minute|hour|
      day``; beyond them ``Login`` answers RESOURCE_EXHAUSTED. The first may be no faster than the second
      (checked), else one address could spend a name's whole budget and lock its owner out.
    - ``BCRYPT_COST`` (12): log2 of bcrypt's work factor, 4..31. Tests use 4.
    - ``HASH_QUEUE_MAX_WAIT_S`` (2.0 s, > 0): the longest a password check may take from its arrival,
      queueing included. A login or registration whose check is not expected to finish within this, or
      within its gRPC deadline if that is sooner, is refused at once with ``UNAVAILABLE`` and a retry-after
      hint (the BFF answers 503 with ``Retry-After``).
    - ``HASH_WORKERS`` (unset: one per CPU this process may run on): threads that hash passwords. Set it to
      the CPU quota of a container, which the process cannot see.
    - ``TLS_CA_FILE``, ``TLS_CERT_FILE``, ``TLS_KEY_FILE`` (required): the mesh CA and the ``auth`` identity's
      certificate and key; the server speaks mutual TLS only and serves the ``profile_bff`` identity (see
      :class:`crypto_mesh.settings.MeshTlsSettings`, docs/SECURITY.md).
    - ``METRICS_PORT``, ``METRICS_TOKEN_FILE``: Prometheus ``GET /metrics`` on a port of its own
      (:class:`crypto_mesh.settings.MetricsPortSettings`, :mod:`auth.metrics`).
    - ``LOG_LEVEL``, ``LOG_FORMAT``, ``ACCESS_LOG``: see :class:`crypto_mesh.settings.ServiceSettings`.
    """

    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    database_url: str
    jwt_private_key_file: Path
    jwt_retired_public_keys_file: Path | None = None
    jwt_issuer: str = Field(default="crypto-mesh-auth", min_length=1)
    jwt_audience: str = Field(default="crypto-mesh", min_length=1)
    access_token_ttl_s: int = Field(default=900, gt=0)
    refresh_token_ttl_s: int = Field(default=2_592_000, gt=0)
    session_max_lifetime_s: int = Field(default=2_592_000, gt=0)
    device_token_ttl_s: int = Field(default=7_776_000, gt=0)
    login_rate_per_name_and_address: RateSetting = Rate(10, 900)
    login_rate_per_name: RateSetting = Rate(100, 3600)
    login_rate_per_device: RateSetting = Rate(10, 900)
    bcrypt_cost: int = Field(default=12, ge=4, le=31)
    hash_queue_max_wait_s: float = Field(default=2.0, gt=0)
    hash_workers: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_address_cannot_spend_a_names_budget(self) -> AuthSettings:
        check_name_budgets(self.login_rate_per_name_and_address, self.login_rate_per_name, "AUTH_")
        return self
