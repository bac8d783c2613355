"""The client end of one websocket to the exchange, on picows (WebSocket frames parsed in C, one callback per
frame).

socket_proxy receives every frame of every stream it follows, so the websocket client's cost per message is
paid tens of thousands of times a second. The ``websockets`` library costs about 4.5 µs of CPU per received
message on this project's reference machine (its frame parser is a Python generator, and each message goes
through a queue and a future to ``recv()``), about as much as parsing and aggregating the trade it carries
(``benchmarks/bench_market_path.py``'s ceiling). picows hands each frame to a callback for about 0.5 µs
(``benchmarks/bench_upstream_ws.py`` prints both, measured in the same run).

What RFC 6455 asks of a client and picows leaves to its user is done here:

- a fragmented message (a TEXT or BINARY frame without FIN, then CONTINUATION frames) is joined before it is
  handed on, within the same size limit as one frame (CLOSE 1009 beyond it); a CONTINUATION without a message,
  or a new message inside a fragmented one, is a protocol error (CLOSE 1002);
- a CLOSE from the exchange is answered with its code, and the connection ended.

picows itself answers PINGs with PONGs, pings the exchange after ``ping_interval`` seconds without any
incoming data and ends the connection when no PONG comes within ``ping_timeout`` (Binance counts pings among
the 5 incoming messages per second it allows a connection: a busy connection is never pinged), and refuses
frames larger than ``max_message_bytes``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSProtocolError,
    WSTransport,
    ws_connect,
)

from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: Errors of a connection attempt worth another attempt later (beside OSError and TimeoutError): the exchange
#: answered the upgrade with another status, or with headers that are not a websocket upgrade.
HandshakeError = WSHandshakeError

#: Errors picows raises for a broken connection (protocol violations it detected).
WebSocketError = WSError

MessageHandler = Callable[[bytes], None]

#: How long :meth:`ExchangeSocket.close` waits for the exchange to answer its CLOSE before dropping the
#: connection (s).
CLOSE_TIMEOUT_S = 5.0

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE


@dataclass(frozen=True)
class CloseInfo:
    """How a websocket ended: ``code`` and ``reason`` of the CLOSE frame the exchange sent (RFC 6455 7.4; 1005
    when its CLOSE carried no code), or ``code`` None when the connection ended without one (the network, a
    missing PONG, or our own close)."""

    code: int | None
    reason: str

    @property
    def clean(self) -> bool:
        """Whether the exchange closed normally (1000, or 1001 "going away", as a server that restarts does)."""
        return self.code in (1000, 1001)


class _Listener(WSListener):
    """picows' callbacks of one connection: hands each whole message to :attr:`handler`."""

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        #: Messages received before a handler was set (:meth:`ExchangeSocket.deliver_to`) wait here.
        self.early: list[bytes] = []
        self.handler: MessageHandler = self.early.append
        self._parts: list[bytes] | None = None
        self._size = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == _TEXT or msg_type == _BINARY:
            if self._parts is not None:
                raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "a new message began inside a fragmented one")
            if frame.fin:
                self.handler(frame.get_payload_as_bytes())
            else:
                self._parts = [frame.get_payload_as_bytes()]
                self._size = frame.payload_size
        elif msg_type == _CONTINUATION:
            if self._parts is None:
                raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "a continuation frame outside a message")
            self._size += frame.payload_size
            if self._size > self._max:
                raise WSProtocolError(WSCloseCode.MESSAGE_TOO_BIG, f"a message over {self._max} bytes")
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                parts, self._parts = self._parts, None
                self.handler(b"".join(parts))
        elif msg_type == _CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class ExchangeSocket:
    """One open client websocket (:meth:`connect`). Incoming messages, text or binary, are handed as their
    bytes (a text message's UTF-8, never decoded) to the handler given to :meth:`deliver_to`, in order, from
    the transport's read callback: no queue and no task per message, so the handler must not block. A handler
    that raises ends the connection, and :meth:`wait_closed` raises its exception."""

    def __init__(self, transport: WSTransport, listener: _Listener) -> None:
        self._transport = transport
        self._listener = listener

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        open_timeout: float,
        ping_interval: float,
        ping_timeout: float,
        max_message_bytes: int,
    ) -> ExchangeSocket:
        """Open a websocket to ``url`` (``ws://`` or ``wss://``, the latter with the system's trusted CAs and
        host name checking). TimeoutError when it takes longer than ``open_timeout`` seconds, OSError when the
        TCP or TLS connection fails, :data:`HandshakeError` when the server refuses the upgrade."""
        ssl_context = ssl.create_default_context() if url.startswith("wss:") else None
        async with asyncio.timeout(open_timeout):
            transport, listener = await ws_connect(
                lambda: _Listener(max_message_bytes),
                url,
                ssl_context=ssl_context,
                websocket_handshake_timeout=open_timeout,
                enable_auto_ping=True,
                auto_ping_idle_timeout=ping_interval,
                auto_ping_reply_timeout=ping_timeout,
                max_frame_size=max_message_bytes,
                # uvloop's own transports (and the standard ssl module), not picows' optional aiofastnet.
                use_aiofastnet=False,
                logger_name="socket_proxy.upstream",
            )
        assert isinstance(listener, _Listener)
        return cls(transport, listener)

    def deliver_to(self, handler: MessageHandler) -> None:
        """Hand every message from now on to ``handler``, after the ones received before this call."""
        listener = self._listener
        early, listener.early = listener.early, []
        for message in early:
            handler(message)
        listener.handler = handler

    def send_text(self, text: str) -> None:
        """Send ``text`` as one TEXT message (queued in the transport; never blocks)."""
        self._transport.send(_TEXT, text.encode())

    async def wait_closed(self) -> CloseInfo:
        """Wait until the connection has ended; how it ended. Raises what the handler raised, or the protocol
        error (:data:`WebSocketError`) that made picows end it."""
        transport = self._transport
        await transport.wait_disconnected()
        handshake = transport.close_handshake
        received = handshake.recv if handshake is not None else None
        if received is None:
            return CloseInfo(code=None, reason="")
        return CloseInfo(code=int(received.code) or 1005, reason=received.reason or "")

    async def close(self) -> None:
        """The close handshake: send CLOSE 1000 and wait until the exchange answers it (the connection then
        ends) or ends the connection, at most :data:`CLOSE_TIMEOUT_S`; then drop it. Idempotent; never raises
        what ended the connection (that is :meth:`wait_closed`'s)."""
        transport = self._transport
        if not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await transport.wait_disconnected()
        except TimeoutError:
            transport.disconnect(graceful=False)
        except Exception as exc:  # noqa: BLE001 - what ended the connection is wait_closed's to report
            log.debug("upstream_closed_after_error", error=repr(exc))
