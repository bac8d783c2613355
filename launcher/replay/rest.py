"""The replay exchange's REST side: ``GET /api/v3/exchangeInfo`` served from a snapshot file, and Binance's
request-weight limit kept as Binance keeps it.

Formats and limits are the adapter's (:mod:`crypto_mesh.binance.rest`,
:mod:`crypto_mesh.binance.exchange_info`):

- ``GET /api/v3/exchangeInfo`` answers the body of ``REPLAY_EXCHANGE_INFO_FILE`` (default the shipped
  snapshot of 2021-10-12), gzipped when the client accepts it. The file is read again whenever it changes
  (another inode, size or modification time), so a test or an operator lists a new symbol or changes a
  status between two fetches by replacing the file (write another, then rename it over). Query parameters are
  ignored: the whole document is served.
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

from crypto_mesh.binance import parse_exchange_info_body, read_data_file

#: Binance's answer to a request over the weight limit (errors.md, "-1003 TOO_MANY_REQUESTS").
TOO_MANY_REQUESTS = -1003
#: Binance's answer when it cannot process a request (errors.md, "-1000 UNKNOWN").
UNKNOWN = -1000


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
