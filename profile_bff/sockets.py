"""One profile WebSocket as the fan-out writes to it: the frame encoding, the inline write, the socket's own
writer, its queue of alert messages, and the abort of a peer that stopped reading.

The rules (when to write inline, when a writer starts, what a slow socket holds) are
:class:`profile_bff.fanout.Delivery`'s; this module applies them to an aiohttp socket and its transport.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from struct import Struct

from aiohttp import WSMsgType, web

from crypto_mesh.logs import get_logger
from profile_bff.fanout import Delivery

log = get_logger(__name__)

#: Close code when the profile behind a socket is deleted (4000-4999: private use, RFC 6455 §7.4.2).
CLOSE_PROFILE_DELETED = 4404
#: Close code when the access token (or the one a ticket was issued for) expires during the connection: the
#: client refreshes its token and reconnects. 4401 mirrors HTTP 401 in the private-use range.
CLOSE_TOKEN_EXPIRED = 4401
_HEADER_7 = Struct("!BB").pack
_HEADER_16 = Struct("!BBH").pack
_HEADER_64 = Struct("!BBQ").pack
_TEXT = WSMsgType.TEXT


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one final, unmasked WebSocket text frame (RFC 6455 §5.2: a server's frames are not
    masked): ``0x81``, the payload length in 7, 7+16 or 7+64 bits, then the payload. Built once per user
    and written to each of its sockets, as aiohttp's writer would frame it."""
    length = len(payload)
    if length < 126:
        return _HEADER_7(0x81, length) + payload
    if length < 65536:
        return _HEADER_16(0x81, 126, length) + payload
    return _HEADER_64(0x81, 127, length) + payload


class Client:
    """One WebSocket connection: the socket, its :class:`~profile_bff.fanout.Delivery` state and, only while
    it is behind, a writer task.

    A profile reaches the socket in one of two ways:

    - inline, from the manager's fan-out (:meth:`write_now`): the user's frame, encoded once for all its
      sockets, is written into the transport at once when the socket can take it without waiting, so no
      task wakes up per socket;
    - through the writer: otherwise :meth:`mark_stale` only says the user's profile changed, and a writer
      task, started on demand and ended once the socket has caught up, renders the profile (``render()``:
      the latest state as UTF-8 JSON, or ``None`` once the user is gone) when the socket is free. So however
      many changes a slow socket misses, it costs one flag and gets the latest profile (conflation). A send
      that waits longer than ``send_timeout_s`` (seconds; the peer stopped reading and every buffer is full)
      aborts the connection through ``transport``.

    Nothing is sent before :meth:`start_writer` (the socket is prepared then); a snapshot marked before is
    sent by it.
    """

    __slots__ = (
        "_alert_ids",
        "_alert_sender",
        "_alerts",
        "_delivery",
        "_render",
        "_send_timeout_s",
        "_transport",
        "_writer",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        user_id: int,
        render: Callable[[], bytes | None],
        *,
        send_timeout_s: float = 10.0,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        self.user_id = user_id
        self._render = render
        self._send_timeout_s = send_timeout_s
        self._transport = transport
        self._delivery = Delivery()
        self._writer: asyncio.Task[None] | None = None
        #: Alert messages not sent yet, in order, and the ids of every alert queued on this socket: an alert
        #: reaches a socket once, however many times it is published or found unacknowledged.
        self._alerts: deque[bytes] = deque()
        self._alert_ids: set[str] = set()
        self._alert_sender: asyncio.Task[None] | None = None

    def send_alert(self, alert_id: str, message: bytes) -> bool:
        """Queue an alert message (UTF-8 JSON) unless alert ``alert_id`` was queued on this socket before;
        alerts are never conflated: each is sent, in order, by a sender task of their own once the socket is
        open. Returns whether it was queued."""
        if alert_id in self._alert_ids:
            return False
        self._alert_ids.add(alert_id)
        self._alerts.append(message)
        self._start_alert_sender()
        return True

    def _start_alert_sender(self) -> None:
        if self._alert_sender is None and self._alerts and self._delivery.is_open:
            self._alert_sender = asyncio.create_task(self._send_alerts(), name=f"ws-alerts-{self.user_id}")

    async def _send(self, message: bytes) -> bool:
        """Send one text message; False, and nothing more is sent, if the peer did not take it within the send
        timeout (the connection is aborted) or the socket is closing (the handler's disconnect() stops the
        tasks)."""
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await self.ws.send_frame(message, _TEXT)
        except TimeoutError:
            log.warning("slow_client_aborted", user_id=self.user_id, waited_s=self._send_timeout_s)
            self._delivery.closed()
            if self._transport is not None:
                self._transport.abort()
            return False
        except (ConnectionError, RuntimeError):
            self._delivery.closed()
            return False
        return True

    async def _send_alerts(self) -> None:
        try:
            while self._alerts and self._delivery.is_open:
                if not await self._send(self._alerts.popleft()):
                    return
        finally:
            if self._alert_sender is asyncio.current_task():
                self._alert_sender = None

    def mark_stale(self) -> None:
        """The profile changed: send the latest one when the socket is free; never blocks."""
        if self._delivery.changed():
            self._start_writer()

    def start_writer(self) -> None:
        """The socket is prepared: send what is pending (the snapshot), and from now on every change."""
        if self._delivery.opened():
            self._start_writer()
        self._start_alert_sender()

    def write_now(self, frame: bytes) -> bool:
        """Write ``frame`` (a whole encoded WebSocket frame, :func:`text_frame`) into the transport at once if
        :meth:`Delivery.may_write_inline <profile_bff.fanout.Delivery.may_write_inline>` allows it. Returns
        False, having written nothing, otherwise."""
        transport = self._transport
        if transport is None or not self._delivery.may_write_inline(
            len(frame), transport.get_write_buffer_size(), self.ws.closed or transport.is_closing()
        ):
            return False
        transport.write(frame)
        return True

    async def stop_writer(self) -> None:
        """Send nothing more and stop the writer task (a message not yet sent is dropped)."""
        self._delivery.closed()
        for task in (self._writer, self._alert_sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._alert_sender = None

    def _start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{self.user_id}")

    async def _write(self) -> None:
        delivery = self._delivery
        try:
            while delivery.next_send():
                message = self._render()
                if message is None or not await self._send(message):
                    return
        finally:
            delivery.writer_ended()
            if self._writer is asyncio.current_task():
                self._writer = None
