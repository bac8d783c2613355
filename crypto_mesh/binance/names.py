"""Names of Binance spot market data: symbols, stream names and the websocket endpoints.

Source: Binance spot API documentation, "WebSocket Streams for Binance"
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams), section "General WSS
information": stream names are ``<symbol>@<kind>`` with the symbol in lowercase (``btcusdt@trade``), or an
all-market name (``!miniTicker@arr``); raw streams are served at ``/ws/<stream>``, combined streams at
``/stream?streams=<stream1>/<stream2>`` (their frame envelope: :mod:`crypto_mesh.binance.frames`).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

#: A spot symbol as the project accepts it: 2 to 20 ASCII letters or digits, normalised to lowercase.
#: Anything else is rejected before it reaches an exchange URL, a Redis channel or a database.
SYMBOL_PATTERN = re.compile(r"[a-z0-9]{2,20}")

#: Stream kinds of trades (section "Trade Streams": ``<symbol>@trade``; "Aggregate Trade Streams":
#: ``<symbol>@aggTrade``). The event type ``e`` of their frames is the same word.
TRADE = "trade"
AGG_TRADE = "aggTrade"
#: Section "Individual Symbol Mini Ticker Stream": ``<symbol>@miniTicker``.
MINI_TICKER = "miniTicker"
#: Section "All Market Mini Tickers Stream".
MINI_TICKER_ALL = "!miniTicker@arr"

#: A stream name Binance accepts: a lowercase symbol stream with one or two ``@`` parts (``btcusdt@trade``,
#: ``btcusdt@depth@100ms``) or an all-market one (``!miniTicker@arr``).
STREAM_NAME = re.compile(rf"(?:{SYMBOL_PATTERN.pattern}|![A-Za-z]{{1,30}})(?:@[A-Za-z0-9_]{{1,30}}){{1,2}}")

#: Endpoint paths: raw streams (each frame is the payload alone) and combined streams (each frame wrapped).
RAW_PATH = "/ws"
COMBINED_PATH = "/stream"


class InvalidSymbol(ValueError):
    """A symbol that is not 2-20 ASCII letters or digits."""


def normalize_symbol(symbol: object) -> str:
    """Return ``symbol`` stripped and lowercased, e.g. ``" BTCUSDT"`` → ``"btcusdt"``.

    Raises :class:`InvalidSymbol` if it is not a string of 2 to 20 ASCII letters or digits.
    """
    if not isinstance(symbol, str):
        raise InvalidSymbol("symbol must be a string")
    normalized = symbol.strip().lower()
    if not SYMBOL_PATTERN.fullmatch(normalized):
        raise InvalidSymbol("symbol must be 2 to 20 ASCII letters or digits, e.g. btcusdt")
    return normalized


def trade_stream(symbol: str, kind: str = TRADE) -> str:
    """Stream name of a symbol's trades: ``trade_stream("btcusdt", "aggTrade")`` → ``"btcusdt@aggTrade"``.

    ``kind`` is :data:`TRADE` or :data:`AGG_TRADE` (ValueError otherwise); :class:`InvalidSymbol` for a bad
    ``symbol``.
    """
    if kind not in (TRADE, AGG_TRADE):
        raise ValueError(f"unknown trade stream kind {kind!r}")
    return f"{normalize_symbol(symbol)}@{kind}"


def mini_ticker_stream(symbol: str) -> str:
    """Stream name of a symbol's mini-ticker: ``mini_ticker_stream("BTCUSDT")`` → ``"btcusdt@miniTicker"``.

    Raises :class:`InvalidSymbol` for a bad ``symbol``.
    """
    return f"{normalize_symbol(symbol)}@{MINI_TICKER}"


def split_stream(stream: str) -> tuple[str, str]:
    """``(symbol, kind)`` of a stream name: ``"btcusdt@trade"`` → ``("btcusdt", "trade")``,
    ``"btcusdt@depth@100ms"`` → ``("btcusdt", "depth@100ms")``. The symbol part is lowercased and not checked
    further; a name without ``@`` has the kind ``""``."""
    symbol, _, kind = stream.partition("@")
    return symbol.lower(), kind


def combined_stream_url(exchange_url: str) -> str:
    """The combined-stream endpoint of an exchange base URL: ``"wss://stream.binance.com:9443"`` →
    ``"wss://stream.binance.com:9443/stream"`` (streams are then added with SUBSCRIBE)."""
    return exchange_url.rstrip("/") + COMBINED_PATH


def parse_stream_path(path: str) -> tuple[bool, list[str]] | None:
    """``(combined, stream names)`` of a websocket request path, or None if it is no stream endpoint.

    ``/ws``, ``/ws/<s1>/<s2>``: raw (``combined`` False); ``/stream``, ``/stream?streams=<s1>/<s2>``:
    combined.
    The names are returned as written, empty parts dropped; check them with :data:`STREAM_NAME`.
    """
    parts = urlsplit(path)
    if parts.path == RAW_PATH or parts.path.startswith(RAW_PATH + "/"):
        return False, [name for name in parts.path[len(RAW_PATH) :].split("/") if name]
    if parts.path in (COMBINED_PATH, COMBINED_PATH + "/"):
        names = parse_qs(parts.query).get("streams", [])
        return True, [name for value in names for name in value.split("/") if name]
    return None
