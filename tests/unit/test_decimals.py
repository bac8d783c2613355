"""Decimal strings from the wire are parsed exactly, and anything else is refused with a reason."""

from decimal import Decimal

import pytest

from crypto_mesh.decimals import DecimalFieldError, parse_decimal


def test_a_binance_price_string_is_parsed_exactly():
    assert parse_decimal("61837.63000000") == Decimal("61837.63")
    assert str(parse_decimal("0.00000001")) == "1E-8"


@pytest.mark.parametrize("raw", [61837.63, 1, None, "", "abc", "NaN", "Infinity", "1e", "1.2.3"])
def test_numbers_and_non_decimals_are_refused(raw):
    with pytest.raises(DecimalFieldError):
        parse_decimal(raw)


def test_signs_are_bounded_on_request():
    assert parse_decimal("-1") == Decimal(-1)
    with pytest.raises(DecimalFieldError, match="negative"):
        parse_decimal("-0.1", minimum="nonnegative")
    assert parse_decimal("0", minimum="nonnegative") == 0
    with pytest.raises(DecimalFieldError, match="greater than zero"):
        parse_decimal("0", minimum="positive")


def test_column_fit_ignores_trailing_zeros_and_keeps_every_digit():
    assert parse_decimal("1.500000000000000000000000", scale=18, integer_digits=20) == Decimal("1.5")
    widest = parse_decimal("12345678901234567890.123456789012345678", scale=18, integer_digits=20)
    assert str(widest) == "12345678901234567890.123456789012345678"
    assert widest == Decimal("12345678901234567890.123456789012345678")
    assert str(parse_decimal("-0.000000000000000001", scale=18)) == "-1E-18"
    with pytest.raises(DecimalFieldError, match="decimal places"):
        parse_decimal("0.1234567890123456789", scale=18)
    with pytest.raises(DecimalFieldError, match="integer digits"):
        parse_decimal("123456789012345678901", integer_digits=20)
    assert parse_decimal("0.000000000000000000000", scale=2) == 0
