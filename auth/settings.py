"""Settings of the auth service: environment variables with the ``AUTH_`` prefix (docs/CONTRACTS.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from crypto_mesh.settings import ServiceSettings


class AuthSettings(ServiceSettings):
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
    - ``ACCESS_TOKEN_TTL_S`` (900 s), ``REFRESH_TOKEN_TTL_S`` (2 592 000 s = 30 days).
    - ``BCRYPT_COST`` (12): log2 of bcrypt's work factor, 4..31. Tests use 4.
    - ``HASH_QUEUE_MAX_WAIT_S`` (2.0 s, > 0): the longest a password check may take from its arrival,
      queueing included. A login or registration whose check is not expected to finish within this, or
      within its gRPC deadline if that is sooner, is refused at once with ``UNAVAILABLE`` and a retry-after
      hint (the BFF answers 503 with ``Retry-After``).
    - ``HASH_WORKERS`` (unset: one per CPU this process may run on): threads that hash passwords. Set it to
      the CPU quota of a container, which the process cannot see.
    - ``LOG_LEVEL``, ``LOG_FORMAT``: see :class:`crypto_mesh.settings.ServiceSettings`.
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
    bcrypt_cost: int = Field(default=12, ge=4, le=31)
    hash_queue_max_wait_s: float = Field(default=2.0, gt=0)
    hash_workers: int | None = Field(default=None, ge=1)
