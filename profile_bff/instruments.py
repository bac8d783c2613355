"""The exchange's symbol list: validating coins and searching instruments.

Source: the body of Binance ``GET /api/v3/exchangeInfo`` (Binance Spot API docs, "Exchange information"),
read from a JSON file, gzipped or not (``BFF_EXCHANGE_INFO_FILE``; default the snapshot shipped in
``crypto_mesh/data/binance/exchangeInfo_2021-10-12.json.gz``, which embedded mode and the replay exchange
use). Of each entry of ``symbols`` the BFF keeps ``symbol``, ``status`` (``TRADING``, ``BREAK``, ...),
``baseAsset`` and ``quoteAsset``. Symbols are normalised to lowercase as everywhere in the mesh.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crypto_mesh import binance, jsonutil

#: The snapshot shipped with the project (Binance exchangeInfo of 2021-10-12).
DEFAULT_EXCHANGE_INFO = binance.DATA_DIR / "exchangeInfo_2021-10-12.json.gz"
#: Only this status may be added to a portfolio (Binance enum "Symbol status").
TRADING = "TRADING"


class UnknownSymbol(LookupError):
    """The symbol is not listed by the exchange."""


class NotTrading(ValueError):
    """The symbol is listed but its status is not ``TRADING`` (``BREAK``, ``HALT``, ...)."""


@dataclass(frozen=True, slots=True)
class Instrument:
    """One listed symbol: ``symbol`` lowercase, ``base``/``quote`` assets uppercase as Binance writes them."""

    symbol: str
    base: str
    quote: str
    status: str
    type: str = "spot"


class Instruments:
    """The listed symbols, by lowercase symbol, in the file's order for searching."""

    def __init__(self, instruments: list[Instrument]) -> None:
        self._by_symbol = {instrument.symbol: instrument for instrument in instruments}

    @classmethod
    def load(cls, path: Path) -> Instruments:
        """Read an exchangeInfo body from ``path`` (``.gz`` is decompressed). Raises ``OSError`` if the file
        cannot be read and ``ValueError`` if it is not an exchangeInfo body: the BFF then refuses to start."""
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        body = jsonutil.loads(raw)
        entries = body.get("symbols") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            # A file with the wrong content, not a caller passing a wrong type: ValueError, as for bad JSON.
            raise ValueError(f"{path}: not a Binance exchangeInfo body (no symbols list)")  # noqa: TRY004
        instruments = []
        for entry in entries:
            try:
                instruments.append(
                    Instrument(
                        symbol=str(entry["symbol"]).lower(),
                        base=str(entry["baseAsset"]),
                        quote=str(entry["quoteAsset"]),
                        status=str(entry["status"]),
                    )
                )
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{path}: malformed symbol entry {entry!r:.100}") from exc
        return cls(instruments)

    def __len__(self) -> int:
        return len(self._by_symbol)

    def require_trading(self, symbol: str) -> Instrument:
        """The instrument of a normalised ``symbol``. Raises :class:`UnknownSymbol` or :class:`NotTrading`."""
        instrument = self._by_symbol.get(symbol)
        if instrument is None:
            raise UnknownSymbol(f"{symbol} is not listed by the exchange")
        if instrument.status != TRADING:
            raise NotTrading(f"{symbol} is not trading (status {instrument.status})")
        return instrument

    def search(self, query: str, limit: int) -> list[Instrument]:
        """Up to ``limit`` instruments whose symbol contains ``query`` (any case): the exact match first, then
        those starting with it, then the others, each group by symbol."""
        needle = query.lower()
        found = [instrument for instrument in self._by_symbol.values() if needle in instrument.symbol]
        found.sort(
            key=lambda instrument: (
                instrument.symbol != needle,
                not instrument.symbol.startswith(needle),
                instrument.symbol,
            )
        )
        return found[:limit]

    def __iter__(self) -> Iterator[Instrument]:
        return iter(self._by_symbol.values())
