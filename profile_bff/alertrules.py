"""Alert rules as clients write them, pure: the kinds, their fields, and the checks a rule passes before it is
stored (docs/CONTRACTS.md, "Alerts").

A rule body (``POST /v2/user/alerts``) is one of::

    {"kind": "price_above" | "price_below", "symbol": "btcusdt", "price": "70000"}
    {"kind": "change_percent", "symbol": "ethusdt", "percent": "-5", "window": "1h"}
    {"kind": "portfolio_total_above" | "portfolio_total_below", "total": "100000"}

each with ``"repeat": "once" | "every_crossing"`` (default ``once``), an optional ``"cooldown"`` (a duration,
default ``"0s"``) and an optional ``"webhook_url"`` (``https://...``). Decimals are strings in positional
notation (or JSON numbers the request parser read as exact ``Decimal``); durations are ``<n>s``, ``<n>m`` or
``<n>h``. Every refusal is :class:`InvalidAlert` with a message that names the field; whether a symbol is listed
and trading is the caller's check (:meth:`profile_bff.instruments.Instruments.require_trading`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from yarl import URL

from crypto_mesh.binance import normalize_symbol
from profile_bff.portfolio import CONTEXT

PRICE_ABOVE = "price_above"
PRICE_BELOW = "price_below"
CHANGE_PERCENT = "change_percent"
TOTAL_ABOVE = "portfolio_total_above"
TOTAL_BELOW = "portfolio_total_below"
KINDS = (PRICE_ABOVE, PRICE_BELOW, CHANGE_PERCENT, TOTAL_ABOVE, TOTAL_BELOW)
#: Kinds watching one symbol's close; the others watch the user's portfolio total.
SYMBOL_KINDS = (PRICE_ABOVE, PRICE_BELOW, CHANGE_PERCENT)
PORTFOLIO_KINDS = (TOTAL_ABOVE, TOTAL_BELOW)
ONCE = "once"
EVERY_CROSSING = "every_crossing"
REPEATS = (ONCE, EVERY_CROSSING)
#: ``change_percent`` windows: 1 minute to 24 hours (s).
MIN_WINDOW_S = 60
MAX_WINDOW_S = 86_400
#: Longest cooldown (s).
MAX_COOLDOWN_S = 86_400
#: ``|percent|`` at most this, with at most :data:`PERCENT_PLACES` decimal places.
MAX_PERCENT = Decimal(1000)
PERCENT_PLACES = 8
#: Thresholds (prices, totals) as ``NUMERIC(38, 18)``: 20 integer digits, 18 places.
INTEGER_DIGITS = 20
FRACTION_DIGITS = 18
MAX_WEBHOOK_URL_CHARS = 2048
_DECIMAL_TEXT = re.compile(r"-?[0-9]{1,64}(\.[0-9]{1,64})?")
_DURATION = re.compile(r"([0-9]{1,6})([smh])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
_FIELDS = {"kind", "symbol", "price", "percent", "window", "total", "repeat", "cooldown", "webhook_url"}


class InvalidAlert(ValueError):
    """A rule body that is not a valid rule; the message names the field and why, for the client."""


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A valid rule as a client asked for it.

    ``threshold``: the ``price``, ``percent`` or ``total`` (exact, normalised); ``symbol`` is ``None`` for the
    portfolio kinds; ``window_s`` the ``change_percent`` window (s, else ``None``); ``cooldown_s`` ≥ 0;
    ``webhook_url`` an ``https`` URL or ``None``.
    """

    kind: str
    symbol: str | None
    threshold: Decimal
    window_s: int | None
    repeat: str
    cooldown_s: int
    webhook_url: str | None = None


