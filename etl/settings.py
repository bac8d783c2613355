"""Settings of the ETL service (environment variables with prefix ``ETL_``; see docs/CONTRACTS.md)."""

from __future__ import annotations

from pydantic import Field, FilePath, SecretStr
from pydantic_settings import SettingsConfigDict

from crypto_mesh.kafka import DEADLETTER_TOPIC, MINI_TICKER_TOPIC, SECOND_TOPIC, KafkaClientSettings
from crypto_mesh.settings import ServiceSettings
from etl.sql import DEFAULT_MAX_EXECUTION_S, DEFAULT_MAX_ROWS


class EtlSettings(ServiceSettings, KafkaClientSettings):
    """Kafka → ClickHouse loader and read-only SQL endpoint.

    - ``ETL_HOST`` / ``ETL_PORT``: bind address of the HTTP server (``/healthz``, ``POST /v1/sql``); port 0
      picks a free port.
    - ``ETL_API_TOKEN_FILE`` (required): the HTTP API's service credential, a file of bearer tokens (one a
      line, :mod:`crypto_mesh.servicecreds`); ``POST /v1/sql`` answers 401 without one of them.
    - ``ETL_KAFKA_BOOTSTRAP_SERVERS`` (required): ``host:port[,host:port]``.
    - ``ETL_KAFKA_SECURITY_PROTOCOL``, ``ETL_KAFKA_SASL_MECHANISM``, ``ETL_KAFKA_SASL_USERNAME``,
      ``ETL_KAFKA_SASL_PASSWORD_FILE``: how the consumer and the dead-letter producer authenticate
      (:class:`crypto_mesh.kafka.KafkaClientSettings`; default ``PLAINTEXT``, none).
    - ``ETL_KAFKA_GROUP_ID``: consumer group whose committed offsets mark what ClickHouse holds.
    - ``ETL_KAFKA_TOPIC`` (``binance.miniticker``): topic of KafkaMsg records → ``crypto.market_tickers``;
      ``ETL_KAFKA_SECOND_TOPIC`` (``binance.second``): topic of SecondStat records → ``crypto.price_seconds``;
      both are consumed by one consumer group. ``ETL_KAFKA_DEADLETTER_TOPIC`` (``binance.deadletter``):
      where records that cannot be decoded go, with the reason. ``ETL_KAFKA_TOPIC_PARTITIONS``: partition
      count used when the ETL has to create a topic.
    - ``ETL_KAFKA_SESSION_TIMEOUT_MS``: consumer-group session timeout; the heartbeat is a third of it
      (Kafka brokers accept 6000 to 1800000 by default).
    - ``ETL_CLICKHOUSE_URL`` (required, secret: may hold a password): ``chdb:///dir`` (embedded chDB,
      in-process) or ``http://user:pass@host:8123``.
    - ``ETL_BATCH_MAX_ROWS`` / ``ETL_BATCH_MAX_AGE_MS``: each topic has its own batch, inserted when it holds
      this many records or its first record is this old (ms), whichever comes first. A closed batch is
      inserted while the next one fills, so the records held never exceed three times ``ETL_BATCH_MAX_ROWS``
      (an open batch per topic and the one being inserted), and while ClickHouse fails only the failing batch
      is held (see :mod:`etl.consumer`). The default, 50,000, follows ClickHouse's advice of large,
      infrequent inserts: each insert makes a part that merges rewrite later, and in
      ``benchmarks/bench_etl.py`` batches of 50,000 loaded about 40 % more rows per second than batches of
      20,000. Under live traffic the age closes batches long before.
    - ``ETL_RETRY_INITIAL_MS`` / ``ETL_RETRY_MAX_MS``: exponential backoff (with jitter) between attempts to
      reach Kafka or ClickHouse.
    - ``ETL_SQL_MAX_ROWS`` / ``ETL_SQL_MAX_EXECUTION_S``: limits of one ``POST /v1/sql`` query (ClickHouse
      ``max_result_rows`` and ``max_execution_time``); a query over them is answered 400.
    """

    model_config = SettingsConfigDict(env_prefix="ETL_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8089, ge=0, le=65535)
    api_token_file: FilePath
    kafka_bootstrap_servers: str
    kafka_group_id: str = "etl"
    kafka_topic: str = MINI_TICKER_TOPIC
    kafka_second_topic: str = SECOND_TOPIC
    kafka_deadletter_topic: str = DEADLETTER_TOPIC
    kafka_topic_partitions: int = Field(default=1, ge=1)
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000)
    clickhouse_url: SecretStr
    batch_max_rows: int = Field(default=50_000, ge=1)
    batch_max_age_ms: int = Field(default=1000, ge=1)
    retry_initial_ms: int = Field(default=200, ge=1)
    retry_max_ms: int = Field(default=10_000, ge=1)
    sql_max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=1)
    sql_max_execution_s: int = Field(default=DEFAULT_MAX_EXECUTION_S, ge=1)
