"""Trade history for subscribers that missed trades: the exchange's REST history within a request-weight budget.

A subscriber ended as overflowing (RESOURCE_EXHAUSTED) loses the frames of its stream until it subscribes again;
it asks for them by id (``HistoricalTrades``, proto/socket.proto) and socket_proxy, the mesh's one client of
the exchange, fetches them from Binance spot REST (``GET /api/v3/historicalTrades`` / ``GET /api/v3/aggTrades``,
:mod:`crypto_mesh.binance.rest`) and answers them as the stream's frames (:mod:`crypto_mesh.binance.history`).

Budget: Binance allows an IP 6,000 request weight a minute, shared by everything the mesh asks from that IP (the
BFF's exchangeInfo refresh too), answers 429 beyond it and bans an IP that goes on (418). So the proxy spends at
most ``PROXY_REST_WEIGHT_PER_MINUTE`` (default 3,000, half) per calendar minute, as Binance counts it, on trade
history, refuses a request that would pass it before sending it, and after a 429 or 418 sends nothing until the
``Retry-After`` it was given has passed (:class:`WeightBudget`, pure).
"""

from __future__ import annotations

import math
import time

from crypto_mesh.binance import TRADE_HISTORY_ROUTES, BinanceRest, RestUnavailable, history_frames
from crypto_mesh.binance.frames import MalformedFrame
from crypto_mesh.binance.rest import IP_BANNED, RATE_LIMITED
from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: Waited after a 429 / 418 without ``Retry-After`` (s): Binance always sends one, this is the fallback.
DEFAULT_RETRY_AFTER_S = 60.0


class BudgetSpent(Exception):
    """A history request refused before it was sent: the weight budget of the minute is spent, or the exchange
    asked to wait. ``retry_after_s``: when a request may be tried again (s)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WeightBudget:
    """At most ``limit`` request weight per calendar minute (Binance's ``X-MBX-USED-WEIGHT-1M`` count), and
    nothing while the exchange asked to wait. Pure: times are passed in (Unix s)."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._minute = -1
        self.used = 0
        self._blocked_until_s = 0.0

    def spend(self, weight: int, now_s: float) -> None:
        """Spend ``weight`` at ``now_s``; raises :class:`BudgetSpent` (and spends nothing) if the exchange asked
        to wait until after ``now_s`` or the minute's budget cannot hold ``weight``."""
        if now_s < self._blocked_until_s:
            raise BudgetSpent("the exchange asked to wait", self._blocked_until_s - now_s)
        minute = int(now_s // 60)
        if minute != self._minute:
            self._minute, self.used = minute, 0
        if self.used + weight > self.limit:
            raise BudgetSpent(
                f"request weight budget of {self.limit} a minute spent", math.ceil((minute + 1) * 60 - now_s)
            )
        self.used += weight

    def wait(self, retry_after_s: float | None, now_s: float) -> None:
        """The exchange refused with 429 or 418 at ``now_s``: send nothing for ``retry_after_s`` seconds
        (:data:`DEFAULT_RETRY_AFTER_S` if it gave none)."""
        delay = DEFAULT_RETRY_AFTER_S if retry_after_s is None else retry_after_s
        self._blocked_until_s = max(self._blocked_until_s, now_s + delay)


class TradeHistory:
    """Trade history from the exchange's REST at ``rest_url`` (``https://api.binance.com``, or the replay
    exchange's ``http://host:port``) within ``WeightBudget(weight_per_minute)``. Create inside a running event
    loop; ``close()`` it. ``requests``, ``refused`` (by the budget), ``failed`` (no usable answer) and
    ``trades`` (answered) count since start."""

    def __init__(self, rest_url: str, weight_per_minute: int, timeout_s: float = 10.0) -> None:
        self.rest_url = rest_url
        self.budget = WeightBudget(weight_per_minute)
        self._rest = BinanceRest(rest_url, timeout_s=timeout_s)
        self.requests = 0
        self.refused = 0
        self.failed = 0
        self.trades = 0

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._rest.close()

    async def frames(self, kind: str, symbol: str, from_id: int, limit: int) -> list[bytes]:
        """The trades of ``symbol``'s ``kind`` stream (``"trade"``/``"aggTrade"``) from id ``from_id`` on, at
        most ``limit`` (1..1000), as that stream's combined-stream frames in id order. Raises
        :class:`BudgetSpent` when the budget refuses, :class:`RestUnavailable` when the exchange gives no usable
        answer (also a body that is not trade history), ValueError for bad arguments."""
        weight = TRADE_HISTORY_ROUTES[kind][1]
        try:
            self.budget.spend(weight, time.time())
        except BudgetSpent:
            self.refused += 1
            raise
        self.requests += 1
        try:
            body = await self._rest.trade_history(kind, symbol, from_id, limit)
            frames = history_frames(kind, symbol, body)
        except RestUnavailable as exc:
            self.failed += 1
            if exc.status in (RATE_LIMITED, IP_BANNED):
                self.budget.wait(exc.retry_after_s, time.time())
                log.warning("trade_history_rate_limited", status=exc.status, retry_after_s=exc.retry_after_s)
            raise
        except MalformedFrame as exc:
            self.failed += 1
            raise RestUnavailable(f"trade history of {symbol}: {exc}", 200) from exc
        self.trades += len(frames)
        return frames
