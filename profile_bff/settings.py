"""Settings of the BFF: environment variables with the ``BFF_`` prefix (docs/CONTRACTS.md, "Settings")."""

from __future__ import annotations

from typing import Annotated

from pydantic import field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from crypto_mesh.settings import ServiceSettings


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
    - ``BFF_COOKIE_SECURE`` (``true``): the ``Secure`` attribute of the refresh-token cookie. Only a mesh
      served over plain-HTTP localhost sets it false, since browsers drop Secure cookies there.
    - ``BFF_ALLOWED_ORIGINS`` (empty): comma-separated browser origins (``https://app.example``) allowed to
      open the WebSocket. A request that carries an ``Origin`` header outside this list is refused with 403;
      clients that send no ``Origin`` (curl, wscat, services) are not browsers and are let through.
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

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())
        return value
