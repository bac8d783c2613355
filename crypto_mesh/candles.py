"""Candles (OHLCV bars) as the mesh serves them: the intervals, the most one request may ask for, and which
candles a request selects. Pure, no I/O.

Shared by the two ends of one contract (docs/CONTRACTS.md): the ETL's read API (``GET /v1/candles``,
``GET /v1/indicators``), which selects the candles in ClickHouse, and the BFF's public routes
(``GET /v1/instruments/{symbol}/candles``, ``.../indicators``), which check a request before calling the ETL
and select again after adding the live seconds.

A candle of an interval covers ``[open_time, open_time + interval)`` in exchange trade time, and its
``open_time`` (Unix ms) is a multiple of the interval counted from the Unix epoch, so that hours start at
:00 and days at 00:00 UTC. Its ``close_time`` is ``open_time + interval - 1`` ms, Binance's kline
convention (Binance spot API, "Kline/Candlestick data"). Only periods with trades have a candle: there is no
empty candle carrying the previous close, since the mesh stores only seconds with trades.

Which candles a request selects (:class:`CandleRange`): a window of at most ``limit`` consecutive periods
(1 to :data:`MAX_CANDLES`, default :data:`DEFAULT_LIMIT`) within the bounds ``start`` and ``end`` (Unix ms,
inclusive, each optional) of the candles' open times (``start <= open_time <= end``: a candle that opened
before ``start`` is not selected, as with Binance's ``startTime``):

- without ``start``, the ``limit`` periods ending with the newest candle within the bounds (the newest
  candles, or those up to ``end``: paging backwards);
- with ``start``, the ``limit`` periods beginning with the oldest candle within the bounds (paging
  forwards).

The window counts periods, not candles: periods without trades have no candle, so an answer may hold fewer
than ``limit``, and no query ever reads more than ``limit`` periods of data. Candles are answered oldest
first, newest last.

Refused (:class:`InvalidCandleQuery`, each with the ``code`` the HTTP answers carry): an interval other than
those of :data:`INTERVALS` (``invalid_interval``); a time outside years 1970 to 9999 or ``start`` after
``end`` (``invalid_range``); a ``limit`` below 1 (``invalid_limit``); and a ``limit`` over
:data:`MAX_CANDLES`, or a ``start``/``end`` range holding more than :data:`MAX_CANDLES` open times of the
interval (``too_many_points``, naming the maximum).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: Interval name → length in ms: a subset of Binance's kline intervals ("Kline/Candlestick data").
INTERVALS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "1d": 86_400_000,
}
#: The most candles one request may select (Binance's kline maximum), and the number when none is asked.
MAX_CANDLES = 1000
DEFAULT_LIMIT = 500
#: The last millisecond of year 9999 UTC: later times are refused, so that every time has an RFC 3339 form.
MAX_TIME_MS = 253_402_300_799_999


class InvalidCandleQuery(ValueError):
    """A request for candles that is refused; ``code`` is the snake_case word of the HTTP answer (422) and
    ``str(error)`` a sentence for the client."""

    code = "invalid"


class InvalidInterval(InvalidCandleQuery):
    code = "invalid_interval"


class InvalidRange(InvalidCandleQuery):
    code = "invalid_range"


class InvalidLimit(InvalidCandleQuery):
    code = "invalid_limit"


class TooManyCandles(InvalidCandleQuery):
    code = "too_many_points"


def interval_ms(name: str) -> int:
    """The length in ms of the interval ``name`` (``"5m"`` → 300000); :class:`InvalidInterval` otherwise."""
    length = INTERVALS.get(name)
    if length is None:
        raise InvalidInterval(f"interval must be one of {', '.join(INTERVALS)}")
    return length


def open_time(time_ms: int, interval: int) -> int:
    """The open time of the candle of ``interval`` ms that holds ``time_ms`` (both Unix ms)."""
    return time_ms - time_ms % interval


@dataclass(frozen=True, slots=True)
class CandleRange:
    """A checked selection of candles (see the module docstring); build it with :meth:`of`.

    ``interval``: the name (``"1m"``), ``interval_ms`` its length; ``start_ms``/``end_ms``: inclusive bounds
    of the open times (Unix ms) or ``None``; ``limit``: the most periods selected.
    """

    interval: str
    interval_ms: int
    start_ms: int | None
    end_ms: int | None
    limit: int

    @classmethod
    def of(
        cls, interval: str, start_ms: int | None = None, end_ms: int | None = None, limit: int | None = None
    ) -> CandleRange:
        """The selection of these request values; raises :class:`InvalidCandleQuery` (module docstring)."""
        length = interval_ms(interval)
        for name, value in (("start", start_ms), ("end", end_ms)):
            if value is not None and not 0 <= value <= MAX_TIME_MS:
                raise InvalidRange(f"{name} must be a time from 1970 to 9999 (UTC)")
        if start_ms is not None and end_ms is not None:
            if start_ms > end_ms:
                raise InvalidRange("start must not be after end")
            periods = open_time(end_ms, length) // length - _ceil_open_time(start_ms, length) // length + 1
            if periods > MAX_CANDLES:
                raise TooManyCandles(
                    f"from start to end there are {periods} candles of {interval}; at most {MAX_CANDLES} "
                    "per request: narrow the range or take a longer interval"
                )
        if limit is None:
            limit = DEFAULT_LIMIT
        if limit < 1:
            raise InvalidLimit(f"limit must be an integer from 1 to {MAX_CANDLES}")
        if limit > MAX_CANDLES:
            raise TooManyCandles(f"limit must be at most {MAX_CANDLES} candles per request")
        return cls(interval, length, start_ms, end_ms, limit)

    @property
    def latest(self) -> bool:
        """Whether the window ends with the newest candle (no ``start``), not begins with the oldest."""
        return self.start_ms is None

    @property
    def first_open_ms(self) -> int:
        """The earliest open time selectable: ``start`` rounded up to the interval (0 without ``start``)."""
        return 0 if self.start_ms is None else _ceil_open_time(self.start_ms, self.interval_ms)

    @property
    def stop_ms(self) -> int:
        """The end of the last selectable candle, exclusive: every trade time that belongs to a selectable
        candle is below it (past :data:`MAX_TIME_MS` without ``end``)."""
        last = open_time(MAX_TIME_MS if self.end_ms is None else self.end_ms, self.interval_ms)
        return last + self.interval_ms

    def holds(self, open_ms: int) -> bool:
        """Whether a candle opening at ``open_ms`` is within ``start``/``end``."""
        return self.first_open_ms <= open_ms < self.stop_ms

    def window(self, anchor_ms: int) -> tuple[int, int]:
        """The open times ``[from, to)`` this selection keeps, given ``anchor_ms``, the open time of the
        newest candle within the bounds (without ``start``) or of the oldest one (with ``start``)."""
        if self.latest:
            earliest = anchor_ms - (self.limit - 1) * self.interval_ms
            return max(self.first_open_ms, earliest), anchor_ms + self.interval_ms
        return anchor_ms, min(self.stop_ms, anchor_ms + self.limit * self.interval_ms)

    def select(self, candles: Sequence[T], open_ms: Callable[[T], int]) -> list[T]:
        """What this selection keeps of ``candles`` (sorted oldest first; ``open_ms(candle)`` is a candle's
        open time): those within the bounds, in the window anchored at the newest or the oldest of them."""
        inside = [candle for candle in candles if self.holds(open_ms(candle))]
        if not inside:
            return []
        low, high = self.window(open_ms(inside[-1] if self.latest else inside[0]))
        return [candle for candle in inside if low <= open_ms(candle) < high]


def _ceil_open_time(time_ms: int, interval: int) -> int:
    """The first open time of ``interval`` at or after ``time_ms``."""
    return -(-time_ms // interval) * interval
