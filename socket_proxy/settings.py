"""Settings of socket_proxy (environment variables with the ``PROXY_`` prefix, docs/CONTRACTS.md)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from crypto_mesh.binance import rest as binance_rest
from crypto_mesh.settings import MeshTlsSettings, MetricsPortSettings

#: Binance spot REST ("General API Information", base endpoints).
DEFAULT_REST_URL = "https://api.binance.com"
#: How long a ``RawFrames`` message waits for more frames after its first (ms). A gRPC message costs both
#: processes far more than a frame in it: with no wait, a busy stream went out ~30 frames a message and cost
#: socket_proxy + aggregator 26 µs of CPU per frame; waiting 5 ms made it ~120 frames a message and 20 µs
#: (benchmarks/bench_market_path.py --speed 1000, docs/CAPACITY.md). 5 ms is small beside the one-second
#: windows the aggregator makes of the frames; a quiet stream's lone frame waits it out too.
DEFAULT_BATCH_LINGER_MS = 5.0


class ProxySettings(MeshTlsSettings, MetricsPortSettings):
    """``PROXY_HOST`` (127.0.0.1), ``PROXY_PORT`` (50052; 0 picks a free port), ``PROXY_EXCHANGE_URL``
    (``wss://stream.binance.com:9443``, or a replay exchange's ``ws://127.0.0.1:9443``; the proxy connects to its
    ``/stream`` endpoint), ``PROXY_SUBSCRIBER_QUEUE_SIZE`` (10000 frames buffered per gRPC subscriber before it is
    ended with RESOURCE_EXHAUSTED), ``PROXY_MAX_BATCH`` (256 frames at most in one ``RawFrames``),
    ``PROXY_BATCH_LINGER_MS`` (5; 0 = send at once; else how long a message waits for more frames after its
    first one, unless ``MAX_BATCH`` are already queued: fewer, fuller messages for up to that much added latency,
    see :data:`DEFAULT_BATCH_LINGER_MS`) and ``PROXY_METRICS_PORT`` (0 = no metrics endpoint;
    else Prometheus ``GET /metrics`` on ``PROXY_HOST:PROXY_METRICS_PORT``, with ``PROXY_METRICS_TOKEN_FILE``:
    :class:`crypto_mesh.settings.MetricsPortSettings`; ``crypto-mesh up`` and compose turn it on). ``PROXY_REST_URL`` (unset: derived
    from ``PROXY_EXCHANGE_URL``, see :meth:`exchange_rest_url`) and ``PROXY_REST_WEIGHT_PER_MINUTE`` (3000, at
    most Binance's 6000): where and within what request weight trade history is fetched for ``HistoricalTrades``
    (:mod:`socket_proxy.history`). ``PROXY_TLS_CA_FILE``,
    ``PROXY_TLS_CERT_FILE``, ``PROXY_TLS_KEY_FILE`` (required): the mesh CA and the ``socket_proxy``
    identity's certificate and key; the server speaks mutual TLS only and serves the ``aggregator`` identity
    (see :class:`crypto_mesh.settings.MeshTlsSettings`, docs/SECURITY.md)."""

    model_config = SettingsConfigDict(env_prefix="PROXY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=50052, ge=0, le=65535)
    exchange_url: str = "wss://stream.binance.com:9443"
    subscriber_queue_size: int = Field(default=10_000, ge=1)
    max_batch: int = Field(default=256, ge=1)
    batch_linger_ms: float = Field(default=DEFAULT_BATCH_LINGER_MS, ge=0, le=1000)
    rest_url: str | None = None
    rest_weight_per_minute: int = Field(default=3000, ge=1, le=binance_rest.REQUEST_WEIGHT_PER_MINUTE)

    def exchange_rest_url(self) -> str:
        """Where trade history is fetched (``PROXY_REST_URL``); unset: the REST side of ``exchange_url``
        (``ws://host:port`` → ``http://host:port``, the replay exchange serving both on one port; anything else →
        Binance's ``https://api.binance.com``)."""
        if self.rest_url:
            return self.rest_url
        if self.exchange_url.startswith("ws://"):
            return "http://" + self.exchange_url.removeprefix("ws://")
        return DEFAULT_REST_URL

    @field_validator("rest_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("PROXY_REST_URL must start with http:// or https://")
        return value.rstrip("/") if value else None

    @field_validator("exchange_url")
    @classmethod
    def _websocket_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("PROXY_EXCHANGE_URL must start with ws:// or wss://")
        return value.rstrip("/")
