"""The portfolio arithmetic of the BFF: exact quantities, prices from SecondStats, the profile message."""

from __future__ import annotations

from decimal import Decimal

import pytest

from crypto_mesh import jsonutil
from profile_bff.portfolio import (
    InvalidQuantity,
    InvalidSecondStat,
    Price,
    build_profile,
    parse_quantity,
    parse_second_stat,
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
    profile = jsonutil.loads(jsonutil.dumps(build_profile(1, "alice", quantities, prices)))
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
    profile = build_profile(7, "bob", {"btcusdt": Decimal(2)}, {})
    assert jsonutil.loads(jsonutil.dumps(profile)) == {
        "ID": 7,
        "Name": "bob",
        "Coins": {"Quantities": {"btcusdt": "2"}, "Prices": {}, "Totals": {}, "PriceTimes": {}},
        "Total": "0",
        "PricesAt": None,
    }


def test_large_values_never_lose_digits_or_turn_into_exponents():
    quantity = Decimal("99999999999999999999.999999999999999999")
    price = Decimal("12345678901234567890.123456789012345678")
    profile = build_profile(1, "a", {"x1": quantity}, {"x1": Price(price, 0)})
    assert jsonutil.loads(jsonutil.dumps(profile))["Total"] == (
        "1234567890123456789012345678901234567787.654321098765432109876543210987654322"
    )
