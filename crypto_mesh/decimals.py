"""The one parser of decimal strings from the wire (Binance frames, SecondStats, Kafka records).

Prices and quantities arrive as JSON strings (Binance sends ``"61837.63000000"``) precisely so that no float
ever touches them; a JSON number here would already have been through a float in the decoder, so only strings
are accepted.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Literal


class DecimalFieldError(ValueError):
    """A value that is not an acceptable decimal string; the message says why (no field name, callers add it)."""


def parse_decimal(
    raw: object,
    *,
    minimum: Literal["any", "nonnegative", "positive"] = "any",
    scale: int | None = None,
    integer_digits: int | None = None,
) -> Decimal:
    """``raw`` (a decimal string such as ``"61837.63000000"``) as an exact, finite ``Decimal``.

    ``minimum`` bounds the sign; ``scale`` is the most decimal places and ``integer_digits`` the most digits
    before the point that the value may need (trailing zeros after the point do not count), e.g. ``scale=18,
    integer_digits=20`` for a ``Decimal(38, 18)`` column. Raises :class:`DecimalFieldError` otherwise.
    """
    if not isinstance(raw, str):
        raise DecimalFieldError("must be a decimal string")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise DecimalFieldError(f"is not a decimal: {raw[:40]!r}") from None
    if not value.is_finite():
        raise DecimalFieldError("must be finite")
    if minimum == "positive" and value <= 0:
        raise DecimalFieldError("must be greater than zero")
    if minimum == "nonnegative" and value < 0:
        raise DecimalFieldError("must not be negative")
    if scale is not None or integer_digits is not None:
        _sign, digits, exponent = value.as_tuple()
        # Strip trailing zeros by hand: Decimal.normalize() would round to the context's 28 digits.
        while exponent < 0 and len(digits) > 1 and digits[-1] == 0:
            digits, exponent = digits[:-1], exponent + 1
        places = 0 if value == 0 else max(0, -exponent)
        whole = 0 if value == 0 else max(0, len(digits) + exponent)
        if scale is not None and places > scale:
            raise DecimalFieldError(f"has more than {scale} decimal places: {raw[:40]!r}")
        if integer_digits is not None and whole > integer_digits:
            raise DecimalFieldError(f"has more than {integer_digits} integer digits: {raw[:40]!r}")
    return value
