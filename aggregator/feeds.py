"""gRPC client streams from socket_proxy (proto/socket.proto): one ``StreamTrades`` call per tracked symbol,
and one ``StreamMiniTickers`` call for the whole process.

Each stream is a task that reconnects for as long as it is wanted: when a call ends or fails (socket_proxy
restarted, ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED`` for a subscriber that fell behind) it is called again after
an exponential backoff with full jitter, reset once frames flow again. Untracking a symbol cancels its task,
which cancels the call, so socket_proxy can drop its upstream subscription.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from aggregator.intake import TickerIntake, TradeIntake, now_ms
from crypto_mesh.binance import AGG_TRADE
from crypto_mesh.grpc_tls import tls_channel
from crypto_mesh.logs import get_logger
from crypto_mesh.pki import SOCKET_PROXY, MeshTls
from crypto_mesh.proto import socket_pb2, socket_pb2_grpc
from crypto_mesh.retry import Backoff
from crypto_mesh.runtime import raise_if_cancelling

log = get_logger(__name__)

#: gRPC's own reconnect backoff (default: 1 s growing to 120 s) would hold streams back long after
#: socket_proxy is back; the streams' own backoff (:class:`crypto_mesh.retry.Backoff`) spaces the attempts.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


class Feeds:
    """The aggregator's upstream: a gRPC channel to ``target`` over mutual TLS with ``tls`` (the aggregator's
    identity; the server must prove the ``socket_proxy`` identity) and the stream tasks on it.

    ``trade_stream`` is ``"trade"`` or ``"aggTrade"`` (``TRADE_STREAM``). Trade frames go to
    ``trades.on_frames``, mini-ticker frames to ``tickers.on_frames``. :meth:`track` and :meth:`untrack` are
    idempotent and return at once.
    """

    def __init__(
        self, target: str, tls: MeshTls, trade_stream: str, trades: TradeIntake, tickers: TickerIntake
    ) -> None:
        self._channel = tls_channel(target, tls, SOCKET_PROXY, options=CHANNEL_OPTIONS)
        self._stub = socket_pb2_grpc.SocketProxyStub(self._channel)
        self._kind = (
            socket_pb2.TRADE_KIND_AGG_TRADE if trade_stream == AGG_TRADE else socket_pb2.TRADE_KIND_TRADE
        )
        self._trades = trades
        self._tickers = tickers
        self._streams: dict[str, asyncio.Task] = {}
        self._mini_tickers: asyncio.Task | None = None
        self.reconnects = 0

    def start(self) -> None:
        """Start the mini-ticker stream."""
        if self._mini_tickers is None:
            self._mini_tickers = asyncio.create_task(
                self._follow("!miniTicker@arr", self._open_mini_tickers, self._tickers.on_frames),
                name="stream:miniTicker",
            )

    def track(self, symbol: str) -> None:
        """Stream ``symbol``'s trades (``symbol`` already normalised)."""
        if symbol in self._streams:
            return
        request = socket_pb2.TradeStreamRequest(symbol=symbol, kind=self._kind)

        def on_frames(frames, received_ms: int) -> None:
            self._trades.on_frames(symbol, frames, received_ms)

        self._streams[symbol] = asyncio.create_task(
            self._follow(symbol, lambda: self._stub.StreamTrades(request), on_frames), name=f"stream:{symbol}"
        )
        log.info("symbol_tracked", symbol=symbol)

    async def untrack(self, symbol: str) -> None:
        """Stop streaming ``symbol`` and drop its window state (its open second is not published)."""
        task = self._streams.pop(symbol, None)
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._trades.forget(symbol)
        log.info("symbol_untracked", symbol=symbol)

    def tracked(self) -> list[str]:
        """Symbols being streamed, sorted."""
        return sorted(self._streams)

    def connected(self) -> bool:
        """True while the channel to socket_proxy is connected."""
        return self._channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        """Cancel every stream and close the channel."""
        tasks = list(self._streams.values())
        if self._mini_tickers is not None:
            tasks.append(self._mini_tickers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._streams.clear()
        self._mini_tickers = None
        await self._channel.close()

    def _open_mini_tickers(self):
        return self._stub.StreamMiniTickers(socket_pb2.MiniTickerStreamRequest())

    async def _follow(
        self,
        name: str,
        open_call: Callable[[], grpc.aio.UnaryStreamCall],
        on_frames: Callable[[list[bytes], int], None],
    ) -> None:
        """Call ``open_call()`` again and again, handing each message's frames to ``on_frames`` with their
        local arrival time (Unix ms); only cancellation ends it."""
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
            self.reconnects += 1
            await asyncio.sleep(backoff.next_delay())
