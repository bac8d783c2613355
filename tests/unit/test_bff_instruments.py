"""The BFF's rules over the exchange's symbol list (profile_bff.instruments): only TRADING symbols may be
added, any listed symbol may be looked up, and what a fetch of the exchange's list does (apply it, or keep the
last good one on failure, empty or garbage; what changed). Pure: the list is built in memory or read from the
shipped snapshot, the fetched bodies are bytes. The search order is test_bff_instrument_search.py's."""

from __future__ import annotations

import gzip

import orjson
import pytest

from crypto_mesh.binance import DEFAULT_EXCHANGE_INFO, ListedSymbol
from profile_bff.instruments import (
    RETRY_BASE_S,
    Instrument,
    InstrumentRefresh,
    Instruments,
    ListChanges,
    NotTrading,
    StatusChange,
    UnknownSymbol,
    decide,
)


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


# --- Refreshing the list from the exchange ------------------------------------------------------------------


def exchange_info(*listed: tuple[str, str]) -> bytes:
    """An exchangeInfo body as Binance answers it, listing (symbol, status) pairs quoted in USDT."""
    return orjson.dumps(
        {
            "timezone": "UTC",
            "serverTime": 1_700_000_000_000,
            "rateLimits": [],
            "symbols": [
                {
                    "symbol": symbol.upper(),
                    "status": status,
                    "baseAsset": symbol.upper().removesuffix("USDT"),
                    "quoteAsset": "USDT",
                    "filters": [],
                    "permissionSets": [],
                }
                for symbol, status in listed
            ],
        }
    )


def test_a_fetched_list_is_applied_at_once_and_says_what_was_listed_delisted_or_changed_status():
    current = instruments(("btcusdt", "TRADING"), ("ethusdt", "TRADING"), ("bccusdt", "TRADING"))
    refresh = InstrumentRefresh(current, every_s=300)

    outcome = refresh.apply(
        refresh.decide(exchange_info(("btcusdt", "TRADING"), ("bccusdt", "BREAK"), ("newusdt", "TRADING")))
    )

    assert outcome.applied and outcome.reason is None
    assert outcome.changes == ListChanges(
        listed=(Instrument("newusdt", "NEW", "USDT", "TRADING"),),
        delisted=(Instrument("ethusdt", "ETH", "USDT", "TRADING"),),
        status_changed=(StatusChange("bccusdt", "TRADING", "BREAK"),),
    )
    assert (outcome.source, outcome.symbols, outcome.trading, outcome.failures) == ("exchange", 3, 2, 0)
    assert outcome.next_fetch_s == 300
    # The one list object the use cases hold now answers from the fetched list.
    assert current.require_trading("newusdt").base == "NEW"
    with pytest.raises(NotTrading, match=r"bccusdt is not trading \(status BREAK\)"):
        current.require_trading("bccusdt")
    with pytest.raises(UnknownSymbol):
        current.require_trading("ethusdt")


def test_the_same_list_fetched_again_changes_nothing():
    current = instruments(("btcusdt", "TRADING"), ("bccusdt", "BREAK"))
    refresh = InstrumentRefresh(current, every_s=60)

    outcome = refresh.apply(refresh.decide(exchange_info(("btcusdt", "TRADING"), ("bccusdt", "BREAK"))))

    assert outcome.applied and not outcome.changes
    assert refresh.applied == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>502 Bad Gateway</html>", "not an exchangeInfo body: not JSON"),
        (b'{"code": -1003, "msg": "Too much request weight used"}', "no symbols list"),
        (b'{"symbols": [{"symbol": "BTCUSDT"}]}', "malformed symbol entry"),
        (b'{"symbols": []}', "lists no symbol"),
        (exchange_info()[:-30], "not JSON"),
    ],
)
def test_a_body_that_is_not_an_exchange_info_list_keeps_the_last_good_list(body, reason):
    current = instruments(("btcusdt", "TRADING"), ("bccusdt", "BREAK"))
    refresh = InstrumentRefresh(current, every_s=300)

    outcome = refresh.apply(refresh.decide(body))

    assert not outcome.applied and reason in outcome.reason
    assert (outcome.source, outcome.symbols, outcome.failures) == ("snapshot", 2, 1)
    assert current.require_trading("btcusdt") and len(current) == 2


def test_a_failed_fetch_keeps_the_last_fetched_list_and_is_retried_with_backoff_up_to_the_period():
    current = instruments(("btcusdt", "TRADING"))
    refresh = InstrumentRefresh(current, every_s=30)
    refresh.apply(refresh.decide(exchange_info(("btcusdt", "TRADING"), ("newusdt", "TRADING"))))

    outcomes = [refresh.failed("GET /api/v3/exchangeInfo: ClientConnectorError") for _ in range(12)]

    assert [outcome.failures for outcome in outcomes] == list(range(1, 13))
    assert {(outcome.applied, outcome.source, outcome.symbols) for outcome in outcomes} == {
        (False, "exchange", 2)
    }
    # Full jitter: the n-th pause is drawn from [0, min(cap, base × 2^(n-1))], the cap being the period.
    for n, outcome in enumerate(outcomes):
        assert 0 <= outcome.next_fetch_s <= min(30, RETRY_BASE_S * 2**n)
    assert current.require_trading("newusdt")

    recovered = refresh.apply(refresh.decide(exchange_info(("btcusdt", "TRADING"), ("newusdt", "TRADING"))))
    assert (recovered.applied, recovered.failures, recovered.next_fetch_s) == (True, 0, 30)


def test_the_pause_after_a_rate_limit_is_at_least_the_exchanges_retry_after():
    refresh = InstrumentRefresh(instruments(("btcusdt", "TRADING")), every_s=300)

    outcome = refresh.failed("GET /api/v3/exchangeInfo: 418 banned", retry_after_s=120)

    assert outcome.next_fetch_s >= 120


def test_a_refresh_period_shorter_than_the_backoff_caps_the_pauses():
    refresh = InstrumentRefresh(instruments(("btcusdt", "TRADING")), every_s=0.2)

    assert all(refresh.failed("down").next_fetch_s <= 0.2 for _ in range(20))
    with pytest.raises(ValueError, match="positive"):
        InstrumentRefresh(instruments(), every_s=0)


def test_the_shipped_snapshot_against_itself_as_fetched_changes_nothing():
    current = Instruments.load(DEFAULT_EXCHANGE_INFO)

    decision = decide(current, gzip.decompress(DEFAULT_EXCHANGE_INFO.read_bytes()))

    assert decision.instruments is not None and len(decision.instruments) == 1695
    assert not decision.changes
