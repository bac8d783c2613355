"""What the alert evaluator (profile_bff/evaluator.py) reads again when the rules change, against an in-memory
alert store: the stored states of the rules that became active and the close histories of symbols newly
watched, and nothing of what was active before (its in-memory state is what is stored)."""

from __future__ import annotations

from decimal import Decimal

from profile_bff.alertrules import RuleSpec
from profile_bff.crossing import Evaluation, Rule, RuleState
from profile_bff.evaluator import AlertEvaluator, EvaluatorSettings

D = Decimal


def price_rule(rule_id: int, symbol: str = "btcusdt") -> Rule:
    return Rule(rule_id, 7, RuleSpec("price_above", symbol, D(100), None, "every_crossing", 0), created_ms=0)


def change_rule(rule_id: int, symbol: str) -> Rule:
    return Rule(rule_id, 7, RuleSpec("change_percent", symbol, D(5), 60, "every_crossing", 0), created_ms=0)


class FakeAlertStore:
    """The evaluator's reads of :class:`profile_bff.alertstore.AlertStore`, recording what was asked."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.stored_states: dict[int, RuleState] = {}
        self.stored_closes: dict[str, list[tuple[int, Decimal]]] = {}
        self.states_asked: list[set[int]] = []
        self.closes_asked: list[str] = []

    async def active_rules(self):
        return list(self.rules), {}

    async def states(self, rule_ids):
        wanted = set(rule_ids)
        self.states_asked.append(wanted)
        return {rule_id: state for rule_id, state in self.stored_states.items() if rule_id in wanted}

    async def closes(self, symbol, since_ms):
        self.closes_asked.append(symbol)
        return list(self.stored_closes.get(symbol, []))


def evaluator(store: FakeAlertStore) -> AlertEvaluator:
    settings = EvaluatorSettings("127.0.0.1:9", "seconds", "alerts")
    return AlertEvaluator(settings, store, bus=None)  # type: ignore[arg-type]


async def refresh(alerts: AlertEvaluator, evaluation: Evaluation) -> None:
    """What the evaluator does when the rules' version changed and no partition was assigned meanwhile."""
    added_rules, added_symbols = await alerts._load_rules(evaluation)
    await alerts._load_added(evaluation, added_rules, added_symbols)


async def test_a_resumed_rule_gets_its_stored_state_and_a_rule_active_before_keeps_its_own_unread():
    store = FakeAlertStore()
    alerts = evaluator(store)
    evaluation = Evaluation()
    store.rules = [price_rule(1)]
    await refresh(alerts, evaluation)
    evaluation.apply("btcusdt", 1000, D(90))
    kept = evaluation.states[1]
    stored_before_pause = RuleState(second=500, side=True, fired_second=500)
    store.stored_states = {1: RuleState(second=0, side=None), 2: stored_before_pause}
    store.states_asked.clear()

    store.rules = [price_rule(1), price_rule(2)]
    await refresh(alerts, evaluation)

    assert store.states_asked == [{2}]
    assert evaluation.states == {1: kept, 2: stored_before_pause}
    assert alerts.loaded_rule_ids == {1, 2}


async def test_a_newly_watched_symbol_gets_its_stored_closes_and_one_watched_before_is_not_read_again():
    store = FakeAlertStore()
    alerts = evaluator(store)
    evaluation = Evaluation()
    store.rules = [change_rule(1, "btcusdt")]
    await refresh(alerts, evaluation)
    assert store.closes_asked == ["btcusdt"]
    store.stored_closes = {"ethusdt": [(0, D(10)), (1000, D(11))]}

    store.rules = [change_rule(1, "btcusdt"), change_rule(2, "btcusdt"), change_rule(3, "ethusdt")]
    await refresh(alerts, evaluation)

    assert store.closes_asked == ["btcusdt", "ethusdt"]
    assert evaluation.history("ethusdt").at_or_before(1000) == D(11)


async def test_rules_paused_or_deleted_read_nothing():
    store = FakeAlertStore()
    alerts = evaluator(store)
    evaluation = Evaluation()
    store.rules = [price_rule(1), change_rule(2, "ethusdt")]
    await refresh(alerts, evaluation)
    store.states_asked.clear()
    store.closes_asked.clear()

    store.rules = [price_rule(1)]
    await refresh(alerts, evaluation)

    assert (store.states_asked, store.closes_asked) == ([], [])
    assert alerts.loaded_rule_ids == {1}
