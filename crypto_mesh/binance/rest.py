"""Binance spot REST: the requests the mesh makes, their request weights, and how a refusal reads.

Sources: Binance spot API documentation (https://developers.binance.com/docs/binance-spot-api-docs/rest-api),
sections "General API Information" (base endpoints), "HTTP Return Codes", "LIMITS" → "IP Limits", "General
endpoints" → "Exchange information", "Market Data endpoints" → "Old trade lookup" and "Compressed/Aggregate
trades list" (:mod:`crypto_mesh.binance.history` reads their answers), and "Enum definitions" → "Rate limiters".
In short:

- every request costs its route's *weight*; an IP may spend :data:`REQUEST_WEIGHT_PER_MINUTE` a minute (the
  live figure is in exchangeInfo's ``rateLimits``), and each answer says how much it has spent in
  :data:`USED_WEIGHT_HEADER`;
- beyond it Binance answers 429; an IP that goes on is banned with 418 (2 minutes to 3 days); both answers
  carry ``Retry-After`` in seconds, which the caller must wait;
- 5XX is Binance's own failure, worth retrying; other 4XX mean the request was wrong.

Public market data is also served, without an API key, at ``https://data-api.binance.vision`` ("Market Data
Only URLs"), ``exchangeInfo`` included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from yarl import URL

from crypto_mesh.binance.names import AGG_TRADE, TRADE

if TYPE_CHECKING:
    import aiohttp

#: ``GET /api/v3/exchangeInfo``: "Current exchange trading rules and symbol information" (body:
#: :mod:`crypto_mesh.binance.exchange_info`).
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
#: Its weight: 20 since 2023-08-25 (10 before).
EXCHANGE_INFO_WEIGHT = 20
#: ``showPermissionSets=false`` leaves each symbol's ``permissionSets`` empty, "for a reduced payload size"
#: (parameter added on 2024-10-17); the mesh reads no permission.
EXCHANGE_INFO_QUERY = {"showPermissionSets": "false"}
#: ``GET /api/v3/historicalTrades?symbol=&fromId=&limit=``: "Get older market trades" of a ``@trade`` stream, by
#: trade id. Weight 25. Its security type was ``MARKET_DATA`` (an API key in ``X-MBX-APIKEY``) until Binance made
#: it public (``NONE``) in 2023; the mesh sends no key, and an exchange that asks for one (401) refuses the
#: request like any other (:class:`RestUnavailable`).
HISTORICAL_TRADES_PATH = "/api/v3/historicalTrades"
HISTORICAL_TRADES_WEIGHT = 25
#: ``GET /api/v3/aggTrades?symbol=&fromId=&limit=``: "Compressed/Aggregate trades list" of an ``@aggTrade``
#: stream, by aggregate id. Weight 4.
AGG_TRADES_PATH = "/api/v3/aggTrades"
AGG_TRADES_WEIGHT = 4
#: Per trade stream kind: the REST route of its history and the route's weight.
TRADE_HISTORY_ROUTES = {
    TRADE: (HISTORICAL_TRADES_PATH, HISTORICAL_TRADES_WEIGHT),
    AGG_TRADE: (AGG_TRADES_PATH, AGG_TRADES_WEIGHT),
}
#: The most trades one history request answers (``limit``: "Default 500; max 1000").
MAX_TRADE_HISTORY_LIMIT = 1000
#: The largest trade history body accepted: 1000 elements of about 200 bytes, with room to spare.
MAX_TRADE_HISTORY_BYTES = 1024 * 1024
#: The ``REQUEST_WEIGHT`` limit per IP and minute ("Rate limiters": ``{"rateLimitType": "REQUEST_WEIGHT",
#: "interval": "MINUTE", "intervalNum": 1, "limit": 6000}``).
REQUEST_WEIGHT_PER_MINUTE = 6000
#: The weight the IP has spent in the current minute, on every answer.
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
#: "breaking a request rate limit" and "an IP has been auto-banned for continuing to send requests after
#: receiving 429 codes": both with ``Retry-After`` (s).
RATE_LIMITED = 429
IP_BANNED = 418
#: The largest exchangeInfo body accepted. Binance's is some megabytes (1.9 MB for 1,695 symbols in 2021); a
#: bigger answer is no exchangeInfo, and is not held in memory.
MAX_EXCHANGE_INFO_BYTES = 64 * 1024 * 1024


class RestUnavailable(Exception):
    """A request that got no usable answer: no connection, a time-out, or a status other than 200.

    ``status`` is the HTTP status (``None`` when there was no answer); ``retry_after_s`` the seconds Binance
    asked to wait (``Retry-After`` of a 429 or 418), ``None`` if it asked nothing.
    """

    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def exchange_info_url(base_url: str) -> URL:
    """The exchangeInfo URL of a REST base URL: ``"https://api.binance.com"`` →
    ``https://api.binance.com/api/v3/exchangeInfo?showPermissionSets=false``. A path in ``base_url`` (a
    reverse proxy's prefix) is kept."""
    return URL(base_url.rstrip("/") + EXCHANGE_INFO_PATH).with_query(EXCHANGE_INFO_QUERY)


