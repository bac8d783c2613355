"""Prometheus metrics of the aggregator, served at ``GET /metrics`` of its control API.

The hot path only increments plain integers (the intakes' counters, the publisher's and producer's totals);
:data:`METRICS` declares how each series reads them when scraped (:mod:`crypto_mesh.metrics`), so metrics cost
nothing per frame. The one histogram, ``aggregator_publish_latency_seconds`` (window close → acknowledged
Redis publish), belongs to the :class:`aggregator.store.StatPublisher`. Each running aggregator has its own
``CollectorRegistry``.

Series (prefix ``aggregator_``), counters: ``trade_frames_total{outcome}`` with outcome ``parsed``,
``malformed`` (failed to parse: dropped, never priced), ``unknown_event``, ``wrong_symbol``;
``late_trades_total``, ``duplicate_trades_total``, ``trade_gaps_total``, ``trade_ids_missed_total``,
``incomplete_seconds_total`` (SecondStats published marked incomplete, ``"x": true``, because a gap skipped
some of their trades and the fill did not bring them back in time), ``backfills_total{result="whole"|"partial"}``
(fills of skipped ids, by whether they brought every skipped trade back), ``backfilled_trades_total`` (trades
they added), ``first_windows_skipped_total`` (first windows of taken-over symbols, not published),
``streams_resumed_total`` (taken-over symbols resumed after the last second on Redis, the seconds in between
fetched),
``follow_notices_failed_total``, ``follow_group_restarts_total``,
``second_stats_total`` (windows closed), ``redis_publishes_total`` (SecondStats published),
``redis_stale_total`` (refused by the newer-only script), ``redis_conflated_total`` (overflow policy
``conflate``: older pending stats of a symbol replaced by its latest), ``redis_publish_failures_total``,
``ticker_frames_total``, ``ticker_malformed_total``, ``redis_tickers_written_total`` (24 h tickers stored),
``redis_tickers_stale_total`` (refused as not newer), ``redis_ticker_write_failures_total``,
``kafka_sent_total``, ``kafka_failed_total``, ``kafka_dropped_total`` (overflow policy ``drop_oldest``),
``upstream_reconnects_total``, ``stale_stream_periods_total`` (times a followed symbol's trade stream went
stale, :mod:`aggregator.watchdog`); gauges ``redis_pending``, ``redis_tickers_pending`` (symbols whose ticker
waits), ``kafka_queue_depth``, ``tracked_symbols``, ``follow_partitions`` (of the follow topic, assigned to this
replica), ``mini_ticker_streams`` (1 on the replica streaming the mini-tickers), ``window_symbols`` (symbols
with window state),
``stale_streams`` (followed trade streams stale now). And the series every service has
(:mod:`crypto_mesh.observe`, :class:`crypto_mesh.metrics.RedisMetrics`): ``http_requests_total``,
``http_request_duration_seconds`` (control API), ``grpc_client_handled_total``, ``grpc_client_handling_seconds``
(streams and trade history from socket_proxy), ``redis_command_duration_seconds``, ``redis_command_errors_total``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from aggregator.service import AggregatorService
from crypto_mesh.metrics import Declared, counter, gauge, metrics_registry

#: The outcomes of ``aggregator_trade_frames_total``: the fields of :class:`aggregator.intake.TradeCounters`.
TRADE_FRAME_OUTCOMES = ("parsed", "malformed", "unknown_event", "wrong_symbol")


def _trade_frames(service: AggregatorService) -> dict[tuple[str, ...], int]:
    return {(outcome,): getattr(service.trades.counters, outcome) for outcome in TRADE_FRAME_OUTCOMES}


METRICS: tuple[Declared[AggregatorService], ...] = (
    counter("trade_frames", "Trade frames received, by outcome.", _trade_frames, labels=("outcome",)),
    counter(
        "late_trades",
        "Trades dropped because their second was already closed.",
        lambda service: service.trades.counters.late,
    ),
    counter(
        "duplicate_trades",
        "Trades dropped because their id was already in the window.",
        lambda service: service.trades.counters.duplicates,
    ),
    counter(
        "trade_gaps",
        "Jumps of a symbol's trade / aggregate id beyond +1.",
        lambda service: service.trades.counters.gaps,
    ),
    counter(
        "trade_ids_missed",
        "Trade / aggregate ids skipped by those jumps.",
        lambda service: service.trades.counters.ids_missed,
    ),
    counter(
        "incomplete_seconds",
        "SecondStats published marked incomplete because a gap skipped some of their trades.",
        lambda service: service.trades.counters.incomplete,
    ),
    counter(
        "backfills",
        "Fills of skipped trade ids from the exchange's history, by whether they brought every one back.",
        lambda service: {
            ("whole",): service.trades.counters.backfills_whole,
            ("partial",): service.trades.counters.backfills_partial,
        },
        labels=("result",),
    ),
    counter(
        "backfilled_trades",
        "Skipped trades fetched back and windowed.",
        lambda service: service.trades.counters.backfilled,
    ),
    counter(
        "first_windows_skipped",
        "First windows of taken-over symbols not published (begun before the stream, aggregator.ownership).",
        lambda service: service.trades.counters.first_windows_skipped,
    ),
    counter(
        "streams_resumed",
        "Taken-over symbols resumed after the last second published, the trades in between fetched.",
        lambda service: service.trades.counters.resumed,
    ),
    counter(
        "follow_notices_failed",
        "Follow notice deliveries that failed (sent again) and notices dropped from the full buffer.",
        lambda service: service.notices.failed + service.notices.dropped,
    ),
    counter(
        "follow_group_restarts",
        "Times the consumer group membership over the follow topic was restarted after a Kafka failure.",
        lambda service: service.group.restarts,
    ),
    counter("second_stats", "SecondStats closed.", lambda service: service.trades.counters.stats),
    counter(
        "redis_publishes", "SecondStats published to Redis.", lambda service: service.publisher.published
    ),
    counter(
        "redis_stale",
        "SecondStats refused by Redis as not newer than the stored price.",
        lambda service: service.publisher.stale,
    ),
    counter(
        "redis_conflated",
        "Pending SecondStats replaced by a newer one of their symbol.",
        lambda service: service.publisher.dropped,
    ),
    counter(
        "redis_publish_failures",
        "Redis publish rounds that failed.",
        lambda service: service.publisher.failures,
    ),
    counter("ticker_frames", "Mini-ticker frames received.", lambda service: service.tickers.counters.frames),
    counter(
        "ticker_malformed",
        "Mini-ticker frames or elements dropped as malformed.",
        lambda service: service.tickers.counters.malformed,
    ),
    counter(
        "redis_tickers_written",
        "24 h tickers stored in Redis.",
        lambda service: service.ticker_store.written,
    ),
    counter(
        "redis_tickers_stale",
        "24 h tickers refused by Redis as not newer than the stored one.",
        lambda service: service.ticker_store.stale,
    ),
    counter(
        "redis_ticker_write_failures",
        "24 h ticker write rounds to Redis that failed.",
        lambda service: service.ticker_store.failures,
    ),
    counter("kafka_sent", "Mini-ticker records acknowledged by Kafka.", lambda service: service.kafka.sent),
    counter(
        "kafka_failed",
        "Mini-ticker record deliveries that failed (each record sent again after a backoff).",
        lambda service: service.kafka.failed,
    ),
    counter(
        "kafka_dropped",
        "Mini-ticker records dropped (oldest first) from the full buffer.",
        lambda service: service.kafka.dropped,
    ),
    counter(
        "upstream_reconnects",
        "gRPC streams from socket_proxy called again.",
        lambda service: service.feeds.reconnects,
    ),
    counter(
        "stale_stream_periods",
        "Times a followed symbol's trade stream went without a frame for AGGREGATOR_STALE_STREAM_S.",
        lambda service: service.feeds.watchdog.periods,
    ),
    gauge(
        "redis_pending", "SecondStats waiting to be published.", lambda service: service.publisher.pending()
    ),
    gauge(
        "redis_tickers_pending",
        "Symbols whose 24 h ticker waits to be written to Redis.",
        lambda service: service.ticker_store.pending(),
    ),
    gauge(
        "kafka_queue_depth",
        "Mini-ticker records waiting for the producer.",
        lambda service: service.kafka.queue_depth,
    ),
    gauge(
        "tracked_symbols", "Symbols streamed from socket_proxy.", lambda service: len(service.feeds.tracked())
    ),
    gauge(
        "follow_partitions",
        "Partitions of the follow topic the replicas' consumer group assigns this replica now.",
        lambda service: len(service.ownership.assigned),
    ),
    gauge(
        "mini_ticker_streams",
        "1 while this replica streams the all-market mini-tickers (it owns partition 0), else 0.",
        lambda service: int(service.feeds.streaming_mini_tickers),
    ),
    gauge(
        "stale_streams",
        "Followed symbols' trade streams without a frame for AGGREGATOR_STALE_STREAM_S, now.",
        lambda service: len(service.feeds.watchdog.stale),
    ),
    gauge(
        "window_symbols", "Symbols with one-second window state.", lambda service: len(service.trades.windows)
    ),
)


def registry_for(service: AggregatorService) -> CollectorRegistry:
    """A registry of its own with the series of :data:`METRICS`, the publish latency histogram, the RED series
    of the control API and of the streams from socket_proxy, and the Redis client's series."""
    return metrics_registry(
        "aggregator",
        METRICS,
        service,
        service.publisher.latency,
        service.http_metrics,
        service.grpc_metrics,
        service.redis_metrics,
    )
