"""The crossing decision of alert rules (profile_bff/crossing.py) against independent computations: a rule
fires where its condition was false at the previous SecondStat and is true at this one."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from profile_bff.alertrules import InvalidAlert, RuleSpec, parse_rule
from profile_bff.crossing import (
    CloseHistory,
    Evaluation,
    Rule,
    RuleState,
    change_condition,
    change_percent,
    firing_id,
    portfolio_total,
    step,
)

D = Decimal


def spec(kind="price_above", threshold="100", repeat="every_crossing", cooldown_s=0, window_s=None, symbol="btcusdt"):
    return RuleSpec(kind, symbol, D(threshold), window_s, repeat, cooldown_s)


def run(rule_spec: RuleSpec, closes: list[str]) -> list[int]:
    """The indices of the closes (one a second) at which the rule fires."""
    evaluation = Evaluation()
    evaluation.set_rules([Rule(1, 7, rule_spec, created_ms=0)])
    fired = []
    for index, close in enumerate(closes):
        if evaluation.apply("btcusdt", 1000 * index, D(close)):
            fired.append(index)
    return fired


def reference_crossings(closes: list[str], above: Decimal) -> list[int]:
    sides = [D(close) > above for close in closes]
    return [i for i in range(1, len(sides)) if sides[i] and not sides[i - 1]]


def test_a_price_above_rule_fires_where_the_close_goes_from_at_or_below_to_above():
    closes = ["99", "100", "101", "102", "100", "100.5", "99", "101"]
    assert run(spec(), closes) == reference_crossings(closes, D(100)) == [2, 5, 7]


def test_a_price_already_above_when_the_rule_is_made_gives_no_alert():
    assert run(spec(), ["101", "102", "103"]) == []


def test_a_once_rule_fires_on_the_first_crossing_only():
    assert run(spec(repeat="once"), ["99", "101", "99", "101"]) == [1]


def test_price_below_fires_on_the_way_down():
    assert run(spec(kind="price_below"), ["101", "100", "99", "101", "98"]) == [2, 4]


def test_a_crossing_within_the_cooldown_is_swallowed_and_the_next_one_after_it_fires():
    closes = ["99", "101", "99", "101", "99", "99", "101"]
    # Fires at 1 (second 1000); the one at 3 (3000 < 1000 + 3000) is within 3 s; the one at 6 is not.
    assert run(spec(cooldown_s=3), closes) == [1, 6]


def test_a_redelivered_second_changes_nothing():
    rule = spec()
    state, fired = step(rule, RuleState(), 0, False)
    state, fired = step(rule, state, 1000, True)
    assert fired
    assert step(rule, state, 1000, True) == (state, False)
    assert step(rule, state, 0, False) == (state, False)


def test_the_firing_id_is_the_same_for_the_same_rule_and_second_only():
    assert firing_id(3, 1000) == firing_id(3, 1000)
    assert len({firing_id(3, 1000), firing_id(3, 2000), firing_id(4, 1000)}) == 3


def test_change_percent_compares_against_the_close_a_window_ago_exactly():
    # window 2 s: at second i the reference is the close at second i - 2.
    closes = ["100", "100", "104", "105", "103", "110", "100"]
    fired = run(spec(kind="change_percent", threshold="5", window_s=2), closes)
    changes = [None, None] + [
        Fraction(closes[i]) / Fraction(closes[i - 2]) * 100 - 100 for i in range(2, len(closes))
    ]
    sides = [None if c is None else c >= 5 for c in changes]
    expected = [i for i in range(1, len(sides)) if sides[i] is True and sides[i - 1] is False]
    assert fired == expected == [3]


def test_a_fall_is_a_negative_percent_and_the_message_value_is_rounded_to_eight_places():
    assert change_condition(D("-5"), D("95"), D("100")) is True
    assert change_condition(D("-5"), D("95.01"), D("100")) is False
    assert change_condition(D("5"), D("1"), None) is None
    assert change_percent(D("2"), D("3")) == D("-33.33333333")


def test_the_close_history_answers_the_latest_second_at_or_before_a_time():
    history = CloseHistory()
    for second, close in ((0, "1"), (2000, "2"), (5000, "3")):
        history.add(second, D(close))
    assert history.at_or_before(-1) is None
    assert history.at_or_before(4999) == D("2")
    history.trim(4000)
    assert history.at_or_before(4000) == D("2") and len(history) == 2


def test_portfolio_totals_are_exact_and_unknown_while_a_coin_has_no_close():
    coins = {"btcusdt": D("0.1"), "ethusdt": D("3")}
    assert portfolio_total(coins, {"btcusdt": D("61837.63")}) is None
    assert portfolio_total(coins, {"btcusdt": D("61837.63"), "ethusdt": D("0.3")}) == D("6184.663")


def test_a_portfolio_rule_fires_when_the_total_crosses_whichever_coin_moved():
    evaluation = Evaluation()
    evaluation.set_rules([Rule(1, 7, spec(kind="portfolio_total_above", threshold="1000", symbol=None), 0)])
    evaluation.set_holdings({7: {"btcusdt": D("1"), "ethusdt": D("2")}})
    assert evaluation.apply("btcusdt", 0, D("500")) == []  # eth unknown
    assert evaluation.apply("ethusdt", 0, D("200")) == []  # 900, first known side
    [firing] = evaluation.apply("ethusdt", 1000, D("251"))  # 1002
    assert (firing.value, firing.symbol, firing.second) == (D("1002"), "ethusdt", 1000)
    assert evaluation.apply("btcusdt", 1000, D("400")) == []  # 902, below again
    assert len(evaluation.apply("btcusdt", 2000, D("600"))) == 1


def test_seconds_that_ended_before_the_rule_was_made_are_ignored():
    evaluation = Evaluation()
    evaluation.set_rules([Rule(1, 7, spec(), created_ms=2500)])
    assert evaluation.apply("btcusdt", 1000, D("99")) == []
    assert evaluation.states == {}
    evaluation.apply("btcusdt", 2000, D("99"))
    assert len(evaluation.apply("btcusdt", 3000, D("101"))) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"kind": "price_above", "symbol": "btcusdt"}, "price"),
        ({"kind": "price_above", "symbol": "btcusdt", "price": "-1"}, "greater than zero"),
        ({"kind": "price_above", "symbol": "btcusdt", "price": "1e5"}, "decimal string"),
        ({"kind": "change_percent", "symbol": "btcusdt", "percent": "5", "window": "30s"}, "window"),
        ({"kind": "change_percent", "symbol": "btcusdt", "percent": "5", "window": "25h"}, "window"),
        ({"kind": "change_percent", "symbol": "btcusdt", "percent": "0", "window": "1h"}, "zero"),
        ({"kind": "portfolio_total_above", "total": "5", "symbol": "btcusdt"}, "does not apply"),
        ({"kind": "price_above", "symbol": "btcusdt", "price": "1", "repeat": "twice"}, "repeat"),
        ({"kind": "price_above", "symbol": "btcusdt", "price": "1", "webhook_url": "http://x.test/"}, "https"),
        ({"kind": "nope"}, "kind"),
    ],
)
def test_invalid_rules_are_refused_with_the_reason(body, message):
    with pytest.raises(InvalidAlert, match=message):
        parse_rule(body)


def test_a_valid_rule_is_read_exactly():
    rule = parse_rule(
        {"kind": "change_percent", "symbol": "ETHUSDT", "percent": "-5.50", "window": "1h", "cooldown": "5m"}
    )
    assert rule == RuleSpec("change_percent", "ethusdt", D("-5.5"), 3600, "once", 300)
