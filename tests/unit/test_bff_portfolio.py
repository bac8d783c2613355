"""The portfolio arithmetic of the BFF: exact quantities, prices from SecondStats, the profile message."""

from __future__ import annotations

import functools
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_mesh import jsonutil
from profile_bff.portfolio import (
    CONTEXT,
    Holdings,
    InvalidQuantity,
    InvalidSecondStat,
    LatestPrices,
    Price,
    decimal_text,
    parse_quantity,
    parse_second_stat,
    profile_message,
    rfc3339_ms,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.5", "1.5"),
        (" 2 ", "2"),
        ("0.000000000000000001", "0.000000000000000001"),
        ("99999999999999999999.999999999999999999", "99999999999999999999.999999999999999999"),
        ("1.50000000000000000000000", "1.5"),
        (3, "3"),
        (Decimal("1.5"), "1.5"),
        (Decimal("1E+2"), "100"),
    ],
)
def test_quantities_are_read_exactly(raw, expected):
    assert jsonutil.decimal_str(parse_quantity(raw)) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "0",
        "0.0",
        "-1",
        Decimal("-1.5"),
        0,
        "1e3",
        "NaN",
        "Infinity",
        "1_000",
        "",
        "0.0000000000000000001",
        "100000000000000000000",
        Decimal("1E+20"),
        Decimal("1E-19"),
        True,
        1.5,
        None,
        ["1"],
    ],
)
def test_quantities_that_are_not_positive_bounded_decimals_are_refused(raw):
    with pytest.raises(InvalidQuantity):
        parse_quantity(raw)


def test_a_second_stat_gives_its_close_price_and_second():
    stat = b'{"s": "btcusdt", "t": 1723161601000, "p": "61837.63", "o": "61830.00", "n": 42}'
    assert parse_second_stat(stat) == Price(Decimal("61837.63"), 1723161601000)


def test_a_second_stat_marked_incomplete_still_gives_its_close_price():
    # "x": true: trades of the second are missing, but its close is a price the symbol traded at, the latest known.
    stat = b'{"s": "btcusdt", "t": 1723161601000, "p": "61837.63", "n": 3, "x": true}'
    assert parse_second_stat(stat) == Price(Decimal("61837.63"), 1723161601000)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"t": 1}',
        b'{"p": 61837.63, "t": 1}',
        b'{"p": "-1", "t": 1}',
        b'{"p": "NaN", "t": 1}',
        b'{"p": "abc", "t": 1}',
        b'{"p": "1", "t": "1"}',
        b'{"p": "1", "t": true}',
        b'{"p": "1", "t": -5}',
    ],
)
def test_malformed_second_stats_are_refused(payload):
    with pytest.raises(InvalidSecondStat):
        parse_second_stat(payload)


def test_profile_totals_are_exact_products_and_their_sum():
    quantities = {
        "btcusdt": Decimal("1.500000000000000000"),
        "ethusdt": Decimal("0.123456789012345678"),
        "dotusdt": Decimal(7),
    }
    prices = {
        "btcusdt": Price(Decimal("61837.63"), 1723161601000),
        "ethusdt": Price(Decimal("2612.0000000001"), 1723161600000),
    }
    profile = jsonutil.loads(profile_message(1, "alice", quantities, prices))
    assert profile == {
        "ID": 1,
        "Name": "alice",
        "Coins": {
            "Quantities": {"btcusdt": "1.5", "dotusdt": "7", "ethusdt": "0.123456789012345678"},
            "Prices": {"btcusdt": "61837.63", "ethusdt": "2612.0000000001"},
            "Totals": {"btcusdt": "92756.445", "ethusdt": "322.4691329002592566149012345678"},
            "PriceTimes": {"btcusdt": "2024-08-09T00:00:01.000Z", "ethusdt": "2024-08-09T00:00:00.000Z"},
        },
        "Total": "93078.9141329002592566149012345678",
        "PricesAt": "2024-08-09T00:00:01.000Z",
    }


