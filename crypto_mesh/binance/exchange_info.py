"""The exchange's symbol list: the body of Binance ``GET /api/v3/exchangeInfo``.

Source: Binance spot API documentation, "General endpoints" → "Exchange information"
(https://developers.binance.com/docs/binance-spot-api-docs/rest-api/general-endpoints#exchange-information)
and "Enum definitions" → "Symbol status" (``TRADING``, ``END_OF_DAY``, ``HALT``, ``BREAK``, ``CANCEL_ONLY``).
Of each entry of ``symbols`` the mesh keeps ``symbol``, ``status``, ``baseAsset`` and ``quoteAsset``; symbols
are lowercased as everywhere in the mesh. The request itself (URL, weight, errors) is
:mod:`crypto_mesh.binance.rest`.

Binance may list symbols with non-ASCII characters ("General API Information": "Some endpoints may return
asset and/or symbol names containing non-ASCII characters"). The mesh names a symbol only by
:data:`~crypto_mesh.binance.names.SYMBOL_PATTERN` (2 to 20 ASCII letters or digits) in stream names, Redis
keys and its databases, so such entries are left out of the list rather than refusing the whole body.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto_mesh import jsonutil
from crypto_mesh.binance.data import read_data_file
from crypto_mesh.binance.names import SYMBOL_PATTERN

#: The status of a symbol that can be traded now.
TRADING = "TRADING"


@dataclass(frozen=True, slots=True)
class ListedSymbol:
    """One entry of ``symbols``: ``symbol`` lowercase, ``base``/``quote`` assets uppercase as Binance writes
    them, ``status`` as written (``TRADING``, ``BREAK``, ...)."""

    symbol: str
    base: str
    quote: str
    status: str

    @property
    def trading(self) -> bool:
        """True if the status is ``TRADING``."""
        return self.status == TRADING


def parse_exchange_info(body: Any) -> list[ListedSymbol]:
    """The listed symbols of a decoded exchangeInfo body, in its order, without the symbols the mesh cannot
    name (module docstring).

    Raises ``ValueError`` if ``body`` has no ``symbols`` list or an entry lacks one of the kept fields.
    """
    entries = body.get("symbols") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        # Wrong content, not a caller passing a wrong type: ValueError, as for bad JSON.
        raise ValueError("not a Binance exchangeInfo body (no symbols list)")  # noqa: TRY004
    listed = []
    for entry in entries:
        try:
            kept = ListedSymbol(
                symbol=entry["symbol"].lower(),
                base=str(entry["baseAsset"]),
                quote=str(entry["quoteAsset"]),
                status=str(entry["status"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed symbol entry {entry!r:.100}") from exc
        if SYMBOL_PATTERN.fullmatch(kept.symbol):
            listed.append(kept)
    return listed


def parse_exchange_info_body(raw: bytes) -> list[ListedSymbol]:
    """The listed symbols of an exchangeInfo body as received (UTF-8 JSON bytes): :func:`parse_exchange_info`
    of the decoded JSON. Raises ``ValueError`` if ``raw`` is not JSON or not an exchangeInfo body."""
    try:
        body = jsonutil.loads(raw)
    except jsonutil.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    return parse_exchange_info(body)


def load_exchange_info(path: Path) -> list[ListedSymbol]:
    """The listed symbols of the exchangeInfo body in the file at ``path`` (JSON, gzipped or not).

    Raises ``OSError`` if the file cannot be read and ``ValueError`` (naming the file) if it is not an
    exchangeInfo body.
    """
    raw = read_data_file(path)
    try:
        return parse_exchange_info_body(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
