"""Portfolio arithmetic, pure: quantities from clients, prices from SecondStats, the profile message.

Every number is a ``Decimal`` computed in :data:`CONTEXT`, whose precision is far above what a product of
two ``NUMERIC(38, 18)`` values and their sum can need (38 + 38 digits plus carries), so nothing is ever
rounded: ``Totals[s]`` is exactly ``Quantities[s] × Prices[s]``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, InvalidOperation, Overflow
from typing import Any

from crypto_mesh import jsonutil
from crypto_mesh.decimals import DecimalFieldError, parse_decimal

#: Arithmetic context of the portfolio: exact for every value the profile database can hold.
CONTEXT = Context(prec=200, traps=[InvalidOperation, Overflow])

#: A quantity is stored as ``NUMERIC(38, 18)``: at most 20 integer digits and 18 decimal places.
MAX_INTEGER_DIGITS = 20
MAX_FRACTION_DIGITS = 18
_QUANTUM = Decimal(1).scaleb(-MAX_FRACTION_DIGITS)
#: A quantity given as a string: positional notation only (no sign, exponent, NaN or underscores).
_QUANTITY_TEXT = re.compile(r"[0-9]{1,64}(\.[0-9]{1,64})?")
#: SecondStat ``t`` must be a representable time (before year 10000).
_YEAR_10000_MS = 253_402_300_800_000
_ZERO = Decimal(0)
_normalize = CONTEXT.normalize
_multiply = CONTEXT.multiply
_add = CONTEXT.add


class InvalidQuantity(ValueError):
    """A quantity that is not a positive decimal with at most 20 integer digits and 18 decimal places."""


class InvalidSecondStat(ValueError):
    """A SecondStat JSON without a usable ``p`` (decimal string ≥ 0) or ``t`` (integer ms)."""


@dataclass(frozen=True, slots=True)
class Price:
    """The latest price of a symbol: ``value`` is SecondStat ``p``, ``second_ms`` its ``t`` (Unix ms).

    ``text`` (``value`` normalised, positional notation) and ``time_text`` (``second_ms`` as RFC 3339 UTC
    with milliseconds) are computed once here, since every profile holding the symbol shows them.
    """

    value: Decimal
    second_ms: int
    text: str = field(init=False, repr=False, compare=False)
    time_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", decimal_text(self.value))
        object.__setattr__(self, "time_text", rfc3339_ms(self.second_ms))


def parse_quantity(raw: object) -> Decimal:
    """A client's quantity as an exact ``Decimal``.

    Accepted: a decimal string in positional notation (``"1.5"``, surrounding spaces ignored), a JSON integer,
    or a JSON number that the request parser has already read losslessly as ``Decimal`` (``1.5``). The value
    must be > 0, have at most 20 integer digits and at most 18 decimal places (trailing zeros do not count).
    Raises :class:`InvalidQuantity` with a message fit for the client.
    """
    if isinstance(raw, bool):
        raise InvalidQuantity('quantity must be a decimal string such as "1.5"')
    if isinstance(raw, str):
        text = raw.strip()
        if not _QUANTITY_TEXT.fullmatch(text):
            raise InvalidQuantity('quantity must be a positive decimal string such as "1.5"')
        value = Decimal(text)
    elif isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, Decimal):
        value = raw
    else:
        raise InvalidQuantity('quantity must be a decimal string such as "1.5"')
    if not value.is_finite() or value <= 0:
        raise InvalidQuantity("quantity must be greater than zero")
    if value.adjusted() >= MAX_INTEGER_DIGITS:
        raise InvalidQuantity(f"quantity must have at most {MAX_INTEGER_DIGITS} integer digits")
    if value.quantize(_QUANTUM, context=CONTEXT) != value:
        raise InvalidQuantity(f"quantity must have at most {MAX_FRACTION_DIGITS} decimal places")
    return CONTEXT.normalize(value)


def parse_second_stat(payload: bytes | str) -> Price:
    """The price in a SecondStat JSON (docs/CONTRACTS.md, "SecondStat JSON"): ``p`` and ``t``.

    Raises :class:`InvalidSecondStat` for malformed JSON, a ``p`` that is not a finite decimal string ≥ 0,
    or a ``t`` that is not an integer.
    """
    second, value = second_stat_close(payload)
    return Price(value=value, second_ms=second)


def second_stat_close(payload: bytes | str) -> tuple[int, Decimal]:
    """``(t, p)`` of a SecondStat JSON, checked as :func:`parse_second_stat` does, without the texts a
    :class:`Price` formats for the profiles (the alert evaluator needs the numbers only). Raises
    :class:`InvalidSecondStat`."""
    stat = jsonutil.loads_object(payload, InvalidSecondStat, "SecondStat")
    raw_price, second = stat.get("p"), stat.get("t")
    if not isinstance(raw_price, str) or not isinstance(second, int) or isinstance(second, bool):
        raise InvalidSecondStat("p must be a decimal string and t an integer")
    if not 0 <= second < _YEAR_10000_MS:
        raise InvalidSecondStat(f"t is not a Unix time in ms: {second}")
    try:
        value = parse_decimal(raw_price, minimum="nonnegative")
    except DecimalFieldError as exc:
        raise InvalidSecondStat(f"p {exc}") from None
    return second, value


class LatestPrices(Mapping[str, Price]):
    """The latest :class:`Price` of each symbol (a read-only mapping; change it with :meth:`set` and
    :meth:`discard`), with the parts of a profile message that depend on prices alone (:meth:`shared`), built
    once per set of symbols and price change, not once per user.
    """

    __slots__ = ("_prices", "_shared")

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices: dict[str, Price] = dict(prices or {})
        self._shared: dict[tuple[str, ...], SharedParts] = {}

    def __getitem__(self, symbol: str) -> Price:
        return self._prices[symbol]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def get(self, symbol: str, default: Any = None) -> Any:
        return self._prices.get(symbol, default)

    def set(self, symbol: str, price: Price) -> None:
        """``price`` is now the latest of ``symbol``."""
        self._prices[symbol] = price
        self._forget_shared()

    def discard(self, symbol: str) -> None:
        """Forget ``symbol``'s price, if any."""
        if self._prices.pop(symbol, None) is not None:
            self._forget_shared()

    def shared(self, symbols: tuple[str, ...]) -> SharedParts:
        """The price-only parts of the profile of a user holding ``symbols`` (sorted), cached until a price
        changes (then their ``source`` becomes ``None``)."""
        parts = self._shared.get(symbols)
        if parts is None:
            parts = self._shared[symbols] = SharedParts(symbols, self._prices, self)
        return parts

    def _forget_shared(self) -> None:
        for parts in self._shared.values():
            parts.source = None
        self._shared.clear()


