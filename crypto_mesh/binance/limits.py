"""The documented limits of Binance spot market-data websockets.

Source: Binance spot API documentation, "WebSocket Streams for Binance"
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams), sections "General WSS
information" and "WebSocket Limits". Binance enforces them by closing the connection (and may ban an IP that
is disconnected repeatedly): socket_proxy keeps within them, and the replay exchange enforces them as Binance
does.
"""

from __future__ import annotations

from collections import deque

#: "A single connection can listen to a maximum of 1024 streams."
MAX_STREAMS_PER_CONNECTION = 1024
#: "WebSocket connections have a limit of 5 incoming messages per second. A message is considered: a PING
#: frame, a PONG frame, a JSON controlled message (e.g. subscribe, unsubscribe)."
MAX_INCOMING_MESSAGES_PER_SECOND = 5
#: "There is a limit of 300 connections per attempt every 5 minutes per IP."
MAX_CONNECT_ATTEMPTS = 300
CONNECT_ATTEMPTS_WINDOW_S = 300.0
#: "A single connection to stream.binance.com is only valid for 24 hours; expect to be disconnected at the
#: 24 hour mark." (s)
MAX_CONNECTION_AGE_S = 24 * 3600
#: "The WebSocket server will send a ping frame every 20 seconds." (s)
SERVER_PING_INTERVAL_S = 20
#: "If the WebSocket server does not receive a pong frame back from the connection within a minute the
#: connection will be disconnected." (s)
PONG_TIMEOUT_S = 60


class IncomingMessageWindow:
    """The exchange's side of :data:`MAX_INCOMING_MESSAGES_PER_SECOND`: Binance counts the messages of one
    connection as they arrive, and a connection whose sixth message arrives within one second of the first of
    the six is closed. The replay exchange enforces it with this rule."""

    def __init__(self, limit: int = MAX_INCOMING_MESSAGES_PER_SECOND, window_s: float = 1.0) -> None:
        self._limit = limit
        self._window_s = window_s
        self._recent: deque[float] = deque(maxlen=limit)

    def admit(self, arrived_at: float) -> bool:
        """Count a message arrived at ``arrived_at`` (monotonic seconds, non-decreasing); False (the message is
        not counted, and Binance closes the connection) if it is the sixth within one second."""
        if len(self._recent) == self._limit and arrived_at - self._recent[0] < self._window_s:
            return False
        self._recent.append(arrived_at)
        return True