def test_a_profile_without_prices_has_a_zero_total_and_no_time():
    profile = profile_message(7, "bob", {"btcusdt": Decimal(2)}, {})
    assert jsonutil.loads(profile) == {
        "ID": 7,
        "Name": "bob",
        "Coins": {"Quantities": {"btcusdt": "2"}, "Prices": {}, "Totals": {}, "PriceTimes": {}},
        "Total": "0",
        "PricesAt": None,
    }


def test_large_values_never_lose_digits_or_turn_into_exponents():
    quantity = Decimal("99999999999999999999.999999999999999999")
    price = Decimal("12345678901234567890.123456789012345678")
    profile = profile_message(1, "a", {"x1": quantity}, {"x1": Price(price, 0)})
    assert jsonutil.loads(profile)["Total"] == (
        "1234567890123456789012345678901234567787.654321098765432109876543210987654322"
    )


def _expected_profile(
    user_id: int, name: str, quantities: dict[str, Decimal], prices: dict[str, Price]
) -> dict:
    """The profile of docs/CONTRACTS.md computed the plain way, field by field."""
    priced = sorted(symbol for symbol in quantities if symbol in prices)
    totals = {symbol: CONTEXT.multiply(quantities[symbol], prices[symbol].value) for symbol in priced}
    latest = max((prices[symbol] for symbol in priced), key=lambda price: price.second_ms, default=None)
    return {
        "ID": user_id,
        "Name": name,
        "Coins": {
            "Quantities": {symbol: decimal_text(quantities[symbol]) for symbol in sorted(quantities)},
            "Prices": {symbol: decimal_text(prices[symbol].value) for symbol in priced},
            "Totals": {symbol: decimal_text(total) for symbol, total in totals.items()},
            "PriceTimes": {symbol: rfc3339_ms(prices[symbol].second_ms) for symbol in priced},
        },
        "Total": decimal_text(functools.reduce(CONTEXT.add, totals.values(), Decimal(0))),
        "PricesAt": None if latest is None else rfc3339_ms(latest.second_ms),
    }


_SYMBOLS = ("btcusdt", "dotusdt", "ethusdt", "solusdt")
_DECIMALS = st.decimals(min_value=Decimal("0.000000000000000001"), max_value=Decimal("1E+12"), places=18)
_PRICE_CHANGES = st.lists(
    st.tuples(
        st.sampled_from(_SYMBOLS),
        st.one_of(st.none(), st.tuples(_DECIMALS, st.integers(min_value=0, max_value=4_102_444_800_000))),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    holdings=st.lists(
        st.dictionaries(st.sampled_from(_SYMBOLS), _DECIMALS, max_size=len(_SYMBOLS)), min_size=1, max_size=4
    ),
    changes=_PRICE_CHANGES,
)
def test_profiles_rendered_again_after_each_price_change_equal_a_fresh_computation(holdings, changes):
    # The fan-out keeps one Holdings per user and one LatestPrices for all of them, and renders after each
    # change; whatever it reuses between messages must never show a stale price or total.
    latest = LatestPrices()
    users = [Holdings(user_id, f"user{user_id}", quantities) for user_id, quantities in enumerate(holdings)]
    prices: dict[str, Price] = {}
    for symbol, change in [(None, None), *changes]:
        if symbol is not None and change is None:
            latest.discard(symbol)
            prices.pop(symbol, None)
        elif symbol is not None:
            prices[symbol] = Price(*change)
            latest.set(symbol, prices[symbol])
        assert dict(latest) == prices
        for user_id, (user, quantities) in enumerate(zip(users, holdings, strict=True)):
            assert jsonutil.loads(user.message(latest)) == _expected_profile(
                user_id, f"user{user_id}", quantities, prices
            )


def test_a_name_that_needs_escaping_is_written_as_valid_json():
    profile = profile_message(3, 'o"neil\\ \u00e9\n', {"btcusdt": Decimal(1)}, {})
    assert jsonutil.loads(profile)["Name"] == 'o"neil\\ \u00e9\n'
