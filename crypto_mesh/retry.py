"""The mesh's one retry helper: exponential backoff with full jitter, for reconnect loops and one-off calls.

Full jitter (a uniform delay in ``[0, min(cap, base × 2^n)]`` after the ``n``-th consecutive failure; AWS
Architecture Blog, "Exponential Backoff And Jitter") keeps many replicas and many symbols' streams from retrying
in step when a dependency restarts. The delays are tenacity's ``wait_random_exponential``, used two ways:

- :class:`Backoff` for loops that run for ever (the aggregator's gRPC streams and Redis publisher, socket_proxy's
  upstream websockets, the BFF's pub/sub): ``next_delay()`` after each failure, ``reset()`` once the connection
  works again, which a one-shot retry decorator does not model;
- :func:`retrying` for one call retried until it succeeds or a stop condition holds (migrations at start-up,
  ClickHouse/Kafka connects): a tenacity ``AsyncRetrying`` with the same delays and one snake_case log event
  before each pause;
- :class:`RestartPolicy` for a supervised process that exits: restarted after a :class:`Backoff` delay,
  given up on after too many exits in a window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)

from crypto_mesh.logs import get_logger

log = get_logger(__name__)


def raise_if_cancelling() -> None:
    """Raise ``asyncio.CancelledError`` if the running task has been asked to cancel.

    For the loops of background tasks, at the top of every iteration and in the handler of the errors they
    retry on: a library may swallow a cancellation (seen with redis-py's pipeline: the task was left
    "cancelling" and went on publishing) or turn it into one of its own errors (Python 3.11's
    ``asyncio.timeout`` raises ``TimeoutError`` when the task is cancelled as the timeout expires, and
    clients wrap that in theirs). The loop would then go on for ever, and whoever awaits the cancelled task
    (a service's ``stop()``) would wait for ever. ``Task.cancelling()`` stays above zero in both cases.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Backoff:
    """Delays in seconds for a reconnect loop: ``next_delay()`` after each failure, ``reset()`` after a success.

    ``base_s`` caps the first delay, ``max_s`` every delay (ValueError unless ``0 < base_s <= max_s``).
    """

    def __init__(self, base_s: float = 0.1, max_s: float = 10.0) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError("need 0 < base_s <= max_s")
        self.base_s = base_s
        self.max_s = max_s
        self.failures = 0
        self.wait = wait_random_exponential(multiplier=base_s, max=max_s)

    def delay_for(self, failures: int) -> float:
        """The delay after ``failures`` consecutive failures (0-based): uniform in
        ``[0, min(max_s, base_s × 2^failures)]``."""
        return self.wait(_AttemptNumber(min(failures, 64) + 1))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the cap, up to ``max_s``."""
        delay = self.delay_for(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Start again from ``base_s`` (the connection worked)."""
        self.failures = 0


@dataclass
class RestartPolicy:
    """When to restart one process that exited unexpectedly and when to give up on it (``crypto-mesh up``'s
    supervisor, :mod:`launcher.supervisor`; a service's worker processes, :mod:`crypto_mesh.workers`).

    :meth:`crashed` is called with the (monotonic) time of each unexpected exit; it returns the delay in
    seconds before the next start (:class:`~crypto_mesh.retry.Backoff` over the exits still within
    ``window_s``: uniform in ``[0, min(max_s, base_s × 2^(n-1))]`` for the ``n``-th), or None when this exit is
    the ``max_crashes``-th within the last ``window_s`` seconds: give up.
    """

    max_crashes: int = 5
    window_s: float = 60.0
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.5, max_s=10.0))
    _crashes: list[float] = field(default_factory=list, init=False, repr=False)

    def crashed(self, at: float) -> float | None:
        self._crashes = [t for t in self._crashes if at - t < self.window_s] + [at]
        if len(self._crashes) >= self.max_crashes:
            return None
        return self.backoff.delay_for(len(self._crashes) - 1)

    @property
    def recent(self) -> int:
        """How many exits the current window holds."""
        return len(self._crashes)


class _AttemptNumber:
    """The one field of tenacity's ``RetryCallState`` that its wait strategies read."""

    __slots__ = ("attempt_number",)

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


def retrying(
    event: str,
    *,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    base_s: float = 0.2,
    max_s: float = 10.0,
    stop_when: Callable[[], bool] | None = None,
    sleep: Callable[[float], Awaitable[Any]] | None = None,
    **fields: Any,
) -> AsyncRetrying:
    """A tenacity ``AsyncRetrying`` over one call: ``async for attempt in retrying(...): with attempt: ...``.

    Retries on exceptions of ``retry_on`` (others propagate at once) with :class:`Backoff`'s delays (``base_s``,
    ``max_s``), for ever or until ``stop_when()`` is true after a failure; then the last error is raised again
    (``reraise``). Before each pause it logs ``event`` (a snake_case word, e.g. ``"auth_migrations_retrying"``) at
    WARNING with ``attempt``, ``retry_in_s``, ``error`` and ``fields``. ``sleep`` replaces ``asyncio.sleep``
    (e.g. a pause that ends early when the service stops). A task asked to cancel makes no further attempt,
    even if the call swallowed the cancellation or turned it into one of the ``retry_on`` errors
    (:func:`raise_if_cancelling`).
    """
    pause = sleep or asyncio.sleep

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            event,
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 3),
            error=f"{type(error).__name__}: {error}",
            **fields,
        )

    async def pause_unless_cancelling(seconds: float) -> None:
        raise_if_cancelling()
        await pause(seconds)

    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        wait=Backoff(base_s, max_s).wait,
        stop=(lambda _state: stop_when()) if stop_when is not None else stop_never,
        before_sleep=before_sleep,
        reraise=True,
        sleep=pause_unless_cancelling,
    )