def trade_history_url(base_url: str, kind: str, symbol: str, from_id: int, limit: int) -> URL:
    """The history URL of trade stream kind ``kind`` (``"trade"``: historicalTrades, ``"aggTrade"``: aggTrades)
    for ``symbol`` (sent uppercase, as Binance names it) from id ``from_id`` (inclusive), at most ``limit``
    trades. Raises ValueError for another kind, a negative id or a limit outside 1..1000."""
    if kind not in TRADE_HISTORY_ROUTES:
        raise ValueError(f"unknown trade kind {kind!r}")
    if from_id < 0 or not 1 <= limit <= MAX_TRADE_HISTORY_LIMIT:
        raise ValueError(f"from_id must be >= 0 and limit 1..{MAX_TRADE_HISTORY_LIMIT}")
    path = TRADE_HISTORY_ROUTES[kind][0]
    query = {"symbol": symbol.upper(), "fromId": str(from_id), "limit": str(limit)}
    return URL(base_url.rstrip("/") + path).with_query(query)


def retry_after_s(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header as Binance sends it (whole seconds); ``None`` if absent or not a
    non-negative number (an HTTP date is not sent by Binance)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class BinanceRest:
    """A client of Binance spot REST at ``base_url`` (``https://api.binance.com``, or the replay exchange's
    ``http://127.0.0.1:<port>``). Must be created inside a running event loop; ``close()`` it.

    Each call makes one request, waits at most ``timeout_s`` seconds for the whole answer, and raises
    :class:`RestUnavailable` for anything but a 200; retrying, and waiting the ``Retry-After`` of a 429 or
    418, is the caller's decision.
    """

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self._base_url = base_url
        self._exchange_info_url = exchange_info_url(base_url)
        # Imported here, where a client is made: the launcher reads this package's names and data, and its
        # commands start faster without an HTTP client.
        import aiohttp

        self._errors = (aiohttp.ClientError, TimeoutError)
        # aiohttp asks for gzip and inflates it: Binance's exchangeInfo shrinks about 30 times.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def exchange_info(self) -> bytes:
        """The body of ``GET /api/v3/exchangeInfo`` (weight :data:`EXCHANGE_INFO_WEIGHT`), as received:
        read it with :func:`crypto_mesh.binance.parse_exchange_info_body`. Raises :class:`RestUnavailable`,
        also for a body over :data:`MAX_EXCHANGE_INFO_BYTES`."""
        return await self._get(self._exchange_info_url, MAX_EXCHANGE_INFO_BYTES)

    async def trade_history(self, kind: str, symbol: str, from_id: int, limit: int) -> bytes:
        """The body of the trade history request of :func:`trade_history_url` (weight: the route's in
        :data:`TRADE_HISTORY_ROUTES`), as received: read it with
        :func:`crypto_mesh.binance.history.history_frames`. Raises ValueError for bad arguments,
        :class:`RestUnavailable` for no usable answer, also for a body over :data:`MAX_TRADE_HISTORY_BYTES`."""
        url = trade_history_url(self._base_url, kind, symbol, from_id, limit)
        return await self._get(url, MAX_TRADE_HISTORY_BYTES)

    async def _get(self, url: URL, limit: int) -> bytes:
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    body = (await response.content.read(200)).decode(errors="replace")
                    raise RestUnavailable(
                        f"GET {url.path}: {response.status} {body}",
                        response.status,
                        retry_after_s(response.headers.get("Retry-After")),
                    )
                return await _read_at_most(response, limit)
        except self._errors as exc:
            raise RestUnavailable(f"GET {url.path}: {exc!r}") from exc


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole (inflated) body of ``response``; :class:`RestUnavailable` as soon as it passes ``limit``
    bytes."""
    chunks = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise RestUnavailable(f"GET {response.url.path}: body over {limit} bytes", response.status)
        chunks.append(chunk)
    return b"".join(chunks)
