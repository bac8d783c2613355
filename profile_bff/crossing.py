"""When an alert rule fires, pure: the crossing decision, ``change_percent`` against the close a window ago,
portfolio totals, and the evaluation of a stream of SecondStats against many rules (:class:`Evaluation`).

Rules (docs/CONTRACTS.md, "Alerts"):

- A rule's condition is evaluated at each SecondStat that concerns it: of its symbol (price and
  ``change_percent`` kinds), or of a symbol its user holds (portfolio kinds). "The previous second" is the
  previous evaluation, i.e. the previous SecondStat (seconds without trades have none).
- ``price_above``: close > price; ``price_below``: close < price (strict: a close equal to the price is on
  neither side of a crossing upwards or downwards).
- ``change_percent`` with percent ``p`` over window ``w``: the change is (close − ref) / ref × 100 where ref is
  the close of the latest second starting at or before ``t − w`` (the close "``w`` ago"); true when the change
  ≥ p for p > 0, ≤ p for p < 0. Compared exactly, without dividing: (close − ref) × 100 against p × ref. Without
  a close that old (history too short), or with ref = 0, the condition is unknown.
- ``portfolio_total_above`` / ``_below``: Σ quantity × latest close over the held coins, exact; unknown while a
  held coin has no close yet; an empty portfolio totals 0.
- A rule **fires** at an evaluation whose condition is true when the previous evaluation's was false
  (not unknown: the first evaluation of a rule, and the first after an unknown one, never fire, so a price that
  was already above when the rule was made gives no alert), unless it is a ``once`` rule that has fired, or the
  cooldown since its last firing has not passed (second < last firing's second + cooldown).
- SecondStats of seconds that ended before the rule was created are ignored, and so are a symbol's seconds
  not newer than its latest applied one (a redelivered record changes nothing); a portfolio rule is
  evaluated again in the same second (several of its coins traded in it). At most one firing per rule and
  second: its id is :func:`firing_id` (rule, second), so storing it twice is storing it once.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from profile_bff.alertrules import (
    CHANGE_PERCENT,
    ONCE,
    PORTFOLIO_KINDS,
    PRICE_ABOVE,
    TOTAL_ABOVE,
    RuleSpec,
)
from profile_bff.portfolio import CONTEXT

_HUNDRED = Decimal(100)
_PERCENT_QUANTUM = Decimal("0.00000001")
SECOND_MS = 1000


def firing_id(rule_id: int, second_ms: int) -> str:
    """The firing's id: ``uuid5(NAMESPACE_URL, "alert/<rule_id>/<second_ms>")`` as text, the same on every
    replica and every redelivery."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"alert/{rule_id}/{second_ms}"))


def price_condition(kind: str, threshold: Decimal, close: Decimal) -> bool:
    """``close > threshold`` for ``price_above`` (and ``portfolio_total_above``), ``<`` for the ``_below``
    kinds."""
    return close > threshold if kind in (PRICE_ABOVE, TOTAL_ABOVE) else close < threshold


def change_condition(percent: Decimal, close: Decimal, ref: Decimal | None) -> bool | None:
    """Whether the change from ``ref`` to ``close`` reaches ``percent`` (module docstring); ``None`` without a
    ``ref`` or with ``ref`` = 0."""
    if ref is None or ref == 0:
        return None
    moved = CONTEXT.multiply(CONTEXT.subtract(close, ref), _HUNDRED)
    wanted = CONTEXT.multiply(percent, ref)
    return moved >= wanted if percent > 0 else moved <= wanted


def change_percent(close: Decimal, ref: Decimal) -> Decimal:
    """(close − ref) / ref × 100 rounded half-even to 8 places (for the alert message; the decision is
    :func:`change_condition`, exact). ``ref`` must not be 0."""
    exact = CONTEXT.divide(CONTEXT.multiply(CONTEXT.subtract(close, ref), _HUNDRED), ref)
    return exact.quantize(_PERCENT_QUANTUM, rounding=ROUND_HALF_EVEN, context=CONTEXT)


def portfolio_total(coins: Mapping[str, Decimal], closes: Mapping[str, Decimal]) -> Decimal | None:
    """Σ quantity × close over ``coins``, exact; ``None`` while a coin has no close."""
    total = Decimal(0)
    for symbol, quantity in coins.items():
        close = closes.get(symbol)
        if close is None:
            return None
        total = CONTEXT.add(total, CONTEXT.multiply(quantity, close))
    return total


@dataclass(frozen=True, slots=True)
class RuleState:
    """What a rule remembers between evaluations: ``second`` (ms) and ``side`` (condition, ``None``
    unknown) of its last evaluation, ``fired_second`` of its last firing, ``done`` once a ``once`` rule has
    fired."""

    second: int | None = None
    side: bool | None = None
    fired_second: int | None = None
    done: bool = False


