"""The exchange's symbol list as the BFF uses it: validating coins and searching instruments.

The list is a Binance exchangeInfo body read by :func:`crypto_mesh.binance.load_exchange_info` from
``BFF_EXCHANGE_INFO_FILE`` (default the snapshot shipped in ``crypto_mesh/data/binance``, which embedded mode
and the replay exchange use). The BFF's own rules: only a ``TRADING`` symbol may be added to a portfolio, and
the search order below.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crypto_mesh.binance import TRADING, ListedSymbol, load_exchange_info


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

    @classmethod
    def of(cls, listed: ListedSymbol) -> Instrument:
        """The instrument of a symbol listed by the (spot) exchange."""
        return cls(symbol=listed.symbol, base=listed.base, quote=listed.quote, status=listed.status)


class Instruments:
    """The listed symbols, by lowercase symbol, in the file's order for searching."""

    def __init__(self, instruments: list[Instrument]) -> None:
        self._by_symbol = {instrument.symbol: instrument for instrument in instruments}

    @classmethod
    def load(cls, path: Path) -> Instruments:
        """Read an exchangeInfo body from ``path`` (gzipped or not). Raises ``OSError`` if the file cannot be
        read and ``ValueError`` if it is not an exchangeInfo body: the BFF then refuses to start."""
        return cls([Instrument.of(listed) for listed in load_exchange_info(path)])

    def __len__(self) -> int:
        return len(self._by_symbol)

    def find(self, symbol: str) -> Instrument | None:
        """The instrument of a normalised ``symbol``, whatever its status, or ``None`` if it is not listed."""
        return self._by_symbol.get(symbol)

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
