"""Technical indicators over the closes of candles, computed exactly. Pure, no I/O.

Shared by the ETL's ``GET /v1/indicators`` and the BFF's ``GET /v1/instruments/{symbol}/indicators``, which
compute them over the candles they select (:mod:`crypto_mesh.candles`); the formulas are also written out in
docs/ANALYTICS.md, "Indicators".

Each function takes the closes of consecutive candles (exact ``Decimal`` values, oldest first) and a
period ``n``, and returns a list as long as the closes: ``None`` where the indicator has no value yet, else
the value **rounded half-even to 18 decimal places** (:data:`SCALE`, the scale of the ``Decimal(38, 18)``
prices it is computed from). A candle is a period with trades, so a gap without trades is not a candle and
is skipped, not filled. The arithmetic is on integers (fixed point), exact but where a step says it rounds.

- **SMA** (simple moving average): the mean of the last ``n`` closes, from the ``n``-th close on; exact,
  then rounded once.
- **EMA** (exponential moving average), seeded with the SMA of the first ``n`` closes at the ``n``-th close,
  then ``EMA_t = EMA_{t-1} + a (C_t - EMA_{t-1}) = (2 C_t + (n - 1) EMA_{t-1}) / (n + 1)`` with ``a = 2 /
  (n + 1)`` (StockCharts ChartSchool, "Moving Averages - Simple and Exponential"; TA-Lib's ``EMA`` seeds the
  same way). The value carried from step to step is rounded half-even to 50 significant digits
  (:data:`CARRY_DIGITS`); each answer is that value rounded to 18 places. (Carried exactly, the fraction's
  denominator would grow by a factor ``n + 1`` at every step.)
- **RSI** (relative strength index, J. Welles Wilder, *New Concepts in Technical Trading Systems*, 1978):
  with the changes ``d_t = C_t - C_{t-1}``, gains ``max(d, 0)`` and losses ``max(-d, 0)``, the first average
  gain ``G`` and loss ``L`` are the means of the first ``n`` changes (at the ``n + 1``-th close), then each is
  smoothed by Wilder's rule ``G_t = (G_{t-1} (n - 1) + gain_t) / n`` (likewise ``L``), carried at 50
  significant digits as the EMA (significant digits, not places: over a flat stretch both averages shrink
  by ``(n - 1) / n`` a step and their ratio, the RSI, must not drift); ``RSI = 100 - 100 / (1 + G / L) =
  100 G / (G + L)``: 100 when ``L = 0``, and 50 when ``G = L = 0`` (no change at all: neither side is
  stronger; TA-Lib answers 0 there).
- **Volatility**: the sample standard deviation (divisor ``n - 1``) of the last ``n`` log returns ``r_t =
  ln C_t - ln C_{t-1}``, from the ``n + 1``-th close on (J. C. Hull, *Options, Futures, and Other
  Derivatives*, "Estimating volatility from historical data"). It is per interval and **not annualised**:
  multiply by the square root of the intervals in a year to annualise (``sqrt(525600)`` for 1-minute
  candles, ``sqrt(365)`` for days; crypto markets trade every day). A logarithm is irrational: each ``ln C``
  is computed to 60 significant digits (Python's ``decimal``, correctly rounded) and rounded half-even to 40
  decimal places (:data:`LOG_PLACES`); from there the variance is exact, and its square root is rounded
  half-even to 18 places exactly (integer square root).

The EMA, the RSI and the volatility thus differ from their exact values by less than 1e-36 of the value
(1e-36 absolute for the volatility), so every answered digit is the exact one unless the exact value lies
that close to a rounding boundary.

``n`` is an integer from 2 to :data:`MAX_PERIOD`; :class:`InvalidIndicator` otherwise, and for a name not
in :data:`INDICATORS`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

from crypto_mesh.candles import MAX_CANDLES

#: Decimal places of every value; values are rounded half-even to them.
SCALE = 18
#: Significant digits of the averages the EMA and the RSI carry from one close to the next.
CARRY_DIGITS = 50
#: Decimal places of each logarithm of the volatility, and the significant digits it is computed with first.
LOG_PLACES = 40
LOG_DIGITS = 60
#: The longest period: the most candles one request selects.
MAX_PERIOD = MAX_CANDLES

_CARRY = Context(prec=CARRY_DIGITS, rounding=ROUND_HALF_EVEN)
_LOG_CONTEXT = Context(prec=LOG_DIGITS, rounding=ROUND_HALF_EVEN)
_QUANTUM = Decimal(f"1E-{SCALE}")


class InvalidIndicator(ValueError):
    """An unknown indicator name or a period out of range; ``str(error)`` is a sentence for the client."""


def _divide(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` (``denominator`` > 0) rounded half-even to an integer."""
    quotient, remainder = divmod(numerator, denominator)
    if 2 * remainder > denominator or (2 * remainder == denominator and quotient % 2):
        quotient += 1
    return quotient


