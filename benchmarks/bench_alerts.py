"""Alert rules evaluated per second by the evaluator's decision (``profile_bff.crossing.Evaluation``), beside a
ceiling measured in the same run.

Usage::

    .venv/bin/python benchmarks/bench_alerts.py [--users 10000] [--seconds 300] [--repeat 3]

What it does (a few seconds to a minute on 2 cores; no engine needed):

1. Makes ``--users`` users with 5 rules each on 3 symbols (btcusdt, ethusdt, dotusdt): per user a
   ``price_above`` and a ``price_below`` around the symbol's start price, a ``change_percent`` over 1 minute,
   an ``every_crossing`` price rule with a cooldown, and a ``portfolio_total_above`` over the user's 1 to 3
   coins; and ``--seconds`` seconds of closes per symbol (a seeded random walk of ±0.05 % a second). Not timed.
2. ``--repeat`` rounds of, alternately:

   - *Evaluation*: a fresh ``Evaluation`` with those rules and holdings, every SecondStat applied in second
     order (what the evaluator does per polled record, without Kafka and PostgreSQL). Counted: rule
     evaluations, i.e. for each SecondStat the rules of its symbol plus the portfolio rules of its holders.
   - *Ceiling*: the least work those evaluations need: for each SecondStat, one exact ``Decimal`` comparison
     per rule of its symbol and one sum of products per holder of it, in plain loops over prebuilt lists.

   Alternating rounds share the machine's conditions; the medians are compared.

Printed with the conditions (CPU, cores, load average before and after, parameters): evaluations per second of
both, their ratio, and the firings (the same in every round: a check that the rounds did the same work).
What this does not measure: the Kafka poll, the PostgreSQL transaction per batch and the delivery to sockets
(the exactly-once path, tests/integration/test_alerts_exactly_once.py and test_alerts_killed.py). The latency
from a second's close to the alert on a socket, beside the plain price push of the same run, is measured by
``benchmarks/bench_bff.py --alert-users 10000`` (a BFF process with its evaluator, these rules in PostgreSQL,
the SecondStats on Kafka and Redis).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import time
from decimal import Decimal

from profile_bff.alertrules import RuleSpec
from profile_bff.crossing import Evaluation, Rule
from profile_bff.portfolio import CONTEXT

from machine import cpu_model

SYMBOLS = {"btcusdt": Decimal("61837.63"), "ethusdt": Decimal("2682.79"), "dotusdt": Decimal("4.812")}
START_MS = 1_723_161_240_000


def make_rules(
    users: int, rng: random.Random, holdings: dict[int, dict[str, Decimal]] | None = None
) -> tuple[list[Rule], dict[int, dict[str, Decimal]]]:
    """5 rules per user ``1..users`` on the 3 symbols (module docstring) and each user's coins: ``holdings``
    (user → symbol → quantity) if given, else 1 to 3 coins drawn from ``rng``. Returns (rules, coins)."""
    given = holdings
    names = list(SYMBOLS)
    rules: list[Rule] = []
    holdings = {}
    rule_id = 0
    for user in range(1, users + 1):
        symbol = names[user % 3]
        start = SYMBOLS[symbol]
        offset = Decimal(rng.randint(-50, 50)) / 10000
        specs = [
            RuleSpec("price_above", symbol, CONTEXT.multiply(start, 1 + offset), None, "every_crossing", 0),
            RuleSpec("price_below", symbol, CONTEXT.multiply(start, 1 - offset), None, "every_crossing", 0),
            RuleSpec("change_percent", symbol, Decimal("0.1") if user % 2 else Decimal("-0.1"), 60, "every_crossing", 0),
            RuleSpec("price_above", names[(user + 1) % 3], SYMBOLS[names[(user + 1) % 3]], None, "every_crossing", 30),
        ]
        if given is None:
            coins = {name: Decimal(rng.randint(1, 100)) / 10 for name in rng.sample(names, rng.randint(1, 3))}
        else:
            coins = given[user]
        total = sum((CONTEXT.multiply(q, SYMBOLS[s]) for s, q in coins.items()), Decimal(0))
        specs.append(RuleSpec("portfolio_total_above", None, total, None, "every_crossing", 0))
        holdings[user] = coins
        for spec in specs:
            rule_id += 1
            rules.append(Rule(rule_id, user, spec, created_ms=0))
    return rules, holdings


def make_seconds(seconds: int, rng: random.Random) -> list[tuple[str, int, Decimal]]:
    """Closes of every symbol for ``seconds`` seconds, second by second: a random walk of ±0.05 % a second."""
    prices = dict(SYMBOLS)
    stats = []
    for n in range(seconds):
        for symbol in SYMBOLS:
            step = Decimal(rng.randint(-5, 5)) / 10000
            prices[symbol] = CONTEXT.multiply(prices[symbol], 1 + step).quantize(Decimal("0.00000001"))
            stats.append((symbol, START_MS + n * 1000, prices[symbol]))
    return stats


def run_evaluation(rules, holdings, stats) -> tuple[float, int, int]:
    """One evaluation round: (seconds taken, evaluations, firings)."""
    evaluation = Evaluation()
    evaluation.set_rules(rules)
    evaluation.set_holdings(holdings)
    per_symbol = {symbol: 0 for symbol in SYMBOLS}
    holders = {symbol: 0 for symbol in SYMBOLS}
    for rule in rules:
        if rule.spec.symbol is not None:
            per_symbol[rule.spec.symbol] += 1
    for coins in holdings.values():
        for symbol in coins:
            holders[symbol] += 1
    evaluations = sum(per_symbol[symbol] + holders[symbol] for symbol, _, _ in stats)
    firings = 0
    gc.collect()
    started = time.perf_counter()
    for symbol, second, close in stats:
        firings += len(evaluation.apply(symbol, second, close))
    return time.perf_counter() - started, evaluations, firings


def run_ceiling(rules, holdings, stats) -> tuple[float, int]:
    """The ceiling round: (seconds taken, evaluations)."""
    thresholds: dict[str, list[Decimal]] = {symbol: [] for symbol in SYMBOLS}
    for rule in rules:
        if rule.spec.symbol is not None:
            thresholds[rule.spec.symbol].append(rule.spec.threshold)
    portfolios: dict[str, list[list[tuple[str, Decimal]]]] = {symbol: [] for symbol in SYMBOLS}
    for coins in holdings.values():
        items = list(coins.items())
        for symbol in coins:
            portfolios[symbol].append(items)
    latest = dict(SYMBOLS)
    evaluations = 0
    above = 0
    gc.collect()
    started = time.perf_counter()
    for symbol, _second, close in stats:
        latest[symbol] = close
        for threshold in thresholds[symbol]:
            above += close > threshold
        for items in portfolios[symbol]:
            total = Decimal(0)
            for held, quantity in items:
                total += quantity * latest[held]
        evaluations += len(thresholds[symbol]) + len(portfolios[symbol])
    return time.perf_counter() - started, evaluations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load average before: {os.getloadavg()}")
    print(f"parameters: {args.users:,} users x 5 rules on {len(SYMBOLS)} symbols, {args.seconds} s of SecondStats, "
          f"{args.repeat} rounds, seed {args.seed}")
    rng = random.Random(args.seed)
    rules, holdings = make_rules(args.users, rng)
    stats = make_seconds(args.seconds, rng)
    rates, ceilings, firing_counts = [], [], set()
    for round_number in range(1, args.repeat + 1):
        taken, evaluations, firings = run_evaluation(rules, holdings, stats)
        rates.append(evaluations / taken)
        firing_counts.add(firings)
        ceiling_taken, ceiling_evaluations = run_ceiling(rules, holdings, stats)
        assert ceiling_evaluations == evaluations
        ceilings.append(ceiling_evaluations / ceiling_taken)
        print(f"round {round_number}: evaluation {rates[-1]:,.0f} rule evaluations/s ({taken:.2f} s, "
              f"{firings:,} firings); ceiling {ceilings[-1]:,.0f}/s ({ceiling_taken:.2f} s)")
    rate, ceiling = statistics.median(rates), statistics.median(ceilings)
    per_stat = statistics.mean(
        sum(1 for rule in rules if rule.spec.symbol == symbol)
        + sum(1 for coins in holdings.values() if symbol in coins)
        for symbol in SYMBOLS
    )
    print(f"evaluation, median of {args.repeat}: {rate:,.0f} rule evaluations/s "
          f"(= {rate / per_stat:,.1f} SecondStats/s, each evaluating about {per_stat:,.0f} rules)")
    print(f"ceiling, median of {args.repeat}: {ceiling:,.0f} rule evaluations/s")
    print(f"evaluation / ceiling (medians): {rate / ceiling:.0%}")
    print(f"firings per round: {sorted(firing_counts)} (must be one number)")
    print(f"load average after: {os.getloadavg()}")
    return 0 if len(firing_counts) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
