"""The parts of a running socket_proxy, apart from gRPC: :class:`ProxyService`.

:func:`socket_proxy.server.start` opens and closes them (:mod:`crypto_mesh.service`); the servicer only
translates RPCs to subscriptions of the fan-out.
"""

from __future__ import annotations

from crypto_mesh.gaps import GapDetector
from crypto_mesh.observe import GrpcMetrics
from socket_proxy.fanout import Counters, FanOut
from socket_proxy.history import TradeHistory
from socket_proxy.settings import ProxySettings
from socket_proxy.upstream import Upstream


class ProxyService:
    """A running socket_proxy: the live totals (:attr:`counters`), the subscribers per stream
    (:attr:`fanout`), the exchange connections (:attr:`upstream`), the trade id gap detector of the
    subscribed trade streams (:attr:`gaps`), the exchange's REST trade history for subscribers that missed trades
    (:attr:`history`; build it inside the event loop), the RED series of its RPCs (:attr:`grpc_metrics`) and the
    bound metrics port (:attr:`metrics_port`, None when metrics are off).

    The first subscriber of a stream subscribes it upstream, the last one leaving releases it. Building it
    opens nothing: the exchange is contacted when a stream is first subscribed.
    """

    def __init__(self, settings: ProxySettings) -> None:
        self.counters = Counters()
        self.gaps = GapDetector()
        self.upstream = Upstream(settings.exchange_url, self._on_frame, self.counters)
        self.fanout = FanOut(settings.subscriber_queue_size, self.upstream.add, self._on_last, self.counters)
        self.history = TradeHistory(settings.exchange_rest_url(), settings.rest_weight_per_minute)
        self.grpc_metrics = GrpcMetrics("socket_proxy", "server")
        self.metrics_port: int | None = None

    def _on_frame(self, stream: str, raw: bytes) -> None:
        self.counters.frames_in += 1
        # Only subscribed streams keep gap state: a released stream's frames in flight must not revive it, nor
        # the frame on which its last subscriber overflowed (that loss is the subscriber's, not the upstream's).
        if self.fanout.publish(stream, raw) and self.fanout.subscribed(stream):
            self.gaps.observe(stream, raw)

    def _on_last(self, stream: str) -> None:
        self.upstream.remove(stream)
        self.gaps.forget(stream)
