"""Admission control of auth's password-hashing queue: the pure decision (:func:`auth.passwords.admission`),
the moving average of hash times, and :class:`auth.passwords.HashQueue` with real threads running functions
that block until the test releases them (so nothing here depends on how fast the machine is).

The end-to-end behaviour (a login storm through the BFF answered 503 with Retry-After at once):
tests/test_login_storm.py.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from auth.errors import Overloaded, Unavailable
from auth.passwords import (
    MIN_RETRY_AFTER_S,
    Admit,
    HashQueue,
    HashTimeEstimate,
    Refuse,
    admission,
    call_deadline,
)
from support.polling import eventually

# -- the decision ----------------------------------------------------------------------------------------


def test_an_idle_queue_admits_a_check_that_fits_the_budget():
    assert admission(pending=0, workers=2, hash_s=0.25, budget_s=2.0, max_wait_s=2.0) == Admit(0.25)


def test_the_expected_finish_is_the_queue_ahead_shared_by_the_workers_plus_one_hash():
    decision = admission(pending=6, workers=2, hash_s=0.25, budget_s=2.0, max_wait_s=2.0)
    assert decision == Admit(6 * 0.25 / 2 + 0.25)


def test_a_check_expected_to_finish_after_the_budget_is_refused():
    decision = admission(pending=20, workers=2, hash_s=0.25, budget_s=2.0, max_wait_s=2.0)
    assert isinstance(decision, Refuse)
    assert decision.expected_s == pytest.approx(20 * 0.25 / 2 + 0.25)


def test_a_check_finishing_exactly_at_the_budget_is_admitted():
    assert isinstance(admission(pending=14, workers=2, hash_s=0.25, budget_s=2.0, max_wait_s=2.0), Admit)
    assert isinstance(admission(pending=15, workers=2, hash_s=0.25, budget_s=2.0, max_wait_s=2.0), Refuse)


def test_a_short_caller_deadline_refuses_what_the_maximum_wait_would_admit():
    assert isinstance(admission(pending=4, workers=2, hash_s=0.25, budget_s=2.0, max_wait_s=2.0), Admit)
    assert isinstance(admission(pending=4, workers=2, hash_s=0.25, budget_s=0.5, max_wait_s=2.0), Refuse)


def test_an_idle_queue_admits_one_check_beyond_the_budget_so_that_the_estimate_can_recover():
    assert admission(pending=0, workers=2, hash_s=3.0, budget_s=2.0, max_wait_s=2.0) == Admit(3.0)
    assert isinstance(admission(pending=1, workers=2, hash_s=3.0, budget_s=2.0, max_wait_s=2.0), Refuse)


def test_a_caller_whose_deadline_has_passed_is_refused_even_on_an_idle_queue():
    assert isinstance(admission(pending=0, workers=4, hash_s=0.01, budget_s=-0.1, max_wait_s=2.0), Refuse)


def test_retry_after_is_the_time_to_drain_the_queue_to_where_a_check_fits_again():
    # 2 workers, 0.25 s a hash, 2 s of wait: a check fits behind (2 / 0.25 - 1) × 2 = 14 pending; from 54,
    # 40 must drain at 8 per second: 5 s.
    decision = admission(pending=54, workers=2, hash_s=0.25, budget_s=2.0, max_wait_s=2.0)
    assert decision == Refuse(expected_s=54 * 0.25 / 2 + 0.25, retry_after_s=5.0)


def test_retry_after_is_rounded_up_to_whole_seconds_and_at_least_the_minimum():
    assert admission(pending=56, workers=2, hash_s=0.25, budget_s=2.0, max_wait_s=2.0).retry_after_s == 6.0
    barely = admission(pending=15, workers=2, hash_s=0.25, budget_s=2.0, max_wait_s=2.0)
    assert barely.retry_after_s == MIN_RETRY_AFTER_S


def test_when_not_even_one_check_fits_the_maximum_wait_retry_after_is_the_time_to_empty_the_queue():
    decision = admission(pending=8, workers=1, hash_s=3.0, budget_s=2.0, max_wait_s=2.0)
    assert decision.retry_after_s == 24.0


# -- the estimate of one hash ------------------------------------------------------------------------------


def test_the_estimate_starts_at_the_initial_time_and_moves_a_fraction_towards_each_observation():
    estimate = HashTimeEstimate(0.2, smoothing=0.25)
    assert estimate.seconds == 0.2
    estimate.observe(0.6)
    assert estimate.seconds == pytest.approx(0.3)
    estimate.observe(0.3)
    assert estimate.seconds == pytest.approx(0.3)


def test_the_estimate_converges_on_a_new_steady_hash_time():
    estimate = HashTimeEstimate(0.25)
    for _ in range(60):
        estimate.observe(1.0)
    assert estimate.seconds == pytest.approx(1.0, rel=1e-4)


def test_a_non_positive_observation_leaves_the_estimate_unchanged():
    estimate = HashTimeEstimate(0.25)
    estimate.observe(0.0)
    estimate.observe(-1.0)
    assert estimate.seconds == 0.25


@pytest.mark.parametrize(("initial_s", "smoothing"), [(0.0, 0.2), (-1.0, 0.2), (0.1, 0.0), (0.1, 1.5)])
def test_an_estimate_with_a_meaningless_parameter_is_refused(initial_s, smoothing):
    with pytest.raises(ValueError):
        HashTimeEstimate(initial_s, smoothing)


# -- the queue -----------------------------------------------------------------------------------------------


class Gate:
    """Work for the queue that blocks until opened, and records which calls ran."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self.started: list[str] = []

    def work(self, label: str) -> str:
        self.started.append(label)
        if not self._open.wait(timeout=60):
            raise RuntimeError("the test never opened the gate")
        return label

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def gate():
    gate = Gate()
    yield gate
    gate.open()


