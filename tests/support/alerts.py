"""Alert firings in tests: the independent computation of a rule's firings over one symbol's closes, and the
shipped trade recording's SecondStats as the alert tests replay them."""

from __future__ import annotations

import statistics
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from support.recordings import recorded_seconds

from crypto_mesh import jsonutil
from profile_bff.alertrules import RuleSpec

BTC, ETH = "btcusdt", "ethusdt"


def reference_firings(rule: RuleSpec, seconds: list[tuple[int, Decimal]], quantity: Decimal) -> list[tuple[int, Decimal]]:
    """(second, close) of each firing of ``rule`` over one symbol's ``seconds`` (time order), computed apart
    from profile_bff/crossing.py: Fractions, the close ``window`` ago by a backward scan; a portfolio rule's
    total is ``quantity`` of that one symbol."""
    fired: list[tuple[int, Decimal]] = []
    previous: bool | None = None
    last_fired: int | None = None
    threshold = Fraction(rule.threshold)
    for index, (second, close) in enumerate(seconds):
        price = Fraction(close)
        if rule.kind == "change_percent":
            older = [c for t, c in seconds[: index + 1] if t <= second - rule.window_s * 1000]
            if not older or older[-1] == 0:
                side = None
            else:
                change = (price - Fraction(older[-1])) / Fraction(older[-1]) * 100
                side = change >= threshold if threshold > 0 else change <= threshold
        elif rule.kind.startswith("portfolio_total"):
            total = price * Fraction(quantity)
            side = total > threshold if rule.kind.endswith("above") else total < threshold
        else:
            side = price > threshold if rule.kind == "price_above" else price < threshold
        if previous is False and side is True:
            cooled = last_fired is None or second >= last_fired + rule.cooldown_s * 1000
            if cooled and not (rule.repeat == "once" and fired):
                fired.append((second, close))
                last_fired = second
        previous = side
    return fired


def replayed_closes(recording: Path, start_in_s: int = 2) -> dict[str, list[tuple[int, Decimal]]]:
    """Each symbol's (second ms, close) of ``recording`` in time order (tests/support/recordings.py), shifted
    by whole seconds to start ``start_in_s`` seconds from now, as the replay exchange shifts a recording: after
    the rules of a test were made."""
    earliest, recorded = recorded_seconds(recording)
    shift = (int(time.time()) + start_in_s) * 1000 - earliest
    by_symbol: dict[str, list[tuple[int, Decimal]]] = {}
    for (symbol, second), fields in sorted(recorded.items(), key=lambda item: (item[0][1], item[0][0])):
        by_symbol.setdefault(symbol, []).append((second + shift, fields["p"]))
    return by_symbol


def second_records(by_symbol: dict[str, list[tuple[int, Decimal]]]) -> list[tuple[bytes, bytes]]:
    """The SecondStats of ``by_symbol`` as ``binance.second`` records (key: the symbol; value: the JSON of
    ``s``, ``t``, ``p``, which is what the evaluator reads), in second order."""
    ordered = sorted((second, symbol, close) for symbol, seconds in by_symbol.items() for second, close in seconds)
    return [
        (symbol.encode(), jsonutil.dumps({"s": symbol, "t": second, "p": str(close)}))
        for second, symbol, close in ordered
    ]


def recording_rules(by_symbol: dict[str, list[tuple[int, Decimal]]], quantity: Decimal) -> list[tuple[str, RuleSpec]]:
    """Rules of every kind that the shipped trade recording crosses often, each with the one symbol its firings
    depend on: prices around each symbol's median close (one ``once``, one with a 30 s cooldown), a rise and a
    fall in percent, and the total of a portfolio holding ``quantity`` BTC around its median."""
    btc_median = statistics.median(close for _, close in by_symbol[BTC])
    eth_median = statistics.median(close for _, close in by_symbol[ETH])
    return [
        (BTC, RuleSpec("price_above", BTC, btc_median, None, "every_crossing", 0)),
        (BTC, RuleSpec("price_below", BTC, btc_median, None, "every_crossing", 30)),
        (ETH, RuleSpec("price_above", ETH, eth_median, None, "once", 0)),
        (ETH, RuleSpec("change_percent", ETH, Decimal("0.05"), 60, "every_crossing", 0)),
        (BTC, RuleSpec("change_percent", BTC, Decimal("-0.05"), 120, "every_crossing", 0)),
        (BTC, RuleSpec("portfolio_total_above", None, btc_median * quantity, None, "every_crossing", 0)),
    ]


def rule_body(spec: RuleSpec) -> dict[str, str]:
    """The ``POST /v2/user/alerts`` body of ``spec`` (docs/CONTRACTS.md, "Alerts")."""
    body = {"kind": spec.kind, "repeat": spec.repeat, "cooldown": f"{spec.cooldown_s}s"}
    if spec.kind == "change_percent":
        return {**body, "symbol": spec.symbol, "percent": str(spec.threshold), "window": f"{spec.window_s}s"}
    if spec.symbol is None:
        return {**body, "total": str(spec.threshold)}
    return {**body, "symbol": spec.symbol, "price": str(spec.threshold)}