def parse_rule(body: dict[str, Any]) -> RuleSpec:
    """The rule of a ``POST /v2/user/alerts`` body (module docstring). Raises :class:`InvalidAlert`;
    :class:`crypto_mesh.binance.InvalidSymbol` for a symbol that is no symbol."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidAlert(f"unknown field {unknown[0]!r}")
    kind = body.get("kind")
    if kind not in KINDS:
        raise InvalidAlert(f"kind must be one of {', '.join(KINDS)}")
    repeat = body.get("repeat", ONCE)
    if repeat not in REPEATS:
        raise InvalidAlert("repeat must be once or every_crossing")
    cooldown_s = parse_duration(body.get("cooldown", "0s"), "cooldown", 0, MAX_COOLDOWN_S)
    webhook_url = _webhook_url(body.get("webhook_url"))
    expected = {"kind", "repeat", "cooldown", "webhook_url"}
    if kind in PORTFOLIO_KINDS:
        expected.add("total")
        spec = RuleSpec(
            kind, None, _amount(body.get("total"), "total"), None, repeat, cooldown_s, webhook_url
        )
    elif kind == CHANGE_PERCENT:
        expected |= {"symbol", "percent", "window"}
        spec = RuleSpec(
            kind,
            normalize_symbol(_required(body, "symbol")),
            _percent(body.get("percent")),
            parse_duration(_required(body, "window"), "window", MIN_WINDOW_S, MAX_WINDOW_S),
            repeat,
            cooldown_s,
            webhook_url,
        )
    else:
        expected |= {"symbol", "price"}
        spec = RuleSpec(
            kind,
            normalize_symbol(_required(body, "symbol")),
            _amount(body.get("price"), "price"),
            None,
            repeat,
            cooldown_s,
            webhook_url,
        )
    extra = sorted(set(body) - expected)
    if extra:
        raise InvalidAlert(f"{extra[0]} does not apply to {kind}")
    return spec


def parse_duration(raw: object, field: str, minimum_s: int, maximum_s: int) -> int:
    """``"90s"``, ``"5m"``, ``"1h"`` as seconds within ``[minimum_s, maximum_s]``; raises
    :class:`InvalidAlert` naming ``field``."""
    match = _DURATION.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if match is None:
        raise InvalidAlert(f'{field} must be a duration such as "30s", "5m" or "1h"')
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not minimum_s <= seconds <= maximum_s:
        raise InvalidAlert(f"{field} must be from {duration_text(minimum_s)} to {duration_text(maximum_s)}")
    return seconds


def duration_text(seconds: int) -> str:
    """``seconds`` as the largest whole unit: ``3600`` → ``"1h"``, ``90`` → ``"90s"``."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _required(body: dict[str, Any], field: str) -> Any:
    if body.get(field) is None:
        raise InvalidAlert(f"{field} is required")
    return body[field]


def _decimal(raw: object, field: str) -> Decimal:
    if isinstance(raw, bool) or raw is None:
        raise InvalidAlert(f'{field} must be a decimal string such as "1.5"')
    if isinstance(raw, str):
        text = raw.strip()
        if not _DECIMAL_TEXT.fullmatch(text):
            raise InvalidAlert(f'{field} must be a decimal string such as "1.5"')
        return Decimal(text)
    if isinstance(raw, int):
        return Decimal(raw)
    if isinstance(raw, Decimal) and raw.is_finite():
        return raw
    raise InvalidAlert(f'{field} must be a decimal string such as "1.5"')


def _places(value: Decimal) -> int:
    exponent = CONTEXT.normalize(value).as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _amount(raw: object, field: str) -> Decimal:
    """A price or total: > 0, at most 20 integer digits and 18 decimal places."""
    value = _decimal(raw, field)
    if value <= 0:
        raise InvalidAlert(f"{field} must be greater than zero")
    if value.adjusted() >= INTEGER_DIGITS or _places(value) > FRACTION_DIGITS:
        raise InvalidAlert(f"{field} must have at most {INTEGER_DIGITS} integer digits and {FRACTION_DIGITS} places")
    return CONTEXT.normalize(value)


def _percent(raw: object) -> Decimal:
    """A change in percent: non-zero, ``|percent|`` ≤ 1000, at most 8 decimal places; negative watches falls."""
    value = _decimal(raw, "percent")
    if value == 0:
        raise InvalidAlert("percent must not be zero (negative: a fall, positive: a rise)")
    if abs(value) > MAX_PERCENT or _places(value) > PERCENT_PLACES:
        raise InvalidAlert(f"percent must be within ±{MAX_PERCENT} with at most {PERCENT_PLACES} decimal places")
    return CONTEXT.normalize(value)


def _webhook_url(raw: object) -> str | None:
    """An absolute ``https`` URL without credentials or fragment, at most 2048 characters; where it may
    point (no private addresses) is checked when it is called (:mod:`profile_bff.webhooks`)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.isascii() or len(raw) > MAX_WEBHOOK_URL_CHARS:
        raise InvalidAlert(f"webhook_url must be an https URL of at most {MAX_WEBHOOK_URL_CHARS} ASCII characters")
    try:
        url = URL(raw.strip())
    except ValueError:
        raise InvalidAlert("webhook_url is not a URL") from None
    if url.scheme != "https" or not url.host or url.user or url.password or url.fragment:
        raise InvalidAlert("webhook_url must be an https://host/path URL without credentials or fragment")
    return str(url)
