"""Prometheus metrics of socket_proxy, served over HTTP at ``GET /metrics`` on ``PROXY_METRICS_PORT``.

The hot path only increments plain integers (:class:`socket_proxy.fanout.Counters`, the gap detector);
:data:`METRICS` declares how each series reads them when scraped (:mod:`crypto_mesh.metrics`), so metrics cost
nothing per frame. Each running proxy has its own ``CollectorRegistry``, so several proxies can run in one
process (tests, benchmarks).

Series (prefix ``socket_proxy_``): ``frames_in_total`` (frames received upstream), ``frames_out_total`` (frames
handed to subscribers' RPCs) in ``messages_out_total`` gRPC messages,
``subscriber_overflows_total{policy="end_subscriber"}`` (subscribers ended because their bounded queue was
full: the only overflow policy, see :mod:`socket_proxy.fanout`),
``upstream_reconnects_total``, ``upstream_connect_attempts_total``, ``upstream_connect_failures_total``,
``upstream_rotations_total`` (planned replacements before the 24 h cut), ``trade_gaps_total`` (id jumps) and
``trade_ids_missed_total`` (Σ of their sizes), ``trade_history_requests_total{result="answered"|"refused"|"failed"}``
(``HistoricalTrades`` REST requests: answered, refused by the weight budget before being sent, failed at the
exchange), ``trade_history_trades_total`` (trades they answered) and the gauge ``trade_history_weight_used``
(request weight spent in the current minute); gauges ``upstream_connections``, ``streams``, ``subscribers``,
``subscriber_queue_depth_max`` and ``subscriber_queued_frames`` (frames waiting in all subscriber queues).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crypto_mesh.metrics import Declared, counter, gauge, metrics_registry
from socket_proxy.service import ProxyService

OVERFLOW_POLICY = "end_subscriber"

METRICS: tuple[Declared[ProxyService], ...] = (
    counter("frames_in", "Frames received from the exchange.", lambda proxy: proxy.counters.frames_in),
    counter("frames_out", "Frames handed to subscribers' RPCs.", lambda proxy: proxy.counters.frames_out),
    counter(
        "messages_out",
        "RawFrames messages sent to subscribers (frames_out / this = mean batch).",
        lambda proxy: proxy.counters.messages_out,
    ),
    counter(
        "subscriber_overflows",
        "Subscribers ended because their bounded queue was full, by overflow policy.",
        lambda proxy: {(OVERFLOW_POLICY,): proxy.counters.drops},
        labels=("policy",),
    ),
    counter(
        "upstream_reconnects",
        "Upstream websockets reconnected after a loss.",
        lambda proxy: proxy.counters.reconnects,
    ),
    counter(
        "upstream_connect_attempts",
        "Upstream connection attempts.",
        lambda proxy: proxy.counters.connect_attempts,
    ),
    counter(
        "upstream_connect_failures",
        "Upstream connection attempts that failed.",
        lambda proxy: proxy.counters.connect_failures,
    ),
    counter(
        "upstream_rotations",
        "Upstream websockets replaced before the 24 h limit.",
        lambda proxy: proxy.counters.rotations,
    ),
    counter(
        "trade_gaps",
        "Jumps of a trade stream's trade / aggregate id beyond +1.",
        lambda proxy: proxy.gaps.gaps,
    ),
    counter(
        "trade_ids_missed", "Trade / aggregate ids skipped by those jumps.", lambda proxy: proxy.gaps.missed
    ),
    counter(
        "trade_history_requests",
        "HistoricalTrades requests to the exchange's REST history, by result.",
        lambda proxy: {
            ("answered",): proxy.history.requests - proxy.history.failed,
            ("refused",): proxy.history.refused,
            ("failed",): proxy.history.failed,
        },
        labels=("result",),
    ),
    counter(
        "trade_history_trades", "Trades answered from the REST history.", lambda proxy: proxy.history.trades
    ),
    gauge(
        "trade_history_weight_used",
        "REST request weight spent on trade history in the current minute.",
        lambda proxy: proxy.history.budget.used,
    ),
    gauge("upstream_connections", "Open upstream connections.", lambda proxy: proxy.upstream.connections),
    gauge(
        "streams", "Upstream streams with at least one subscriber.", lambda proxy: len(proxy.fanout.streams)
    ),
    gauge("subscribers", "gRPC subscribers.", lambda proxy: len(proxy.fanout.queue_depths())),
    gauge(
        "subscriber_queue_depth_max",
        "Deepest subscriber queue (frames).",
        lambda proxy: max(proxy.fanout.queue_depths(), default=0),
    ),
    gauge(
        "subscriber_queued_frames",
        "Frames waiting in all subscriber queues.",
        lambda proxy: sum(proxy.fanout.queue_depths()),
    ),
)


def registry_for(proxy: ProxyService) -> CollectorRegistry:
    """A registry of its own with the series of :data:`METRICS` and the RED series of the RPCs
    (``socket_proxy_grpc_server_*``, :mod:`crypto_mesh.observe`)."""
    return metrics_registry("socket_proxy", METRICS, proxy, proxy.grpc_metrics)
