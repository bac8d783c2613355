-- Every SecondStat the aggregator publishes to Kafka topic binance.second (docs/ANALYTICS.md), and its
-- 1-minute candles.
--
-- price_seconds: one row per symbol and second. The (symbol, second) key is what message_id encodes, so
-- ReplacingMergeTree folds a redelivered record into one row at merge time (FINAL sees one at once), and
-- non_replicated_deduplication_window lets the server drop a batch repeated with its insert token.
CREATE TABLE IF NOT EXISTS crypto.price_seconds
(
    message_id     String,
    symbol         LowCardinality(String),
    second         DateTime64(3, 'UTC'),
    open           Decimal(38, 18),
    high           Decimal(38, 18),
    low            Decimal(38, 18),
    close          Decimal(38, 18),
    volume         Decimal(38, 18),
    quote_volume   Decimal(38, 18),
    vwap           Decimal(38, 18),
    trade_count    UInt32,
    close_trade_id UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(second)
ORDER BY (symbol, second)
SETTINGS non_replicated_deduplication_window = 1000;

-- Partial 1-minute aggregates, written by the materialized view below at every insert into price_seconds.
-- A materialized view sees insert blocks, not the deduplicated table: a second that reaches price_seconds
-- twice (redelivered in a differently-cut batch, which the insert token cannot recognise) reaches this view
-- twice. Every state here is therefore idempotent, so a repeated second changes nothing:
--   open/close: argMin/argMax by second (a repeated second carries the same values);
--   high/low:   max/min;
--   per_second: maxMap keyed by second-of-minute (0-59) over volume, quote volume and trade count, so that
--               the sums of a candle are taken over distinct seconds when it is read (at most 60 entries).
CREATE TABLE IF NOT EXISTS crypto.price_minutes_state
(
    symbol     LowCardinality(String),
    minute     DateTime64(3, 'UTC'),
    open       AggregateFunction(argMin, Decimal(38, 18), DateTime64(3, 'UTC')),
    high       SimpleAggregateFunction(max, Decimal(38, 18)),
    low        SimpleAggregateFunction(min, Decimal(38, 18)),
    close      AggregateFunction(argMax, Decimal(38, 18), DateTime64(3, 'UTC')),
    per_second AggregateFunction(maxMap, Array(UInt8), Array(Decimal(38, 18)), Array(Decimal(38, 18)), Array(UInt32))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (symbol, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS crypto.price_minutes_mv TO crypto.price_minutes_state AS
SELECT
    symbol,
    toStartOfInterval(second, INTERVAL 1 MINUTE) AS minute,
    argMinState(open, second) AS open,
    max(high) AS high,
    min(low) AS low,
    argMaxState(close, second) AS close,
    maxMapState([toUInt8(toSecond(second))], [volume], [quote_volume], [trade_count]) AS per_second
FROM crypto.price_seconds
GROUP BY symbol, minute;

-- 1-minute candles for analysts: open, high, low, close, base and quote volume, trade count, and how many
-- seconds of the minute had trades.
CREATE VIEW IF NOT EXISTS crypto.candles_1m AS
SELECT
    symbol,
    minute,
    open,
    high,
    low,
    close,
    arraySum(per_second.2) AS volume,
    arraySum(per_second.3) AS quote_volume,
    toUInt64(arraySum(per_second.4)) AS trade_count,
    length(per_second.1) AS seconds_traded
FROM
(
    SELECT
        symbol,
        minute,
        argMinMerge(open) AS open,
        max(high) AS high,
        min(low) AS low,
        argMaxMerge(close) AS close,
        maxMapMerge(per_second) AS per_second
    FROM crypto.price_minutes_state
    GROUP BY symbol, minute
);
