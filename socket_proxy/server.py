"""Transport of socket_proxy: the gRPC ``crypto.socket.v1.SocketProxy`` servicer (proto/socket.proto) and
``grpc.health.v1.Health``.

Each RPC is one subscriber of one upstream stream (:mod:`socket_proxy.fanout`): frames queued for it are sent
batched, up to ``max_batch`` per ``RawFrames``. Status codes: INVALID_ARGUMENT for a malformed symbol or an
unknown trade kind; RESOURCE_EXHAUSTED when the subscriber fell ``subscriber_queue_size`` frames behind (it
missed data and should resubscribe). ``HistoricalTrades`` answers the trades a subscriber missed from the exchange's
REST history (:mod:`socket_proxy.history`).
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from crypto_mesh.binance import (
    AGG_TRADE,
    MAX_TRADE_HISTORY_LIMIT,
    MINI_TICKER_ALL,
    TRADE,
    InvalidSymbol,
    RestUnavailable,
    normalize_symbol,
    trade_stream,
)
from crypto_mesh.grpc_tls import tls_server
from crypto_mesh.logs import get_logger
from crypto_mesh.metrics import serve_metrics_port
from crypto_mesh.observe import GrpcServerObserver
from crypto_mesh.pki import AGGREGATOR
from crypto_mesh.proto import socket_pb2, socket_pb2_grpc
from crypto_mesh.service import Lifecycle, Running, start_service
from socket_proxy.fanout import Counters, FanOut, SubscriberOverflow
from socket_proxy.history import BudgetSpent, TradeHistory
from socket_proxy.metrics import registry_for
from socket_proxy.service import ProxyService
from socket_proxy.settings import ProxySettings

log = get_logger(__name__)

SERVICE_NAME = socket_pb2.DESCRIPTOR.services_by_name["SocketProxy"].full_name
#: Mesh identities allowed to call ``crypto.socket.v1.SocketProxy``: the aggregator is its only client.
CALLERS = frozenset({AGGREGATOR})
TRADE_KINDS = {
    socket_pb2.TRADE_KIND_UNSPECIFIED: TRADE,
    socket_pb2.TRADE_KIND_TRADE: TRADE,
    socket_pb2.TRADE_KIND_AGG_TRADE: AGG_TRADE,
}
#: Seconds running RPCs get to finish when the server stops.
STOP_GRACE_S = 1.0
SERVER_OPTIONS = [
    # Find clients that vanished without closing, so their subscriptions are released.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]


class SocketProxyServicer(socket_pb2_grpc.SocketProxyServicer):
    """``StreamTrades`` and ``StreamMiniTickers`` over a :class:`FanOut`, ``HistoricalTrades`` over a
    :class:`TradeHistory`."""

    def __init__(
        self,
        fanout: FanOut,
        counters: Counters,
        max_batch: int,
        linger_s: float = 0.0,
        history: TradeHistory | None = None,
    ) -> None:
        self._history = history
        self._fanout = fanout
        self._counters = counters
        self._max_batch = max_batch
        self._linger_s = linger_s

    async def StreamTrades(
        self, request: socket_pb2.TradeStreamRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Every frame of ``<symbol>@trade`` (kind TRADE or UNSPECIFIED) or ``<symbol>@aggTrade`` from now on,
        as ``RawFrames`` batches. INVALID_ARGUMENT for a malformed symbol (``normalize_symbol``) or kind."""
        symbol, kind = await _symbol_and_kind(request, context)
        await self._stream(trade_stream(symbol, kind), context)

    async def StreamMiniTickers(
        self, request: socket_pb2.MiniTickerStreamRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Every frame of the all-market mini-ticker stream ``!miniTicker@arr`` from now on."""
        await self._stream(MINI_TICKER_ALL, context)

    async def HistoricalTrades(
        self, request: socket_pb2.HistoricalTradesRequest, context: grpc.aio.ServicerContext
    ) -> socket_pb2.RawFrames:
        """The trades of ``<symbol>@<kind>`` from ``from_id`` on, at most ``limit``, as that stream's frames
        (proto/socket.proto). INVALID_ARGUMENT for a malformed symbol, kind or limit; RESOURCE_EXHAUSTED when
        the weight budget refuses; UNAVAILABLE when the exchange gives no usable answer."""
        symbol, kind = await _symbol_and_kind(request, context)
        if not 1 <= request.limit <= MAX_TRADE_HISTORY_LIMIT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"limit must be 1..{MAX_TRADE_HISTORY_LIMIT}"
            )
        if self._history is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no trade history")
        try:
            frames = await self._history.frames(kind, symbol, request.from_id, request.limit)
        except BudgetSpent as exc:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry after {exc.retry_after_s:.0f} s"
            )
        except RestUnavailable as exc:
            log.warning("trade_history_failed", symbol=symbol, kind=kind, status=exc.status, error=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"trade history unavailable: {exc}")
        log.info(
            "trade_history_served", symbol=symbol, kind=kind, from_id=request.from_id, trades=len(frames)
        )
        return socket_pb2.RawFrames(data=frames)

    async def _stream(self, stream: str, context: grpc.aio.ServicerContext) -> None:
        subscriber = self._fanout.subscribe(stream)
        log.info("subscriber_joined", stream=stream, peer=context.peer())
        # One waiter on the subscriber's end for the whole call, not one per message (a quiet stream's
        # messages carry a frame each, so every per-message object counts).
        ended = asyncio.ensure_future(subscriber.wait_ended())
        try:
            while True:
                try:
                    batch = await subscriber.next_batch(self._max_batch)
                except SubscriberOverflow:
                    break
                if self._linger_s and len(batch) < self._max_batch:
                    # Each gRPC message costs far more than a frame: under load, waiting a moment for the
                    # frames behind the first turns thousands of one-frame messages into a few full ones.
                    await asyncio.sleep(self._linger_s)
                    batch.extend(subscriber.queued(self._max_batch - len(batch)))
                if not await self._write(ended, context, socket_pb2.RawFrames(data=batch)):
                    break
                self._counters.frames_out += len(batch)
                self._counters.messages_out += 1
        finally:
            ended.cancel()
            self._fanout.unsubscribe(subscriber)
            log.info("subscriber_left", stream=stream, overflowed=subscriber.overflowed)
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"subscriber fell more than its queue size behind on {stream} and missed frames; subscribe again",
        )

    @staticmethod
    async def _write(
        ended: asyncio.Future[None], context: grpc.aio.ServicerContext, message: socket_pb2.RawFrames
    ) -> bool:
        """Send ``message``; False if the subscriber was ended (``ended`` done: its
        :meth:`socket_proxy.fanout.Subscriber.wait_ended`) while the send waited on a client that does not read (the send is then
        abandoned)."""
        write = asyncio.ensure_future(context.write(message))
        try:
            await asyncio.wait((write, ended), return_when=asyncio.FIRST_COMPLETED)
            if write.done():
                write.result()
                return True
        finally:
            if not write.done():
                write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        return False


async def _symbol_and_kind(
    request: socket_pb2.TradeStreamRequest | socket_pb2.HistoricalTradesRequest,
    context: grpc.aio.ServicerContext,
) -> tuple[str, str]:
    """The normalised symbol and the trade stream kind (``"trade"``/``"aggTrade"``) of ``request``; ends the RPC
    with INVALID_ARGUMENT for a malformed symbol or an unknown kind."""
    try:
        symbol = normalize_symbol(request.symbol)
    except InvalidSymbol as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    kind = TRADE_KINDS.get(request.kind)
    if kind is None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown trade kind {request.kind}")
    return symbol, kind


async def start(settings: ProxySettings) -> Running[ProxyService]:
    """Serve the SocketProxy and Health services on ``settings.host:settings.port`` (0: a free port); the
    :class:`socket_proxy.service.ProxyService` is ``running.service``.

    The exchange is contacted only when a stream is first requested; an unreachable exchange is retried
    with backoff and never fails the start. With ``settings.metrics_port`` set, Prometheus metrics are served
    at ``GET /metrics`` on it to callers presenting the token of ``settings.metrics_token_file``
    (:mod:`socket_proxy.metrics`). The gRPC port speaks mutual TLS only
    (:func:`crypto_mesh.grpc_tls.tls_server`) with the ``settings.tls_*`` files; ``SocketProxy`` admits the
    :data:`CALLERS` identities only. Raises ``OSError``/``ValueError`` if the TLS files cannot be read or
    used, ``OSError`` if the metrics port cannot be bound, ``RuntimeError`` if the gRPC port cannot.
    ``stop()`` reports NOT_SERVING, ends the RPCs after a short grace, closes every upstream connection, then
    the metrics port.
    """

    async def build(lifecycle: Lifecycle) -> tuple[int, ProxyService]:
        tls = settings.mesh_tls()
        service = ProxyService(settings)
        lifecycle.on_stop(service.history.close)
        service.metrics_port = await serve_metrics_port(lifecycle, registry_for(service), settings.host, settings)
        lifecycle.on_stop(service.upstream.close)
        server, port = tls_server(
            tls,
            settings.host,
            settings.port,
            {SERVICE_NAME: CALLERS},
            options=SERVER_OPTIONS,
            interceptors=[GrpcServerObserver(service.grpc_metrics, access_log=settings.access_log)],
        )
        servicer = SocketProxyServicer(
            service.fanout,
            service.counters,
            settings.max_batch,
            settings.batch_linger_ms / 1000,
            service.history,
        )
        socket_pb2_grpc.add_SocketProxyServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await lifecycle.serve_grpc(server, health_servicer, (SERVICE_NAME,), grace_s=STOP_GRACE_S)
        log.info(
            "serving",
            host=settings.host,
            port=port,
            exchange=settings.exchange_url,
            metrics_port=service.metrics_port,
        )
        return port, service

    return await start_service("socket_proxy", build)