def _units(value: Decimal, places: int) -> int:
    """``value`` in units of ``10^-places``, rounded half-even if it has more places."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int), "a finite decimal"
    number = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    shift = exponent + places
    return number * 10**shift if shift >= 0 else _divide(number, 10**-shift)


def _places(values: Sequence[Decimal]) -> int:
    """The most decimal places any of ``values`` is written with."""
    return max((-int(value.as_tuple().exponent) for value in values), default=0)


def _answer(value: Decimal) -> Decimal:
    """A carried value rounded half-even to :data:`SCALE` places."""
    return value.quantize(_QUANTUM, context=_CARRY)


def sma(closes: Sequence[Decimal], period: int) -> list[Decimal | None]:
    """Simple moving average of ``period`` closes (module docstring): exact sums of integers in units of the
    closes' finest place, each mean rounded once."""
    places = max(_places(closes), SCALE)
    exact = [_units(close, places) for close in closes]
    values: list[Decimal | None] = [None] * len(exact)
    total = 0
    for index, close in enumerate(exact):
        total += close
        if index >= period:
            total -= exact[index - period]
        if index >= period - 1:
            mean = _divide(total, period * 10 ** (places - SCALE))
            values[index] = Decimal(f"{mean}E-{SCALE}")
    return values


def ema(closes: Sequence[Decimal], period: int) -> list[Decimal | None]:
    """Exponential moving average seeded with the SMA of the first ``period`` closes (module docstring)."""
    values: list[Decimal | None] = [None] * len(closes)
    if len(closes) < period:
        return values
    with localcontext(_CARRY):
        average = sum(closes[:period], Decimal(0)) / period
        values[period - 1] = _answer(average)
        for index in range(period, len(closes)):
            average = (2 * closes[index] + (period - 1) * average) / (period + 1)
            values[index] = _answer(average)
    return values


def rsi(closes: Sequence[Decimal], period: int) -> list[Decimal | None]:
    """Wilder's relative strength index over ``period`` changes (module docstring)."""
    values: list[Decimal | None] = [None] * len(closes)
    if len(closes) <= period:
        return values
    zero = Decimal(0)
    with localcontext(_CARRY):
        changes = [b - a for a, b in itertools.pairwise(closes)]
        gain = sum((max(change, zero) for change in changes[:period]), zero) / period
        loss = sum((max(-change, zero) for change in changes[:period]), zero) / period
        values[period] = _strength(gain, loss)
        for index in range(period + 1, len(closes)):
            change = changes[index - 1]
            gain = (gain * (period - 1) + max(change, zero)) / period
            loss = (loss * (period - 1) + max(-change, zero)) / period
            values[index] = _strength(gain, loss)
    return values


def _strength(gain: Decimal, loss: Decimal) -> Decimal:
    if gain + loss == 0:
        return _answer(Decimal(50))
    return _answer(100 * gain / (gain + loss))


def volatility(closes: Sequence[Decimal], period: int) -> list[Decimal | None]:
    """Sample standard deviation of the last ``period`` log returns, per interval (module docstring)."""
    values: list[Decimal | None] = [None] * len(closes)
    logs = [_units(_LOG_CONTEXT.ln(close), LOG_PLACES) for close in closes]
    returns = [b - a for a, b in itertools.pairwise(logs)]
    total = squares = 0
    for index, value in enumerate(returns):
        total += value
        squares += value * value
        if index >= period:
            dropped = returns[index - period]
            total -= dropped
            squares -= dropped * dropped
        if index >= period - 1:
            # variance = (Σr² - (Σr)² / n) / (n - 1), with r in units of 10^-LOG_PLACES
            values[index + 1] = _square_root(
                period * squares - total * total, period * (period - 1) * 10 ** (2 * (LOG_PLACES - SCALE))
            )
    return values


def _square_root(numerator: int, denominator: int) -> Decimal:
    """``sqrt(numerator / denominator)`` (a ratio ≥ 0 in units of ``10^-2·SCALE``) rounded half-even to
    :data:`SCALE` places, exactly: ``k = isqrt(numerator // denominator)`` is the floor of the root ``x``,
    and ``x >= k + 1/2`` exactly when ``4 numerator >= (2k + 1)^2 denominator``."""
    root = math.isqrt(numerator // denominator)
    above = 4 * numerator - (2 * root + 1) ** 2 * denominator
    if above > 0 or (above == 0 and root % 2 == 1):
        root += 1
    return Decimal(f"{root}E-{SCALE}")


#: An indicator: ``(closes, period) → values``, aligned with the closes.
Computation = Callable[[Sequence[Decimal], int], list[Decimal | None]]

#: Indicator name → (computation, default period).
INDICATORS: dict[str, tuple[Computation, int]] = {
    "sma": (sma, 20),
    "ema": (ema, 20),
    "rsi": (rsi, 14),
    "volatility": (volatility, 20),
}


def indicator(name: str, period: int | None) -> tuple[Computation, int]:
    """The computation of indicator ``name`` and its period: ``period``, or the indicator's default when
    ``None``. Raises :class:`InvalidIndicator` for an unknown name or a period outside 2 to
    :data:`MAX_PERIOD`."""
    known = INDICATORS.get(name)
    if known is None:
        raise InvalidIndicator(f"name must be one of {', '.join(INDICATORS)}")
    computation, default = known
    if period is None:
        period = default
    if not 2 <= period <= MAX_PERIOD:
        raise InvalidIndicator(f"period must be an integer from 2 to {MAX_PERIOD}")
    return computation, period
