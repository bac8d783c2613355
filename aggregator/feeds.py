"""gRPC client streams from socket_proxy (proto/socket.proto): one ``StreamTrades`` call per tracked symbol,
on the trade stream kind :class:`TradeStreams` gives it, and one ``StreamMiniTickers`` call for the whole
process while it is the replica that streams the mini-tickers (:mod:`aggregator.ownership`); and the
watchdog of the trade streams (:mod:`aggregator.watchdog`).

Each stream is a task that reconnects for as long as it is wanted: when a call ends or fails (socket_proxy
restarted, ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED`` for a subscriber that fell behind) it is called again after
an exponential backoff with full jitter, reset once frames flow again. The target may name several socket_proxy
replicas (``AGGREGATOR_SOCKET_PROXY_TARGET``): the channel balances calls over them round robin
(:data:`crypto_mesh.grpc_tls.ROUND_ROBIN`), so the streams of a lost replica are called again on the others and
the trades they missed meanwhile are fetched back like any other gap. Untracking a symbol cancels its task,
which cancels the call, so socket_proxy can drop its upstream subscription.

Skipped trades are fetched back with ``HistoricalTrades`` (:meth:`Feeds.backfill`, called by the intake): page
after page of at most 1,000, within ``backfill_timeout_s`` in all; whatever came by then is handed to
:meth:`aggregator.intake.TradeIntake.on_fill`, so a refused or late fill only leaves the seconds around the gap
marked incomplete.

Every tracked symbol's trade stream is watched from the moment it is tracked: one that carries no frame for
``AGGREGATOR_STALE_STREAM_S`` is logged as ``trade_stream_stale`` (warning) with its stream name, and as
``trade_stream_resumed`` once frames come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from aggregator.backfill import ResumePoint, next_page
from aggregator.intake import TickerIntake, TradeIntake, now_ms
from aggregator.watchdog import StreamWatchdog, check_interval_s
from crypto_mesh.binance import AGG_TRADE, MINI_TICKER_ALL, TRADE, trade_stream
from crypto_mesh.grpc_tls import ROUND_ROBIN, tls_channel
from crypto_mesh.observe import detached_task
from crypto_mesh.logs import get_logger
from crypto_mesh.pki import SOCKET_PROXY, MeshTls
from crypto_mesh.proto import socket_pb2, socket_pb2_grpc
from crypto_mesh.retry import Backoff, raise_if_cancelling

log = get_logger(__name__)

#: gRPC's own reconnect backoff (default: 1 s growing to 120 s) would hold streams back long after
#: socket_proxy is back; the streams' own backoff (:class:`crypto_mesh.retry.Backoff`) spaces the attempts.
#: Round robin over every socket_proxy replica the target names: the streams spread over them, and a stream
#: whose replica is lost is called again on one that is up.
CHANNEL_OPTIONS = [
    ROUND_ROBIN,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
]

#: The request's kind of each trade stream kind.
_REQUEST_KINDS = {TRADE: socket_pb2.TRADE_KIND_TRADE, AGG_TRADE: socket_pb2.TRADE_KIND_AGG_TRADE}


@dataclass(frozen=True)
class TradeStreams:
    """Which trade stream each symbol is followed on: its kind in ``by_symbol`` (normalised symbol →
    ``"trade"`` or ``"aggTrade"``, ``TRADE_STREAM_BY_SYMBOL``), else ``default`` (``TRADE_STREAM``)."""

    default: str = TRADE
    by_symbol: Mapping[str, str] = field(default_factory=dict)

    def kind(self, symbol: str) -> str:
        """``"trade"`` or ``"aggTrade"`` for ``symbol`` (normalised)."""
        return self.by_symbol.get(symbol, self.default)


class Feeds:
    """The aggregator's upstream: a gRPC channel to ``target`` over mutual TLS with ``tls`` (the aggregator's
    identity; the server must prove the ``socket_proxy`` identity) and the stream tasks on it.

    ``streams`` says which trade stream each symbol is followed on. Trade frames go to ``trades.on_frames``,
    mini-ticker frames to ``tickers.on_frames``; ``watchdog`` watches the trade streams (checked by a task
    :meth:`start` starts). :meth:`track` and :meth:`untrack` are idempotent and return at once.
    """

    def __init__(
        self,
        target: str,
        tls: MeshTls,
        streams: TradeStreams,
        trades: TradeIntake,
        tickers: TickerIntake,
        watchdog: StreamWatchdog,
        backfill_timeout_s: float = 2.0,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._backfill_timeout_s = backfill_timeout_s
        self._fills: set[asyncio.Task] = set()
        self._channel = tls_channel(target, tls, SOCKET_PROXY, options=CHANNEL_OPTIONS, interceptors=interceptors)
        self._stub = socket_pb2_grpc.SocketProxyStub(self._channel)
        self._kinds = streams
        self._trades = trades
        self._tickers = tickers
        self.watchdog = watchdog
        #: Tracked symbol → (its stream name, the task following it).
        self._streams: dict[str, tuple[str, asyncio.Task]] = {}
        self._background: list[asyncio.Task] = []
        self._mini_tickers: asyncio.Task | None = None
        self.reconnects = 0

    def start(self) -> None:
        """Start the trade streams' watchdog."""
        if not self._background:
            self._background = [asyncio.create_task(self._watch(), name="stream-watchdog")]

    def stream_mini_tickers(self, wanted: bool) -> None:
        """Start (``wanted``) or stop the all-market mini-ticker stream (idempotent): one replica of the
        aggregator streams it (:mod:`aggregator.ownership`)."""
        if wanted and self._mini_tickers is None:
            self._mini_tickers = asyncio.create_task(
                self._follow(MINI_TICKER_ALL, self._open_mini_tickers, self._tickers.on_frames),
                name="stream:miniTicker",
            )
            log.info("mini_tickers_streamed")
        elif not wanted and self._mini_tickers is not None:
            self._mini_tickers.cancel()
            self._mini_tickers = None
            log.info("mini_tickers_released")

    @property
    def streaming_mini_tickers(self) -> bool:
        """Whether this replica streams the mini-tickers."""
        return self._mini_tickers is not None

    def track(
        self, symbol: str, skip_first_window: bool = False, resume_after: ResumePoint | None = None
    ) -> None:
        """Stream ``symbol``'s trades (``symbol`` already normalised) on its kind of trade stream;
        ``skip_first_window``: the symbol is taken over from another replica, its first window is not published
        (:meth:`aggregator.intake.TradeIntake.skip_first_window`); ``resume_after``: the last second published
        for it, which the stream continues from if it can
        (:meth:`aggregator.intake.TradeIntake.resume_after`)."""
        if symbol in self._streams:
            return
        if resume_after is not None:
            self._trades.resume_after(symbol, resume_after)
        elif skip_first_window:
            self._trades.skip_first_window(symbol)
        kind = self._kinds.kind(symbol)
        stream = trade_stream(symbol, kind)
        request = socket_pb2.TradeStreamRequest(symbol=symbol, kind=_REQUEST_KINDS[kind])
        watchdog = self.watchdog
        watchdog.watch(stream, now_ms())

        def on_frames(frames, received_ms: int) -> None:
            watchdog.frame(stream, received_ms)
            self._trades.on_frames(symbol, frames, received_ms)

        # Started by a follower's request, it serves every follower: none of their request ids or traces.
        task = detached_task(
            self._follow(
                stream,
                lambda: self._stub.StreamTrades(request),
                on_frames,
                on_end=lambda: self._trades.interrupt(symbol),
            ),
            name=f"stream:{stream}",
        )
        self._streams[symbol] = (stream, task)
        log.info("symbol_tracked", symbol=symbol, stream=stream)

    async def untrack(self, symbol: str) -> None:
        """Stop streaming ``symbol`` and drop its window state (its open second is not published)."""
        tracked = self._streams.pop(symbol, None)
        if tracked is None:
            return
        stream, task = tracked
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self.watchdog.unwatch(stream)
        self._trades.forget(symbol)
        log.info("symbol_untracked", symbol=symbol, stream=stream)

    def backfill(self, symbol: str, first_id: int, wanted_id: int) -> None:
        """Fetch ``symbol``'s trades with ids ``first_id``..``wanted_id`` from socket_proxy's
        ``HistoricalTrades`` in the background, then hand them to ``trades.on_fill`` (also the part fetched
        when the time is up or a request failed). Returns at once."""
        task = asyncio.create_task(self._fill(symbol, first_id, wanted_id), name=f"backfill:{symbol}")
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fill(self, symbol: str, first_id: int, wanted_id: int) -> None:
        kind = _REQUEST_KINDS[self._kinds.kind(symbol)]
        frames: list[bytes] = []
        from_id = first_id
        try:
            async with asyncio.timeout(self._backfill_timeout_s):
                while limit := next_page(from_id, wanted_id):
                    request = socket_pb2.HistoricalTradesRequest(
                        symbol=symbol, kind=kind, from_id=from_id, limit=limit
                    )
                    page = list((await self._stub.HistoricalTrades(request)).data)
                    if not page:
                        break
                    frames += page
                    # Pages come in id order and never skip: the next one starts after this one's count.
                    from_id += len(page)
        except TimeoutError:
            log.warning("backfill_late", symbol=symbol, first_id=first_id, fetched=len(frames))
        except grpc.aio.AioRpcError as exc:
            raise_if_cancelling()
            log.warning(
                "backfill_failed",
                symbol=symbol,
                first_id=first_id,
                code=exc.code().name,
                details=exc.details(),
            )
        if symbol in self._streams:
            self._trades.on_fill(symbol, first_id, frames)

    def tracked(self) -> list[str]:
        """Symbols being streamed, sorted."""
        return sorted(self._streams)

    def connected(self) -> bool:
        """True while the channel to socket_proxy is connected."""
        return self._channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        """Cancel every stream and the watchdog, and close the channel."""
        tasks = [task for _stream, task in self._streams.values()] + self._background + list(self._fills)
        if self._mini_tickers is not None:
            tasks.append(self._mini_tickers)
            self._mini_tickers = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream, _task in self._streams.values():
            self.watchdog.unwatch(stream)
        self._streams.clear()
        self._background = []
        await self._channel.close()

    async def _watch(self) -> None:
        """Check the trade streams' silence forever (cancel to stop), logging each change."""
        watchdog = self.watchdog
        while True:
            await asyncio.sleep(check_interval_s(watchdog.stale_after_ms))
            went_stale, resumed = watchdog.check(now_ms())
            for silence in went_stale:
                log.warning("trade_stream_stale", stream=silence.stream, silent_s=silence.silent_ms / 1000)
            for silence in resumed:
                log.info("trade_stream_resumed", stream=silence.stream, silent_s=silence.silent_ms / 1000)

    def _open_mini_tickers(self):
        return self._stub.StreamMiniTickers(socket_pb2.MiniTickerStreamRequest())

    async def _follow(
        self,
        name: str,
        open_call: Callable[[], grpc.aio.UnaryStreamCall],
        on_frames: Callable[[list[bytes], int], None],
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """Call ``open_call()`` again and again, handing each message's frames to ``on_frames`` with their
        local arrival time (Unix ms), and calling ``on_end()`` each time a call ends or fails (frames may be
        lost until the next call); only cancellation ends it."""
        backoff = Backoff(base_s=0.1, max_s=10.0)
        while True:
            raise_if_cancelling()  # a cancellation a library swallowed still ends the loop
            call = open_call()
            try:
                async for message in call:
                    backoff.reset()
                    on_frames(message.data, now_ms())
                log.warning("stream_ended", stream=name)
            except grpc.aio.AioRpcError as exc:
                raise_if_cancelling()
                log.warning("stream_failed", stream=name, code=exc.code().name, details=exc.details())
            finally:
                # Also on cancellation: socket_proxy must see the subscriber go.
                call.cancel()
            if on_end is not None:
                on_end()
            self.reconnects += 1
            await asyncio.sleep(backoff.next_delay())
