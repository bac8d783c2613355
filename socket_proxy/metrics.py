"""Prometheus metrics of socket_proxy, served over HTTP at ``GET /metrics`` on ``PROXY_METRICS_PORT``.

The hot path only increments plain integers (:class:`socket_proxy.fanout.Counters`, the gap detector); this
collector reads them when scraped, so metrics cost nothing per frame. Each running proxy has its own
``CollectorRegistry``, so several proxies can run in one process (tests, benchmarks).

Series (prefix ``socket_proxy_``): ``frames_in_total`` (frames received upstream), ``frames_out_total`` (frames
handed to subscribers' RPCs) in ``messages_out_total`` gRPC messages, ``subscriber_overflows_total{policy="end_subscriber"}`` (subscribers ended because
their bounded queue was full: the only overflow policy, see :mod:`socket_proxy.fanout`),
``upstream_reconnects_total``, ``upstream_connect_attempts_total``, ``upstream_connect_failures_total``,
``upstream_rotations_total`` (planned replacements before the 24 h cut), ``trade_gaps_total`` (id jumps) and
``trade_ids_missed_total`` (Σ of their sizes); gauges ``upstream_connections``, ``streams``, ``subscribers``,
``subscriber_queue_depth_max`` and ``subscriber_queued_frames`` (frames waiting in all subscriber queues).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from crypto_mesh.gaps import GapDetector
from crypto_mesh.metrics import families
from socket_proxy.fanout import Counters, FanOut
from socket_proxy.upstream import Upstream

OVERFLOW_POLICY = "end_subscriber"


class ProxyCollector(Collector):
    """Reads a running proxy's counters and live sizes at scrape time."""

    def __init__(self, counters: Counters, fanout: FanOut, upstream: Upstream, gaps: GapDetector) -> None:
        self._counters = counters
        self._fanout = fanout
        self._upstream = upstream
        self._gaps = gaps

    def collect(self) -> Iterator[Metric]:
        c = self._counters
        counters = (
            ("frames_in", "Frames received from the exchange.", c.frames_in),
            ("frames_out", "Frames handed to subscribers' RPCs.", c.frames_out),
            (
                "messages_out",
                "RawFrames messages sent to subscribers (frames_out / this = mean batch).",
                c.messages_out,
            ),
            ("upstream_reconnects", "Upstream websockets reconnected after a loss.", c.reconnects),
            ("upstream_connect_attempts", "Upstream connection attempts.", c.connect_attempts),
            ("upstream_connect_failures", "Upstream connection attempts that failed.", c.connect_failures),
            ("upstream_rotations", "Upstream websockets replaced before the 24 h limit.", c.rotations),
            ("trade_gaps", "Jumps of a trade stream's trade / aggregate id beyond +1.", self._gaps.gaps),
            ("trade_ids_missed", "Trade / aggregate ids skipped by those jumps.", self._gaps.missed),
        )
        overflows = CounterMetricFamily(
            "socket_proxy_subscriber_overflows",
            "Subscribers ended because their bounded queue was full, by overflow policy.",
            labels=["policy"],
        )
        overflows.add_metric([OVERFLOW_POLICY], c.drops)
        yield overflows
        depths = self._fanout.queue_depths()
        gauges = (
            ("upstream_connections", "Open upstream connections.", self._upstream.connections),
            ("streams", "Upstream streams with at least one subscriber.", len(self._fanout.streams)),
            ("subscribers", "gRPC subscribers.", len(depths)),
            ("subscriber_queue_depth_max", "Deepest subscriber queue (frames).", max(depths, default=0)),
            ("subscriber_queued_frames", "Frames waiting in all subscriber queues.", sum(depths)),
        )
        yield from families("socket_proxy", counters, gauges)


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``GET /metrics`` (Prometheus text format 0.0.4) on ``host:port``; returns the runner and the bound
    port. Raises ``OSError`` if the port cannot be bound."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]
