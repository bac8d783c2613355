"""Settings of the aggregator: environment variables with the ``AGGREGATOR_`` prefix (docs/CONTRACTS.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, FilePath, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from crypto_mesh.binance import AGG_TRADE, TRADE, normalize_symbol
from crypto_mesh.grpc_tls import check_target
from crypto_mesh.kafka import FOLLOW_TOPIC, KafkaClientSettings
from crypto_mesh.settings import MeshTlsSettings

#: A Binance trade stream kind: ``<symbol>@trade`` (one frame per trade) or ``<symbol>@aggTrade``.
TradeStreamKind = Literal["trade", "aggTrade"]


def parse_trade_stream_by_symbol(text: str) -> dict[str, str]:
    """``"dotusdt=aggTrade, btcusdt=trade"`` → ``{"dotusdt": "aggTrade", "btcusdt": "trade"}`` (symbols
    normalised; an empty text is an empty map). Raises ValueError for an entry without ``=``, a bad symbol,
    a kind other than ``trade`` / ``aggTrade`` or a symbol given twice."""
    kinds: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        symbol, equals, kind = (item.strip() for item in entry.partition("="))
        if not equals:
            raise ValueError(f"{entry[:64]!r} is not symbol=kind")
        if kind not in (TRADE, AGG_TRADE):
            raise ValueError(f"{kind[:32]!r} is not a trade stream kind ({TRADE} or {AGG_TRADE})")
        symbol = normalize_symbol(symbol)
        if symbol in kinds:
            raise ValueError(f"{symbol} is given twice")
        kinds[symbol] = kind
    return kinds


def format_trade_stream_by_symbol(kinds: Mapping[str, str]) -> str:
    """The ``TRADE_STREAM_BY_SYMBOL`` text of ``kinds`` (symbol → kind), sorted by symbol: the inverse of
    :func:`parse_trade_stream_by_symbol`."""
    return ",".join(f"{symbol}={kinds[symbol]}" for symbol in sorted(kinds))


class AggregatorSettings(MeshTlsSettings, KafkaClientSettings):
    """Where the control API listens, the upstream socket_proxy, Redis, Kafka and the window rule.

    Environment (``AGGREGATOR_`` prefix):

    - ``HOST`` (``127.0.0.1``), ``PORT`` (``8088``; ``0`` binds a free port, reported by ``Running.port``):
      the control HTTP API, never published outside the mesh.
    - ``SOCKET_PROXY_TARGET`` (``127.0.0.1:50052``): gRPC target of socket_proxy (gRPC's name syntax,
      :func:`crypto_mesh.grpc_tls.check_target`): one ``host:port``, or several replicas, as
      ``ipv4:10.0.0.5:50052,10.0.0.6:50052`` or ``dns:///socket_proxy:50052`` (every address the name
      resolves to); calls are balanced round robin over those that are up, each replica proving the
      ``socket_proxy`` identity.
    - ``API_TOKEN_FILE`` (required): the control API's service credential, a file of bearer tokens (one a
      line, :mod:`crypto_mesh.servicecreds`); every route but ``/healthz`` answers 401 without one of them.
    - ``REDIS_URL`` (required, secret): ``redis://user:password@host:port/db`` (the ``aggregator`` ACL user),
      or ``redis+cluster://user:password@host:port[,host:port…]/0`` for a Redis Cluster
      (:mod:`crypto_mesh.redisclient`);
      SecondStats, latest prices and followers.
    - ``KAFKA_BOOTSTRAP_SERVERS`` (required): ``host:port[,host:port]``; topics ``binance.miniticker``,
      ``binance.second`` and the follow topic.
    - ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``,
      ``KAFKA_SASL_PASSWORD_FILE``: how the producers authenticate (:class:`crypto_mesh.kafka.KafkaClientSettings`;
      default ``PLAINTEXT``, none).
    - ``TRADE_STREAM`` (``trade`` or ``aggTrade``, default ``trade``): which Binance trade stream of a symbol
      is windowed; the live exchange has both for every symbol.
    - ``TRADE_STREAM_BY_SYMBOL`` (empty): exceptions to ``TRADE_STREAM``, ``symbol=kind`` comma-separated
      (``dotusdt=aggTrade,btcusdt=trade``). A replayed recording has one kind or the other per symbol:
      ``crypto-mesh up`` sets this from the recording it plays.
    - ``STALE_STREAM_S`` (60, at least 0.1): a followed symbol whose trade stream carries no frame for that
      long is logged (``trade_stream_stale``, naming the stream) and counted (:mod:`aggregator.watchdog`).
    - ``WINDOW_GRACE_MS`` (1000): how long after the end of a second, with no trade of a later second, its
      window is closed and published.
    - ``BACKFILL_MAX_IDS`` (5000; 0 = off): when a symbol's trade ids skip, the first that many skipped trades
      are fetched back from the exchange's history through socket_proxy (``HistoricalTrades``,
      :mod:`aggregator.backfill`) while the symbol's window waits up to the grace; a second still lacking
      trades is published marked incomplete (``"x": true``). A symbol taken over fetches the trades since the
      last second on Redis the same way, up to that many (:meth:`aggregator.intake.TradeIntake.resume_after`).
    - ``BACKFILL_TIMEOUT_MS`` (2000): how long a fill may take in all; what it fetched by then is used.
    - ``FOLLOW_TOPIC`` (``aggregator.follows``), ``FOLLOW_PARTITIONS`` (12), ``GROUP_ID`` (``aggregator``):
      replicas share the followed symbols (:mod:`aggregator.ownership`, :mod:`aggregator.follows`): each is a
      member of consumer group ``GROUP_ID`` over the compacted follow topic (created with ``FOLLOW_PARTITIONS``
      partitions, keyed by symbol), and streams the followed symbols of the partitions assigned to it. Every
      replica of one mesh must have the same three; the partitions bound how many replicas can share (one
      partition each at most) and are fixed once the topic exists (a topic that exists with another count is
      used as it is, logged as ``follow_topic_partitions_differ``).
    - ``GROUP_SESSION_TIMEOUT_MS`` (6000, at least 1000; Kafka brokers refuse less than their
      ``group.min.session.timeout.ms``, 6000 by default): how long the group waits for a silent replica
      before its symbols are assigned to the others.
    - ``FOLLOW_RESYNC_S`` (30): how often a replica checks the symbols it streams against the followers in
      Redis (repairs a notice that could not be sent).
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
    trade_stream: TradeStreamKind = TRADE
    trade_stream_by_symbol: Annotated[dict[str, TradeStreamKind], NoDecode] = Field(default_factory=dict)
    stale_stream_s: float = Field(default=60.0, ge=0.1, le=86_400)
    window_grace_ms: int = Field(default=1000, ge=0, le=60_000)
    backfill_max_ids: int = Field(default=5000, ge=0, le=100_000)
    backfill_timeout_ms: int = Field(default=2000, ge=1, le=60_000)
    kafka_enable_idempotence: bool = True
    follow_topic: str = Field(default=FOLLOW_TOPIC, min_length=1, max_length=249)
    follow_partitions: int = Field(default=12, ge=1, le=1000)
    group_id: str = Field(default="aggregator", min_length=1)
    group_session_timeout_ms: int = Field(default=6000, ge=1000, le=300_000)
    follow_resync_s: float = Field(default=30.0, ge=0.1, le=86_400)

    @field_validator("socket_proxy_target")
    @classmethod
    def _grpc_target(cls, value: str) -> str:
        return check_target(value)

    @field_validator("trade_stream_by_symbol", mode="before")
    @classmethod
    def _parse_trade_stream_by_symbol(cls, value: object) -> object:
        return parse_trade_stream_by_symbol(value) if isinstance(value, str) else value

    @field_validator("trade_stream_by_symbol")
    @classmethod
    def _normalize_symbols(cls, value: dict[str, str]) -> dict[str, str]:
        return {normalize_symbol(symbol): kind for symbol, kind in value.items()}