def step(spec: RuleSpec, state: RuleState, second_ms: int, side: bool | None) -> tuple[RuleState, bool]:
    """The rule's state after an evaluation at ``second_ms`` with condition ``side``, and whether it fires
    (module docstring). A second already evaluated (older, or the same for a symbol rule) changes nothing."""
    if state.second is not None and (
        second_ms < state.second or (second_ms == state.second and spec.kind not in PORTFOLIO_KINDS)
    ):
        return state, False
    cooled = state.fired_second is None or second_ms >= state.fired_second + spec.cooldown_s * SECOND_MS
    fires = state.side is False and side is True and not state.done and cooled
    if state.fired_second == second_ms:
        fires = False  # one firing per rule and second
    return (
        RuleState(
            second=second_ms,
            side=side,
            fired_second=second_ms if fires else state.fired_second,
            done=state.done or (fires and spec.repeat == ONCE),
        ),
        fires,
    )


class CloseHistory:
    """One symbol's closes by second, oldest first, for "the close ``w`` ago"."""

    __slots__ = ("_closes", "_seconds")

    def __init__(self) -> None:
        self._seconds: list[int] = []
        self._closes: list[Decimal] = []

    def __len__(self) -> int:
        return len(self._seconds)

    def add(self, second_ms: int, close: Decimal) -> None:
        """Add a second newer than every one held (older or equal ones are ignored: redeliveries)."""
        if self._seconds and second_ms <= self._seconds[-1]:
            return
        self._seconds.append(second_ms)
        self._closes.append(close)

    def at_or_before(self, second_ms: int) -> Decimal | None:
        """The close of the latest second starting at or before ``second_ms``; ``None`` if none is held."""
        index = bisect.bisect_right(self._seconds, second_ms)
        return self._closes[index - 1] if index else None

    def clear(self) -> None:
        """Forget every close."""
        self._seconds.clear()
        self._closes.clear()

    def trim(self, before_ms: int) -> None:
        """Forget seconds older than ``before_ms`` except the latest of them (still "the close then")."""
        index = bisect.bisect_right(self._seconds, before_ms) - 1
        if index > 0:
            del self._seconds[:index]
            del self._closes[:index]


