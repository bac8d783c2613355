-- Market tickers loaded from Kafka topic binance.miniticker (docs/CONTRACTS.md, section "ClickHouse").
-- ReplacingMergeTree keyed by message_id (deterministic per symbol and event time) folds redelivered
-- records into one row at merge time; count() FINAL sees exactly one row per record at once.
-- non_replicated_deduplication_window makes a non-replicated table remember the last 1000 insert blocks,
-- so an insert repeated with the same insert_deduplication_token is dropped by the server.
CREATE DATABASE IF NOT EXISTS crypto;

CREATE TABLE IF NOT EXISTS crypto.market_tickers
(
    message_id     String,
    event_type     LowCardinality(String),
    event_time     DateTime64(3, 'UTC'),
    receive_time   DateTime64(3, 'UTC'),
    symbol         LowCardinality(String),
    close_price    Decimal(38, 18),
    open_price     Decimal(38, 18),
    high_price     Decimal(38, 18),
    low_price      Decimal(38, 18),
    change_price   Decimal(38, 18),
    change_percent Decimal(38, 8)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (symbol, event_time, message_id)
SETTINGS non_replicated_deduplication_window = 1000;
