"""Binance spot REST trade history turned into the frames of the trade streams, and back.

Sources: Binance spot API documentation, REST "Market Data endpoints"
(https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints), sections
"Old trade lookup" (``GET /api/v3/historicalTrades``) and "Compressed/Aggregate trades list"
(``GET /api/v3/aggTrades``). Both take ``symbol``, ``fromId`` (the first id answered, inclusive) and ``limit``
(default 500, at most 1000) and answer a JSON array in id order, oldest first. Their elements name the fields
otherwise than the stream frames (:mod:`crypto_mesh.binance.frames`)::

    # historicalTrades element                         # the same trade on <symbol>@trade
    {"id": 28457, "price": "4.00000100",               {"e": "trade", "E": ..., "s": "BNBBTC", "t": 28457,
     "qty": "12.00000000", "quoteQty": "48.000012",     "p": "4.00000100", "q": "12.00000000",
     "time": 1499865549590, "isBuyerMaker": true,       "T": 1499865549590, "m": true, "M": true}
     "isBestMatch": true}

    # aggTrades element: the stream's short names without "e", "E" and "s"
    {"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1498793709153,
     "m": true, "M": true}

REST elements carry no event time ``E`` and no symbol: the frames made of them take ``E`` = the trade time
``T`` and the requested symbol, so :func:`crypto_mesh.binance.parse_trade_frame` reads them as any stream
frame.
"""

from __future__ import annotations

from typing import Any

from crypto_mesh import jsonutil
from crypto_mesh.binance.frames import MalformedFrame, combined_frame
from crypto_mesh.binance.names import AGG_TRADE, TRADE, trade_stream

#: historicalTrades element field → trade stream payload field.
_TRADE_FIELDS = {"id": "t", "price": "p", "qty": "q", "time": "T", "isBuyerMaker": "m", "isBestMatch": "M"}
#: aggTrades element fields (the aggTrade payload's own names).
_AGG_TRADE_FIELDS = ("a", "p", "q", "f", "l", "T", "m", "M")


def history_payload(kind: str, symbol: str, element: Any) -> dict[str, Any]:
    """The stream payload (``<symbol>@trade`` for ``kind`` ``"trade"``, ``<symbol>@aggTrade`` for
    ``"aggTrade"``) of one element of the REST answer of that kind (module doc). ``symbol`` lowercase.
    Raises :class:`MalformedFrame` if ``element`` is not an object with the kind's integer id and time."""
    if not isinstance(element, dict):
        raise MalformedFrame("trade history element is not a JSON object")
    if kind == TRADE:
        data = {"e": TRADE, "E": element.get("time"), "s": symbol.upper()}
        data.update((stream_key, element.get(rest_key)) for rest_key, stream_key in _TRADE_FIELDS.items())
        id_key = "t"
    elif kind == AGG_TRADE:
        data = {"e": AGG_TRADE, "E": element.get("T"), "s": symbol.upper()}
        data.update((key, element.get(key)) for key in _AGG_TRADE_FIELDS)
        id_key = "a"
    else:
        raise ValueError(f"unknown trade kind {kind!r}")
    for key in (id_key, "T"):
        if type(data[key]) is not int:
            raise MalformedFrame(f"trade history element without an integer {key!r}")
    return data


def history_frames(kind: str, symbol: str, body: bytes) -> list[bytes]:
    """The combined-stream frames (``{"stream": "<symbol>@<kind>", "data": ...}``) of a REST trade history
    answer ``body`` of ``kind`` for ``symbol`` (lowercase), in the answer's order. Raises
    :class:`MalformedFrame` for a body that is not a JSON array of such elements."""
    try:
        elements = jsonutil.loads(body)
    except jsonutil.JSONDecodeError as exc:
        raise MalformedFrame(f"trade history is not JSON: {exc}") from None
    if not isinstance(elements, list):
        raise MalformedFrame("trade history is not a JSON array")
    stream = trade_stream(symbol, kind)
    return [combined_frame(stream, history_payload(kind, symbol, element)) for element in elements]


def history_element(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The REST trade history element of ``kind`` for a stream payload ``data`` of that kind: the inverse of
    :func:`history_payload` (the replay exchange answers its recording this way). ``historicalTrades``'
    ``quoteQty`` (price × quantity) is left out: the mesh never reads it."""
    if kind == TRADE:
        return {rest_key: data.get(stream_key) for rest_key, stream_key in _TRADE_FIELDS.items()}
    if kind == AGG_TRADE:
        return {key: data.get(key) for key in _AGG_TRADE_FIELDS}
    raise ValueError(f"unknown trade kind {kind!r}")
