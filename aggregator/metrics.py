"""Prometheus metrics of the aggregator, served at ``GET /metrics`` of its control API.

The hot path only increments plain integers (the intakes' counters, the publisher's and producer's totals);
:class:`AggregatorCollector` reads them when scraped, so metrics cost nothing per frame. The one histogram,
``aggregator_publish_latency_seconds`` (window close → acknowledged Redis publish), belongs to the
:class:`aggregator.store.StatPublisher`. Each running aggregator has its own ``CollectorRegistry``.

Series (prefix ``aggregator_``), counters: ``trade_frames_total{outcome}`` with outcome ``parsed``,
``malformed`` (failed to parse: dropped, never priced), ``unknown_event``, ``wrong_symbol``;
``late_trades_total``, ``duplicate_trades_total``, ``trade_gaps_total``, ``trade_ids_missed_total``,
``incomplete_seconds_total`` (seconds not published because a gap skipped some of their trades),
``second_stats_total`` (windows closed), ``redis_publishes_total`` (SecondStats published),
``redis_stale_total`` (refused by the newer-only script), ``redis_conflated_total`` (overflow policy
``conflate``: older pending stats of a symbol replaced by its latest), ``redis_publish_failures_total``,
``ticker_frames_total``, ``ticker_malformed_total``, ``kafka_sent_total``, ``kafka_failed_total``,
``kafka_dropped_total`` (overflow policy ``drop_oldest``), ``upstream_reconnects_total``; gauges
``redis_pending``, ``kafka_queue_depth``, ``tracked_symbols``, ``window_symbols`` (symbols with window state).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from crypto_mesh.metrics import families, own_registry

if TYPE_CHECKING:
    from aggregator.app import _Service


class AggregatorCollector(Collector):
    """Reads a running aggregator's counters and live sizes at scrape time."""

    def __init__(self, service: _Service) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service
        trades = service.trades.counters
        frames = CounterMetricFamily(
            "aggregator_trade_frames", "Trade frames received, by outcome.", labels=["outcome"]
        )
        for outcome in ("parsed", "malformed", "unknown_event", "wrong_symbol"):
            frames.add_metric([outcome], getattr(trades, outcome))
        yield frames
        publisher, kafka, tickers = service.publisher, service.kafka, service.tickers.counters
        counters = (
            ("late_trades", "Trades dropped because their second was already closed.", trades.late),
            (
                "duplicate_trades",
                "Trades dropped because their id was already in the window.",
                trades.duplicates,
            ),
            ("trade_gaps", "Jumps of a symbol's trade / aggregate id beyond +1.", trades.gaps),
            ("trade_ids_missed", "Trade / aggregate ids skipped by those jumps.", trades.ids_missed),
            (
                "incomplete_seconds",
                "Seconds not published because a gap skipped some of their trades.",
                trades.incomplete,
            ),
            ("second_stats", "SecondStats closed.", trades.stats),
            ("redis_publishes", "SecondStats published to Redis.", publisher.published),
            (
                "redis_stale",
                "SecondStats refused by Redis as not newer than the stored price.",
                publisher.stale,
            ),
            (
                "redis_conflated",
                "Pending SecondStats replaced by a newer one of their symbol.",
                publisher.dropped,
            ),
            ("redis_publish_failures", "Redis publish rounds that failed.", publisher.failures),
            ("ticker_frames", "Mini-ticker frames received.", tickers.frames),
            ("ticker_malformed", "Mini-ticker frames or elements dropped as malformed.", tickers.malformed),
            ("kafka_sent", "Mini-ticker records acknowledged by Kafka.", kafka.sent),
            ("kafka_failed", "Mini-ticker record deliveries that failed.", kafka.failed),
            (
                "kafka_dropped",
                "Mini-ticker records dropped (oldest first) from the full buffer.",
                kafka.dropped,
            ),
            ("upstream_reconnects", "gRPC streams from socket_proxy called again.", service.feeds.reconnects),
        )
        gauges = (
            ("redis_pending", "SecondStats waiting to be published.", publisher.pending()),
            ("kafka_queue_depth", "Mini-ticker records waiting for the producer.", kafka.queue_depth),
            ("tracked_symbols", "Symbols streamed from socket_proxy.", len(service.feeds.tracked())),
            ("window_symbols", "Symbols with one-second window state.", len(service.trades.windows)),
        )
        yield from families("aggregator", counters, gauges)


def registry_for(service: _Service) -> CollectorRegistry:
    """A registry of its own with the service's collector and its publish latency histogram."""
    return own_registry(AggregatorCollector(service), service.publisher.latency)
