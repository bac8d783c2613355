"""Settings of the ETL service (environment variables with prefix ``ETL_``; see docs/CONTRACTS.md)."""

from __future__ import annotations

from pydantic import Field, FilePath, SecretStr
from pydantic_settings import SettingsConfigDict

from crypto_mesh.kafka import DEADLETTER_TOPIC, MINI_TICKER_TOPIC, SECOND_TOPIC, KafkaClientSettings
from crypto_mesh.settings import ServiceSettings
from etl.sql import SqlLimits

_LIMITS = SqlLimits()


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
    - ``ETL_CLICKHOUSE_CLUSTER`` (optional): the name of a cluster of the ClickHouse servers' ``remote_servers``
      (compose profile ``cluster``). Set, the migrations create replicated tables ``ON CLUSTER`` with a
      ``Distributed`` table under each name queries use (:mod:`etl.migrate`), and inserts into a Distributed
      table return once every shard's replica has stored its rows. Unset, single-node tables.
    - ``ETL_BATCH_MAX_ROWS`` / ``ETL_BATCH_MAX_AGE_MS``: each topic has its own batch, inserted when it holds
      this many records or its first record is this old (ms), whichever comes first; one that comes due
      while the previous batch is being inserted goes next, and keeps taking records (up to
      ``ETL_BATCH_MAX_ROWS``) until then. A closed batch is inserted while the next one fills, so the
      records held never exceed three times ``ETL_BATCH_MAX_ROWS``
      (an open batch per topic and the one being inserted), and while ClickHouse fails only the failing batch
      is held (see :mod:`etl.consumer`). The default, 50,000, follows ClickHouse's advice of large,
      infrequent inserts: each insert makes a part that merges rewrite later, and in
      ``benchmarks/bench_etl.py`` batches of 50,000 loaded about 40 % more rows per second than batches of
      20,000. Under live traffic the age closes batches long before.
    - ``ETL_RETRY_INITIAL_MS`` / ``ETL_RETRY_MAX_MS``: exponential backoff between attempts to reach Kafka or
      ClickHouse, with full jitter: each pause is uniform below a cap that starts at ``ETL_RETRY_INITIAL_MS``
      and doubles after each failure up to ``ETL_RETRY_MAX_MS`` (:mod:`crypto_mesh.retry`).
    - ``ETL_ANALYTICS_CLICKHOUSE_URL`` (secret, optional): the ClickHouse connection of analysts' queries,
      its own client on its own thread, so a long query never delays an insert. Unset, it is
      ``ETL_CLICKHOUSE_URL`` (chDB: a second client of the same engine in this process, which chDB allows:
      each client has its own handle, queries of two handles run concurrently). In compose it is the
      ``analytics`` user, who may only SELECT on ``crypto.*`` (docs/SECURITY.md).
    - Limits of one analytics query (:class:`etl.sql.SqlLimits`); a query over one is stopped and answered
      400 with ClickHouse's message: ``ETL_SQL_MAX_EXECUTION_S`` (30 s, ``max_execution_time``),
      ``ETL_SQL_MAX_MEMORY_BYTES`` (1 GB, ``max_memory_usage``), ``ETL_SQL_MAX_ROWS`` (10,000 rows answered,
      ``max_result_rows``), ``ETL_SQL_MAX_RESULT_BYTES`` (32 MiB answered, ``max_result_bytes``),
      ``ETL_SQL_MAX_ROWS_TO_READ`` (2,000,000,000 rows read, ``max_rows_to_read``), ``ETL_SQL_MAX_THREADS``
      (2, ``max_threads``: the machine keeps cores for ingestion).
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
    clickhouse_cluster: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    batch_max_rows: int = Field(default=50_000, ge=1)
    batch_max_age_ms: int = Field(default=1000, ge=1)
    retry_initial_ms: int = Field(default=200, ge=1)
    retry_max_ms: int = Field(default=10_000, ge=1)
    analytics_clickhouse_url: SecretStr | None = None
    sql_max_rows: int = Field(default=_LIMITS.max_result_rows, ge=1)
    sql_max_execution_s: int = Field(default=_LIMITS.max_execution_s, ge=1)
    sql_max_memory_bytes: int = Field(default=_LIMITS.max_memory_bytes, ge=1)
    sql_max_result_bytes: int = Field(default=_LIMITS.max_result_bytes, ge=1)
    sql_max_rows_to_read: int = Field(default=_LIMITS.max_rows_to_read, ge=1)
    sql_max_threads: int = Field(default=_LIMITS.max_threads, ge=1)

    def sql_limits(self) -> SqlLimits:
        """The limits of one analytics query, from the ``ETL_SQL_*`` settings."""
        return SqlLimits(
            max_execution_s=self.sql_max_execution_s,
            max_memory_bytes=self.sql_max_memory_bytes,
            max_result_rows=self.sql_max_rows,
            max_result_bytes=self.sql_max_result_bytes,
            max_rows_to_read=self.sql_max_rows_to_read,
            max_threads=self.sql_max_threads,
        )

    def analytics_url(self) -> str:
        """URL of the analytics client: ``ETL_ANALYTICS_CLICKHOUSE_URL``, else ``ETL_CLICKHOUSE_URL``."""
        return (self.analytics_clickhouse_url or self.clickhouse_url).get_secret_value()
