"""Names of Binance spot market data: symbols and stream names.

Source: Binance spot "WebSocket Streams" documentation (stream names are lowercase; combined streams are
served at ``/stream?streams=<a>/<b>`` and wrap each frame as ``{"stream": ..., "data": ...}``).
"""

from __future__ import annotations

import re
from pathlib import Path

#: A spot symbol as the project accepts it: 2 to 20 ASCII letters or digits, normalised to lowercase.
#: Anything else is rejected before it reaches an exchange URL, a Redis channel or a database.
SYMBOL_PATTERN = re.compile(r"[a-z0-9]{2,20}")

#: Real Binance data shipped with the project (recordings and an exchangeInfo snapshot; see its SOURCES.md).
DATA_DIR = Path(__file__).resolve().parent / "data" / "binance"
#: The recording the replay exchange plays by default: real ``@trade`` frames of btcusdt and ethusdt.
DEFAULT_RECORDING = DATA_DIR / "btcusdt_ethusdt_trade_2024-08-08.jsonl.gz"

TRADE = "trade"
AGG_TRADE = "aggTrade"
MINI_TICKER_ALL = "!miniTicker@arr"


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

    ``symbol`` must already be normalised; ``kind`` is :data:`TRADE` or :data:`AGG_TRADE` (ValueError otherwise).
    """
    if kind not in (TRADE, AGG_TRADE):
        raise ValueError(f"unknown trade stream kind {kind!r}")
    return f"{normalize_symbol(symbol)}@{kind}"