@pytest.fixture
def queue():
    queue = HashQueue(workers=1, max_wait_s=30.0, initial_hash_s=0.001)
    yield queue
    queue.close()


async def test_an_admitted_check_returns_what_its_function_returns(queue, gate):
    gate.open()
    assert await queue.run(gate.work, "a") == "a"
    assert (queue.counts.admitted, queue.counts.completed, queue.pending) == (1, 1, 0)


async def test_a_full_queue_refuses_at_once_without_running_the_work(queue, gate):
    queue.estimate = HashTimeEstimate(10.0)  # each check is believed to take 10 s, and 30 s may be waited
    running = [asyncio.create_task(queue.run(gate.work, f"admitted-{i}")) for i in range(3)]
    await eventually(lambda: queue.pending == 3)

    with pytest.raises(Overloaded) as refused:
        await queue.run(gate.work, "refused")

    assert isinstance(refused.value, Unavailable)
    assert refused.value.retry_after_s >= MIN_RETRY_AFTER_S
    assert "retry in" in str(refused.value)
    assert queue.counts.refused == 1 and queue.pending == 3
    gate.open()
    assert await asyncio.gather(*running) == ["admitted-0", "admitted-1", "admitted-2"]
    assert "refused" not in gate.started


async def test_the_callers_deadline_is_the_budget_when_it_is_shorter_than_the_maximum_wait(queue, gate):
    queue.estimate = HashTimeEstimate(1.0)
    blocker = asyncio.create_task(queue.run(gate.work, "blocker"))
    await eventually(lambda: gate.started == ["blocker"])

    with call_deadline(0.5), pytest.raises(Overloaded):
        await queue.run(gate.work, "too late")  # expected after 2 s
    assert queue.counts.refused == 1
    in_time = asyncio.create_task(queue.run(gate.work, "in time"))  # within the maximum wait of 30 s
    await eventually(lambda: queue.pending == 2)
    gate.open()

    assert await asyncio.gather(blocker, in_time) == ["blocker", "in time"]
    assert "too late" not in gate.started


async def test_a_check_still_queued_when_its_budget_ends_is_answered_then_and_never_run(queue, gate):
    blocker = asyncio.create_task(queue.run(gate.work, "blocker"))
    await eventually(lambda: gate.started == ["blocker"])

    # Admitted on the estimate of 1 ms a check, but the worker is held by the blocker.
    with call_deadline(0.2), pytest.raises(Overloaded) as expired:
        await queue.run(gate.work, "waiting")

    assert expired.value.retry_after_s >= MIN_RETRY_AFTER_S
    assert queue.counts.expired == 1
    gate.open()
    assert await blocker == "blocker"
    await eventually(lambda: queue.pending == 0)
    assert gate.started == ["blocker"]
    assert queue.counts.skipped == 1


async def test_a_check_whose_caller_is_gone_is_skipped(queue, gate):
    blocker = asyncio.create_task(queue.run(gate.work, "blocker"))
    await eventually(lambda: gate.started == ["blocker"])
    abandoned = asyncio.create_task(queue.run(gate.work, "abandoned"))
    await eventually(lambda: queue.pending == 2)

    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned

    await eventually(lambda: queue.counts.skipped == 1)
    assert queue.pending == 1
    gate.open()
    await blocker
    await eventually(lambda: queue.pending == 0)
    assert gate.started == ["blocker"]


async def test_the_estimate_follows_the_observed_time_of_the_work(queue, gate):
    queue.estimate = HashTimeEstimate(20.0)
    gate.open()
    await queue.run(gate.work, "quick")
    assert queue.estimate.seconds < 20.0


async def test_an_exception_of_the_work_reaches_the_caller_and_frees_its_place(queue):
    def failing() -> None:
        raise ValueError("bad salt")

    with pytest.raises(ValueError, match="bad salt"):
        await queue.run(failing)
    assert queue.pending == 0 and queue.counts.completed == 1


@pytest.mark.parametrize(("workers", "max_wait_s"), [(0, 1.0), (1, 0.0), (2, -1.0)])
def test_a_queue_with_a_meaningless_size_or_wait_is_refused(workers, max_wait_s):
    with pytest.raises(ValueError):
        HashQueue(workers=workers, max_wait_s=max_wait_s, initial_hash_s=0.1)
