"""The BFF's rules over the exchange's symbol list (profile_bff.instruments): only TRADING symbols may be
added, any listed symbol may be looked up. Pure: the list is built in memory or read from the shipped
snapshot. The search order is tests/unit/test_bff_instrument_search.py's."""

from __future__ import annotations

import pytest

from crypto_mesh.binance import DEFAULT_EXCHANGE_INFO, ListedSymbol
from profile_bff.instruments import Instrument, Instruments, NotTrading, UnknownSymbol


def instruments(*listed: tuple[str, str]) -> Instruments:
    """Instruments of (symbol, status) pairs, quoted in USDT."""
    return Instruments(
        [
            Instrument.of(ListedSymbol(symbol, symbol.upper().removesuffix("USDT"), "USDT", status))
            for symbol, status in listed
        ]
    )


def test_a_trading_symbol_may_be_added_and_others_are_refused_with_their_reason():
    listed = instruments(("btcusdt", "TRADING"), ("bccusdt", "BREAK"))

    assert listed.require_trading("btcusdt") == Instrument("btcusdt", "BTC", "USDT", "TRADING", "spot")
    with pytest.raises(NotTrading, match="BREAK"):
        listed.require_trading("bccusdt")
    with pytest.raises(UnknownSymbol):
        listed.require_trading("nopeusdt")


def test_any_listed_symbol_is_found_whatever_its_status():
    listed = instruments(("btcusdt", "TRADING"), ("bccusdt", "BREAK"))

    assert listed.get("bccusdt") == Instrument("bccusdt", "BCC", "USDT", "BREAK", "spot")
    assert listed.get("nopeusdt") is None


def test_the_shipped_snapshot_loads_every_listed_symbol_as_a_spot_instrument():
    listed = Instruments.load(DEFAULT_EXCHANGE_INFO)

    assert len(listed) == 1695
    assert {instrument.type for instrument in listed} == {"spot"}
    assert listed.require_trading("btcusdt").base == "BTC"