@dataclass(frozen=True, slots=True)
class Rule:
    """A stored, active rule: its ``id``, ``user_id``, ``spec`` and ``created_ms`` (Unix ms)."""

    id: int
    user_id: int
    spec: RuleSpec
    created_ms: int


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule that fired: ``alert_id`` (:func:`firing_id`), the rule, ``second`` (ms), the ``symbol`` whose
    SecondStat it was and its ``price`` (close), and ``value``: the change in percent (``change_percent``),
    the total (portfolio kinds) or the close."""

    alert_id: str
    rule_id: int
    user_id: int
    kind: str
    symbol: str
    price: Decimal
    second: int
    value: Decimal
    webhook_url: str | None


@dataclass
class Evaluation:
    """Rules and their states against a stream of SecondStats (the evaluator's in-memory part).

    Load it with :meth:`set_rules`, :meth:`set_holdings`, stored states (``states``), latest closes
    (``closes``) and close histories (:meth:`history`); then :meth:`apply` each SecondStat. ``changed`` holds
    the ids of rules whose state changed since the caller last cleared it, ``closes_changed`` the symbols whose
    latest close did.
    """

    states: dict[int, RuleState] = field(default_factory=dict)
    closes: dict[str, tuple[int, Decimal]] = field(default_factory=dict)
    changed: set[int] = field(default_factory=set)
    closes_changed: set[str] = field(default_factory=set)
    _by_symbol: dict[str, list[Rule]] = field(default_factory=dict)
    _portfolio: dict[int, list[Rule]] = field(default_factory=dict)
    _holdings: dict[int, dict[str, Decimal]] = field(default_factory=dict)
    _holders: dict[str, set[int]] = field(default_factory=dict)
    _histories: dict[str, CloseHistory] = field(default_factory=dict)
    _max_window_ms: dict[str, int] = field(default_factory=dict)
    _totals: dict[int, Decimal] = field(default_factory=dict)

    def restore(self, states: Mapping[int, RuleState], closes: Mapping[str, tuple[int, Decimal]]) -> None:
        """Replace the rules' states and the latest closes with stored ones (nothing pending afterwards)."""
        self.states = dict(states)
        self.closes = dict(closes)
        self._totals.clear()
        self.changed.clear()
        self.closes_changed.clear()

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Replace the active rules (states of rules no longer active are dropped)."""
        self._by_symbol, self._portfolio, self._max_window_ms = {}, {}, {}
        active = set()
        for rule in rules:
            active.add(rule.id)
            if rule.spec.kind in PORTFOLIO_KINDS:
                self._portfolio.setdefault(rule.user_id, []).append(rule)
                continue
            assert rule.spec.symbol is not None
            self._by_symbol.setdefault(rule.spec.symbol, []).append(rule)
            if rule.spec.kind == CHANGE_PERCENT and rule.spec.window_s is not None:
                symbol = rule.spec.symbol
                window_ms = rule.spec.window_s * SECOND_MS
                self._max_window_ms[symbol] = max(self._max_window_ms.get(symbol, 0), window_ms)
                self._histories.setdefault(symbol, CloseHistory())
        for rule_id in set(self.states) - active:
            del self.states[rule_id]

    def set_holdings(self, holdings: Mapping[int, Mapping[str, Decimal]]) -> None:
        """Replace the portfolios (user id → symbol → quantity) of users with portfolio rules."""
        self._holdings = {user: dict(coins) for user, coins in holdings.items()}
        self._totals.clear()
        self._holders = {}
        for user, coins in self._holdings.items():
            for symbol in coins:
                self._holders.setdefault(symbol, set()).add(user)

    def rule_ids(self) -> list[int]:
        """The ids of the active rules."""
        return [rule.id for rules in (*self._by_symbol.values(), *self._portfolio.values()) for rule in rules]

    def history_symbols(self) -> dict[str, int]:
        """Symbols whose close history is needed → the longest window over them (ms)."""
        return dict(self._max_window_ms)

    def history(self, symbol: str) -> CloseHistory:
        """The close history of ``symbol`` (created if needed)."""
        return self._histories.setdefault(symbol, CloseHistory())

    def apply(self, symbol: str, second_ms: int, close: Decimal) -> list[Firing]:
        """Evaluate every rule a SecondStat of ``symbol`` at ``second_ms`` with close ``close`` concerns; the
        firings, in rule order. A SecondStat not newer than the symbol's latest applied one was applied
        before (a redelivery) and changes nothing.

        The hot path (tens of thousands of rules a second): a rule whose condition is on the same side as at
        its previous evaluation cannot fire, so only its side is computed and compared; its state is replaced
        only when the side changes (its ``second`` then says when it last did)."""
        latest = self.closes.get(symbol)
        if latest is not None and second_ms <= latest[0]:
            return []
        self.closes[symbol] = (second_ms, close)
        self.closes_changed.add(symbol)
        firings: list[Firing] = []
        states = self.states
        history = self._histories.get(symbol)
        if history is not None:
            history.add(second_ms, close)
            window_ms = self._max_window_ms.get(symbol)
            if window_ms is not None:
                history.trim(second_ms - window_ms)
        refs: dict[int, Decimal | None] = {}
        for rule in self._by_symbol.get(symbol, ()):
            if second_ms + SECOND_MS <= rule.created_ms:
                continue
            spec = rule.spec
            kind = spec.kind
            if kind == PRICE_ABOVE:
                side: bool | None = close > spec.threshold
            elif kind == CHANGE_PERCENT:
                assert spec.window_s is not None and history is not None
                window_ms = spec.window_s * SECOND_MS
                if window_ms not in refs:
                    refs[window_ms] = history.at_or_before(second_ms - window_ms)
                side = change_condition(spec.threshold, close, refs[window_ms])
            else:
                side = close < spec.threshold
            state = states.get(rule.id)
            if state is not None and state.side is side:
                continue
            value = close
            if kind == CHANGE_PERCENT and side is not None:
                ref = refs[spec.window_s * SECOND_MS]  # type: ignore[operator]
                assert ref is not None
                value = change_percent(close, ref)
            self._evaluate(rule, state, second_ms, side, symbol, close, value, firings)
        holders = self._holders.get(symbol)
        if holders:
            totals = self._totals
            moved = None if latest is None else CONTEXT.subtract(close, latest[1])
            prices: dict[str, Decimal] | None = None
            for user in holders:
                rules = self._portfolio.get(user)
                if not rules:
                    continue
                # Kept exact and updated by quantity × the move (one product instead of one per coin).
                total = totals.get(user)
                if total is not None and moved is not None:
                    total = CONTEXT.add(total, CONTEXT.multiply(self._holdings[user][symbol], moved))
                else:
                    if prices is None:
                        prices = {held: price for held, (_, price) in self.closes.items()}
                    total = portfolio_total(self._holdings[user], prices)
                if total is None:
                    totals.pop(user, None)
                else:
                    totals[user] = total
                for rule in rules:
                    if second_ms + SECOND_MS <= rule.created_ms:
                        continue
                    side = None if total is None else price_condition(rule.spec.kind, rule.spec.threshold, total)
                    state = states.get(rule.id)
                    if state is not None and state.side is side:
                        continue
                    self._evaluate(rule, state, second_ms, side, symbol, close, total or Decimal(0), firings)
        return firings

    def _evaluate(
        self,
        rule: Rule,
        state: RuleState | None,
        second_ms: int,
        side: bool | None,
        symbol: str,
        close: Decimal,
        value: Decimal,
        firings: list[Firing],
    ) -> None:
        state = state or RuleState()
        new_state, fires = step(rule.spec, state, second_ms, side)
        if new_state != state:
            self.states[rule.id] = new_state
            self.changed.add(rule.id)
        if fires:
            firings.append(
                Firing(
                    alert_id=firing_id(rule.id, second_ms),
                    rule_id=rule.id,
                    user_id=rule.user_id,
                    kind=rule.spec.kind,
                    symbol=symbol,
                    price=close,
                    second=second_ms,
                    value=value,
                    webhook_url=rule.spec.webhook_url,
                )
            )

