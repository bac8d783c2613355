"""Settings of the aggregator: environment variables with the ``AGGREGATOR_`` prefix (docs/CONTRACTS.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, FilePath, SecretStr
from pydantic_settings import SettingsConfigDict

from crypto_mesh.kafka import KafkaClientSettings
from crypto_mesh.settings import MeshTlsSettings


class AggregatorSettings(MeshTlsSettings, KafkaClientSettings):
    """Where the control API listens, the upstream socket_proxy, Redis, Kafka and the window rule.

    Environment (``AGGREGATOR_`` prefix):

    - ``HOST`` (``127.0.0.1``), ``PORT`` (``8088``; ``0`` binds a free port, reported by ``Running.port``):
      the control HTTP API, never published outside the mesh.
    - ``SOCKET_PROXY_TARGET`` (``127.0.0.1:50052``): gRPC target of socket_proxy.
    - ``API_TOKEN_FILE`` (required): the control API's service credential, a file of bearer tokens (one a
      line, :mod:`crypto_mesh.servicecreds`); every route but ``/healthz`` answers 401 without one of them.
    - ``REDIS_URL`` (required, secret): ``redis://user:password@host:port/db`` (the ``aggregator`` ACL user);
      SecondStats, latest prices and followers.
    - ``KAFKA_BOOTSTRAP_SERVERS`` (required): ``host:port[,host:port]``; topic ``binance.miniticker``.
    - ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``,
      ``KAFKA_SASL_PASSWORD_FILE``: how the producers authenticate (:class:`crypto_mesh.kafka.KafkaClientSettings`;
      default ``PLAINTEXT``, none).
    - ``TRADE_STREAM`` (``trade`` or ``aggTrade``, default ``trade``): which Binance trade stream is windowed.
    - ``WINDOW_GRACE_MS`` (1000): how long after the end of a second, with no trade of a later second, its
      window is closed and published.
    - ``KAFKA_ENABLE_IDEMPOTENCE`` (true): idempotent producer; the embedded broker (Tansu, memory storage)
      refuses ``InitProducerId``, so the embedded stack sets false.
    - ``TLS_CA_FILE``, ``TLS_CERT_FILE``, ``TLS_KEY_FILE`` (required): the mesh CA and the ``aggregator``
      identity's certificate and key, presented to socket_proxy over mutual TLS (see
      :class:`crypto_mesh.settings.MeshTlsSettings`, docs/SECURITY.md).
    - ``LOG_LEVEL``, ``LOG_FORMAT``: see :class:`crypto_mesh.settings.ServiceSettings`.
    """

    model_config = SettingsConfigDict(env_prefix="AGGREGATOR_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8088, ge=0, le=65535)
    socket_proxy_target: str = Field(default="127.0.0.1:50052", min_length=1)
    api_token_file: FilePath
    redis_url: SecretStr = Field(min_length=1)
    kafka_bootstrap_servers: str = Field(min_length=1)
    trade_stream: Literal["trade", "aggTrade"] = "trade"
    window_grace_ms: int = Field(default=1000, ge=0, le=60_000)
    kafka_enable_idempotence: bool = True