class SharedParts:
    """What every profile holding the same ``symbols`` (sorted) shows at the same prices: ``priced``, the
    (symbol, :class:`Price`) pairs with a known price in symbol order; ``prices`` and ``price_times``, the
    ``Prices`` and ``PriceTimes`` objects as JSON fragments; ``prices_at``, the ``PricesAt`` value; ``source``,
    the :class:`LatestPrices` they are current for, until one of its prices changes (``None`` from then on),
    so that a holder can keep them and check with one comparison that they still hold."""

    __slots__ = ("price_times", "priced", "prices", "prices_at", "source")

    def __init__(self, symbols: tuple[str, ...], prices: Mapping[str, Price], source: LatestPrices) -> None:
        self.source = source
        self.priced = tuple((symbol, prices[symbol]) for symbol in symbols if symbol in prices)
        self.prices = jsonutil.fragment({symbol: price.text for symbol, price in self.priced})
        self.price_times = jsonutil.fragment({symbol: price.time_text for symbol, price in self.priced})
        latest = max((price for _, price in self.priced), key=lambda price: price.second_ms, default=None)
        self.prices_at = None if latest is None else latest.time_text


class Holdings:
    """A user's coins, ready to render its profile message (docs/CONTRACTS.md, "Profile JSON") many times.

    :meth:`message` returns ``{"ID", "Name", "Coins": {"Quantities", "Prices", "Totals", "PriceTimes"},
    "Total", "PricesAt"}`` as UTF-8 JSON: ``Prices``, ``Totals`` and ``PriceTimes`` hold only the coins with
    a known price; ``Totals[s] = Quantities[s] × Prices[s]`` exactly; ``PriceTimes[s]`` is the SecondStat
    second of that price and ``PricesAt`` the latest of them, as RFC 3339 UTC with milliseconds (``null``
    without prices); ``Total`` is the sum of the totals (``"0"`` without prices). Amounts are normalised
    (``1.500`` → ``1.5``) decimal strings in positional notation (:func:`decimal_text`); symbols appear in
    sorted order.

    Built once per change of the coins: the quantities are written out here, the price-only parts come from
    :meth:`LatestPrices.shared`, and a coin's total is computed again only when its price changes.
    """

    __slots__ = ("_lines", "_quantities", "_shared", "_symbols", "name", "user_id")

    def __init__(self, user_id: int, name: str, quantities: Mapping[str, Decimal]) -> None:
        self.user_id = user_id
        self.name = name
        # Interned: every user's symbols are then the same objects as the shared parts' keys, so the lookups
        # of a fan-out compare pointers instead of reading each user's own copy of the string.
        self._symbols = tuple(sys.intern(symbol) for symbol in sorted(quantities))
        self._quantities = jsonutil.fragment(
            {symbol: decimal_text(quantities[symbol]) for symbol in self._symbols}
        )
        #: symbol → (quantity, the price value its total was computed at or ``None``, total, total as text):
        #: a coin whose price did not change since the last message keeps its total. The value is compared by
        #: identity (every user's message reads the same ``Price.value`` object, which this reference keeps
        #: from being freed and its address reused), so an unchanged price costs no read of it. One dict for
        #: all a line needs, so a fan-out reads one table per user; only atomic values, so the garbage
        #: collector stops tracking these tuples instead of walking them for as long as a socket is open.
        self._lines: dict[str, tuple[Decimal, Decimal | None, Decimal, str]] = {
            symbol: (quantities[symbol], None, _ZERO, "0") for symbol in self._symbols
        }
        #: The shared parts of the last message, reused while their ``source`` is the ``prices`` rendered at:
        #: most fan-outs then need no lookup (nor a read of ``_symbols``) to find them.
        self._shared: SharedParts | None = None

    def message(self, prices: LatestPrices) -> bytes:
        """The profile at ``prices`` as UTF-8 JSON (see the class docstring); to keep it for long, keep
        :func:`crypto_mesh.jsonutil.exact_copy` of it."""
        shared = self._shared
        if shared is None or shared.source is not prices:
            shared = self._shared = prices.shared(self._symbols)
        lines = self._lines
        totals: dict[str, str] = {}
        total = _ZERO
        for symbol, price in shared.priced:
            line = lines[symbol]
            if line[1] is not price.value:
                quantity = line[0]
                line_total = _multiply(quantity, price.value)
                line = lines[symbol] = (quantity, price.value, line_total, decimal_text(line_total))
            totals[symbol] = line[3]
            total = _add(total, line[2])
        return jsonutil.dumps(
            {
                "ID": self.user_id,
                "Name": self.name,
                "Coins": {
                    "Quantities": self._quantities,
                    "Prices": shared.prices,
                    "Totals": totals,
                    "PriceTimes": shared.price_times,
                },
                "Total": decimal_text(total),
                "PricesAt": shared.prices_at,
            }
        )


def profile_message(
    user_id: int, name: str, quantities: Mapping[str, Decimal], prices: Mapping[str, Price]
) -> bytes:
    """The profile of ``user_id`` holding ``quantities`` at ``prices`` (symbol → latest price) as UTF-8 JSON;
    :class:`Holdings` says what it holds."""
    return Holdings(user_id, name, quantities).message(LatestPrices(prices))


def decimal_text(value: Decimal) -> str:
    """``value`` normalised (exactly, in :data:`CONTEXT`) in positional notation: ``Decimal("1.500")`` →
    ``"1.5"``, ``Decimal("1E+2")`` → ``"100"``."""
    normal = _normalize(value)
    # str() is twice as fast as format(); it writes an exponent only for very large or small values.
    text = str(normal)
    return format(normal, "f") if "E" in text else text


def rfc3339_ms(unix_ms: int) -> str:
    """``1723161601000`` → ``"2024-08-09T00:00:01.000Z"`` (RFC 3339, UTC, milliseconds)."""
    moment = datetime.fromtimestamp(unix_ms // 1000, tz=UTC) + timedelta(milliseconds=unix_ms % 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
