"""The replay exchange's REST side: ``GET /api/v3/exchangeInfo`` served from a snapshot file, the query of the
trade history routes (answered by :mod:`launcher.replay.history`), and Binance's request-weight limit kept as
Binance keeps it.

Formats and limits are the adapter's (:mod:`crypto_mesh.binance.rest`,
:mod:`crypto_mesh.binance.exchange_info`):

- ``GET /api/v3/exchangeInfo`` answers the body of ``REPLAY_EXCHANGE_INFO_FILE`` (default the shipped
  snapshot of 2021-10-12), gzipped when the client accepts it. The file is read again whenever it changes
  (another inode, size or modification time), so a test or an operator lists a new symbol or changes a
  status between two fetches by replacing the file (write another, then rename it over). Query parameters are
  ignored: the whole document is served.
- ``GET /api/v3/historicalTrades`` and ``GET /api/v3/aggTrades`` (weights 25 and 4) take ``symbol`` (a recorded
  one, any case), ``fromId`` (required here: Binance's default, the most recent trades, is not served) and
  ``limit`` (default 500, 1..1000). A bad or missing parameter is answered 400 with error -1100 / -1102, a
  symbol the recordings lack with -1121, as Binance does (errors.md).
- Every REST answer carries ``X-MBX-USED-WEIGHT-1M``, the weight spent in the current minute (all clients
  together: the replay serves one machine). A request that would pass ``REPLAY_REQUEST_WEIGHT_PER_MINUTE``
  (default Binance's 6,000) is answered 429 with ``Retry-After`` (s, until the minute ends) and error -1003,
  and costs nothing.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from crypto_mesh.binance import (
    MAX_TRADE_HISTORY_LIMIT,
    InvalidSymbol,
    normalize_symbol,
    parse_exchange_info_body,
    read_data_file,
)

#: Binance's answer to a request over the weight limit (errors.md, "-1003 TOO_MANY_REQUESTS").
TOO_MANY_REQUESTS = -1003
#: Binance's answer when it cannot process a request (errors.md, "-1000 UNKNOWN").
UNKNOWN = -1000
#: errors.md: "-1100 ILLEGAL_CHARS", "-1102 MANDATORY_PARAM_EMPTY_OR_MALFORMED", "-1121 BAD_SYMBOL".
ILLEGAL_CHARS = -1100
MANDATORY_PARAM_EMPTY_OR_MALFORMED = -1102
BAD_SYMBOL = -1121
#: ``limit`` of the trade history routes when the request has none ("Default 500").
DEFAULT_HISTORY_LIMIT = 500


class HistoryQueryError(ValueError):
    """A trade history query Binance would refuse: ``code`` and ``msg`` of its 400 answer."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def history_query(query: str, symbols: set[str]) -> tuple[str, int, int]:
    """``(symbol, fromId, limit)`` of a trade history query string, ``symbol`` lowercase and one of
    ``symbols``. Raises :class:`HistoryQueryError` (module doc) otherwise."""
    params = parse_qs(query, keep_blank_values=True)

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    raw_symbol = one("symbol")
    if not raw_symbol:
        raise HistoryQueryError(
            MANDATORY_PARAM_EMPTY_OR_MALFORMED,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        )
    try:
        symbol = normalize_symbol(raw_symbol)
    except InvalidSymbol:
        raise HistoryQueryError(BAD_SYMBOL, "Invalid symbol.") from None
    if symbol not in symbols:
        raise HistoryQueryError(BAD_SYMBOL, "Invalid symbol.")
    raw_from = one("fromId")
    if raw_from is None:
        raise HistoryQueryError(
            MANDATORY_PARAM_EMPTY_OR_MALFORMED,
            "Mandatory parameter 'fromId' was not sent, was empty/null, or malformed.",
        )
    raw_limit = one("limit")
    values = []
    for name, raw in (("fromId", raw_from), ("limit", raw_limit or str(DEFAULT_HISTORY_LIMIT))):
        if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
            raise HistoryQueryError(
                ILLEGAL_CHARS,
                f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,19}}$'.",
            )
        values.append(int(raw))
    from_id, limit = values
    if not 1 <= limit <= MAX_TRADE_HISTORY_LIMIT:
        raise HistoryQueryError(
            ILLEGAL_CHARS, f"Illegal value for parameter 'limit': 1..{MAX_TRADE_HISTORY_LIMIT}."
        )
    return symbol, from_id, limit


@dataclass(frozen=True, slots=True)
class Document:
    """One version of the exchangeInfo file: its JSON bytes, and the same gzipped (served with
    ``Content-Encoding: gzip``)."""

    body: bytes
    gzipped: bytes


class ExchangeInfoFile:
    """The exchangeInfo document of the file at ``path``, read again when the file changes.

    The constructor reads it once: ``OSError`` if it cannot be read, ``ValueError`` if it is not an
    exchangeInfo body (the replay does not start then). :meth:`current` raises the same when a changed file
    cannot be read or is no exchangeInfo body.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._version: tuple[int, int, int] | None = None
        self._document = Document(b"", b"")
        self.current()

    def current(self) -> Document:
        """The document as the file holds it now."""
        stat = self.path.stat()
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if version != self._version:
            raw = read_data_file(self.path)
            try:
                parse_exchange_info_body(raw)
            except ValueError as exc:
                raise ValueError(f"{self.path}: {exc}") from exc
            self._document = Document(raw, gzip.compress(raw, compresslevel=6))
            self._version = version
        return self._document


class RequestWeights:
    """Binance's ``REQUEST_WEIGHT`` limit: at most ``limit`` weight per calendar minute
    (``X-MBX-USED-WEIGHT-1M`` starts again from 0 each minute)."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._minute = -1
        self._used = 0

    def spend(self, weight: int, now_s: float) -> tuple[int, int | None]:
        """Spend ``weight`` at Unix time ``now_s`` (s): ``(weight used this minute, None)``, or, if that would
        pass the limit, ``(weight used this minute, seconds until the minute ends)`` and nothing is spent."""
        minute = int(now_s // 60)
        if minute != self._minute:
            self._minute, self._used = minute, 0
        if self._used + weight > self.limit:
            return self._used, max(1, math.ceil((minute + 1) * 60 - now_s))
        self._used += weight
        return self._used, None

    def refusal(self) -> dict[str, object]:
        """The body of the 429 (Binance's wording)."""
        return {
            "code": TOO_MANY_REQUESTS,
            "msg": f"Too much request weight used; current limit is {self.limit} request weight per 1 "
            "MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
        }
