"""User names and passwords: normalisation, validation and bcrypt hashing.

Names are NFKC-normalised (Unicode UAX #15, so full-width ``ａｌｉｃｅ`` is ``alice``), stripped, and must
then be 3..32 characters of ASCII letters, digits, ``_``, ``.`` and ``-``. Uniqueness is case-insensitive:
the store keeps :func:`name_key` (the lowercased name) under a unique constraint, and the name as typed for
display.

Passwords are NFKC-normalised too (NIST SP 800-63B §5.1.1.2), so the same password typed on two keyboards
that compose accents differently is the same password. They need at least 8 characters and at most 72 UTF-8
bytes: bcrypt reads only 72 bytes, and a longer password is refused rather than silently truncated.

Hashing is admission-controlled (:class:`HashQueue`): a check that cannot finish before its caller's deadline
is refused at once with :class:`~auth.errors.Overloaded` and a retry-after hint, instead of waiting in the
queue and timing out (load shedding at the queue's entry, as in "Using load shedding to avoid overload",
Amazon Builders' Library, and CoDel's principle of bounding the time spent queued rather than the length).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import bcrypt

from auth.errors import InvalidArgument, Overloaded

NAME_MIN_CHARS = 3
NAME_MAX_CHARS = 32
PASSWORD_MIN_CHARS = 8
#: bcrypt's input limit (the key schedule of Blowfish takes 72 bytes).
PASSWORD_MAX_BYTES = 72
#: Niceness of the hashing threads (Linux, 0..19): under contention the scheduler favours request handling
#: (this process's event loop, the BFF and PostgreSQL on the same host, each weighted about 3 times a hashing
#: thread at 5), so a burst of logins slows logins down instead of stalling everything else, while hashing
#: still gets a fair share of a host busy with other work (at 10 or more it would starve there).
HASH_THREAD_NICENESS = 5

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")


def normalize_name(raw: str) -> str:
    """The canonical form of a user name: NFKC, stripped, checked.

    Raises :class:`~auth.errors.InvalidArgument` with a message saying which rule failed.
    """
    name = unicodedata.normalize("NFKC", raw).strip()
    if not name:
        raise InvalidArgument("name is required")
    if not NAME_MIN_CHARS <= len(name) <= NAME_MAX_CHARS:
        raise InvalidArgument(f"name must be {NAME_MIN_CHARS} to {NAME_MAX_CHARS} characters long")
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument("name may contain only ASCII letters, digits, '_', '.' and '-'")
    return name


def name_key(name: str) -> str:
    """The uniqueness key of a normalised name: ``"Alice"`` and ``"alice"`` share the key ``"alice"``."""
    return name.lower()


def normalize_password(raw: str) -> bytes:
    """The bytes bcrypt hashes: the NFKC form of ``raw`` in UTF-8.

    Raises :class:`~auth.errors.InvalidArgument` if it is empty, shorter than 8 characters or longer than
    72 UTF-8 bytes.
    """
    password = unicodedata.normalize("NFKC", raw)
    if not password:
        raise InvalidArgument("password is required")
    if len(password) < PASSWORD_MIN_CHARS:
        raise InvalidArgument(f"password must be at least {PASSWORD_MIN_CHARS} characters long")
    encoded = password.encode("utf-8")
    if len(encoded) > PASSWORD_MAX_BYTES:
        raise InvalidArgument(
            f"password must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8 (bcrypt's limit); "
            f"this one has {len(encoded)}"
        )
    return encoded


def candidate_password(raw: str) -> bytes | None:
    """The bytes to check a presented password with, or ``None`` if no stored hash can ever match it.

    Unlike :func:`normalize_password` this applies no length policy beyond bcrypt's own limit, so a change
    of the policy never locks out users whose password predates it.
    """
    encoded = unicodedata.normalize("NFKC", raw).encode("utf-8")
    if not encoded or len(encoded) > PASSWORD_MAX_BYTES:
        return None
    return encoded


#: Weight of the newest observed hash time in the moving average of :class:`HashTimeEstimate`: at 0.2 the
#: estimate follows a change of load within about ten hashes, and one slow hash moves it by a fifth.
HASH_TIME_SMOOTHING = 0.2
#: A refused caller is told to retry after at least this long (s): HTTP's ``Retry-After`` counts whole
#: seconds.
MIN_RETRY_AFTER_S = 1.0

T = TypeVar("T")

#: Monotonic time (``time.monotonic()``, s) by which the current call must be answered; ``None``: no deadline
#: beyond the hasher's maximum queue wait. Set by the transport with :func:`call_deadline`.
_call_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "hash_call_deadline", default=None
)


@contextlib.contextmanager
def call_deadline(remaining_s: float | None) -> Iterator[None]:
    """Within the block, hashing for the current task must finish within ``remaining_s`` seconds from now
    (``None``: no deadline of the caller's). The gRPC servicer sets it from ``context.time_remaining()``, so
    that the use cases in :mod:`auth.users` need not carry deadlines."""
    token = _call_deadline.set(None if remaining_s is None else time.monotonic() + remaining_s)
    try:
        yield
    finally:
        _call_deadline.reset(token)


@dataclass(frozen=True)
class Admit:
    """The check is queued; it is expected to finish ``expected_s`` seconds from now."""

    expected_s: float


@dataclass(frozen=True)
class Refuse:
    """The check cannot finish in time: ``expected_s`` is when it would, ``retry_after_s`` when a new check
    is expected to fit again (whole seconds, at least :data:`MIN_RETRY_AFTER_S`)."""

    expected_s: float
    retry_after_s: float


def admission(
    *, pending: int, workers: int, hash_s: float, budget_s: float, max_wait_s: float
) -> Admit | Refuse:
    """Admit or refuse one more check on a queue of ``workers`` threads holding ``pending`` checks (queued or
    running), each taking ``hash_s`` seconds, when the caller must be answered within ``budget_s`` seconds.

    The new check is expected to finish after the queue ahead of it drains, ``pending × hash_s ÷ workers``,
    plus its own hash, ``hash_s``. If that exceeds ``budget_s`` it is refused, with the time until the queue
    has drained to the length at which a check fits the usual budget ``max_wait_s`` (or to empty, if not even
    one check fits that) as the retry-after hint, rounded up to whole seconds. An idle queue (``pending`` 0)
    admits one check whenever the caller has time left, even if ``hash_s`` exceeds it: the estimate only
    changes by observing checks, so one grown beyond every budget (a burst of other work on the host) would
    otherwise refuse every call forever; the caller's budget still bounds its wait. Pure; ``hash_s`` > 0,
    ``workers`` ≥ 1, ``pending`` ≥ 0.
    """
    expected_s = pending * hash_s / workers + hash_s
    if expected_s <= budget_s or (pending == 0 and budget_s > 0):
        return Admit(expected_s)
    fitting = max(0.0, (max_wait_s / hash_s - 1.0) * workers)
    drain_s = max(0.0, pending - fitting) * hash_s / workers
    return Refuse(expected_s, float(max(MIN_RETRY_AFTER_S, math.ceil(drain_s))))


class HashTimeEstimate:
    """Exponentially weighted moving average of observed hash durations (s), starting at ``initial_s``:
    ``estimate ← estimate + smoothing × (observed − estimate)``. Wall-clock durations, so that contention for
    the CPUs with other work counts. Thread-safe (observed from the worker threads)."""

    def __init__(self, initial_s: float, smoothing: float = HASH_TIME_SMOOTHING) -> None:
        if initial_s <= 0 or not 0 < smoothing <= 1:
            raise ValueError("initial_s must be > 0 and smoothing in (0, 1]")
        self._value = initial_s
        self._smoothing = smoothing
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        """The current estimate of one hash (s)."""
        return self._value

    def observe(self, duration_s: float) -> None:
        """Fold one observed duration (s) into the estimate; non-positive durations are ignored."""
        if duration_s <= 0:
            return
        with self._lock:
            self._value += self._smoothing * (duration_s - self._value)


def _available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def _lower_thread_priority() -> None:
    """Renice the calling thread (Linux ``setpriority`` takes a thread id); elsewhere, leave it as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)
    except (AttributeError, OSError):
        pass


@dataclass
class QueueCounts:
    """What a :class:`HashQueue` did since it started: checks ``admitted``, ``refused`` on arrival,
    ``expired`` (admitted, but their caller's deadline passed first), ``skipped`` (never run because their
    caller was gone by their turn) and ``completed`` (run to the end)."""

    admitted: int = 0
    refused: int = 0
    expired: int = 0
    skipped: int = 0
    completed: int = 0


class HashQueue:
    """A pool of ``workers`` threads running CPU-bound checks, with admission control by deadline.

    :meth:`run` admits a call only if :func:`admission` expects it to finish within its budget: the smaller
    of ``max_wait_s`` and the time left before the caller's deadline (:func:`call_deadline`). A refused call
    raises :class:`~auth.errors.Overloaded` at once. An admitted call that is still unanswered when its
    budget ends also raises ``Overloaded`` then (the estimate was wrong), and its work is skipped if it has
    not started; so is the work of a caller cancelled while it waits (its gRPC call ended). The time of one
    check is estimated by :class:`HashTimeEstimate` from ``initial_hash_s`` on. Must be used from one event
    loop; :meth:`close` stops the threads.
    """

    def __init__(
        self,
        *,
        workers: int,
        max_wait_s: float,
        initial_hash_s: float,
        thread_initializer: Callable[[], None] | None = None,
    ) -> None:
        if workers < 1 or max_wait_s <= 0:
            raise ValueError("workers must be >= 1 and max_wait_s > 0")
        self.workers = workers
        self.max_wait_s = max_wait_s
        self.estimate = HashTimeEstimate(initial_hash_s)
        self.counts = QueueCounts()
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="bcrypt", initializer=thread_initializer
        )

    @property
    def pending(self) -> int:
        """Checks queued or running now."""
        return self._pending

    def close(self) -> None:
        """Stop the threads once the checks in progress are done; queued ones are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, function: Callable[..., T], *args) -> T:
        """``function(*args)`` on a worker thread, if it can be answered in time.

        Raises :class:`~auth.errors.Overloaded` (with ``retry_after_s``) when refused on arrival or when the
        budget ends first; whatever ``function`` raises otherwise.
        """
        budget_s = self._budget_s()
        decision = admission(
            pending=self._pending,
            workers=self.workers,
            hash_s=self.estimate.seconds,
            budget_s=budget_s,
            max_wait_s=self.max_wait_s,
        )
        if isinstance(decision, Refuse):
            self.counts.refused += 1
            raise _overloaded(decision.retry_after_s)
        self.counts.admitted += 1
        with self._lock:
            self._pending += 1
        work = self._executor.submit(self._timed, function, *args)
        work.add_done_callback(self._finished)
        try:
            async with asyncio.timeout(budget_s):
                return await asyncio.wrap_future(work)
        except TimeoutError:
            self.counts.expired += 1
            raise _overloaded(self._retry_after_s()) from None

    def _budget_s(self) -> float:
        deadline = _call_deadline.get()
        if deadline is None:
            return self.max_wait_s
        return min(self.max_wait_s, deadline - time.monotonic())

    def _retry_after_s(self) -> float:
        decision = admission(
            pending=self._pending,
            workers=self.workers,
            hash_s=self.estimate.seconds,
            budget_s=0.0,
            max_wait_s=self.max_wait_s,
        )
        assert isinstance(decision, Refuse)
        return decision.retry_after_s

    def _timed(self, function: Callable[..., T], *args) -> T:
        began = time.perf_counter()
        result = function(*args)
        self.estimate.observe(time.perf_counter() - began)
        return result

    def _finished(self, work: Future) -> None:
        # Runs in the worker thread that finished the work, or in the loop's thread for work cancelled
        # before it started (asyncio cancels the wrapped future when its awaiting caller goes away).
        with self._lock:
            self._pending -= 1
            if work.cancelled():
                self.counts.skipped += 1
            else:
                self.counts.completed += 1


def _overloaded(retry_after_s: float) -> Overloaded:
    return Overloaded(
        f"too many password checks at once; retry in {retry_after_s:.0f} s", retry_after_s=retry_after_s
    )


class PasswordHasher:
    """bcrypt at a fixed cost, run on a :class:`HashQueue` so that hashing never blocks the event loop and
    a check that cannot finish in time is refused at once.

    ``cost`` is bcrypt's log2 work factor (12 takes about 0.25 s on one core). Hashing runs on ``workers``
    threads (default one per CPU the process may run on; bcrypt releases the GIL), at lower priority
    (:data:`HASH_THREAD_NICENESS`).
    ``max_queue_wait_s`` bounds the time a check may take from its arrival, queueing included, besides the
    caller's own deadline (:func:`call_deadline`); beyond either, :meth:`hash`, :meth:`verify` and
    :meth:`verify_unknown` raise :class:`~auth.errors.Overloaded`. :meth:`verify_unknown` spends the same
    time as a real check, against a dummy hash, so that an unknown name and a wrong password cannot be told
    apart by timing. :meth:`close` stops the threads.
    """

    def __init__(self, cost: int, *, max_queue_wait_s: float = 2.0, workers: int | None = None) -> None:
        self.cost = cost
        began = time.perf_counter()
        self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        self.queue = HashQueue(
            workers=workers or _available_cpus(),
            max_wait_s=max_queue_wait_s,
            initial_hash_s=max(time.perf_counter() - began, 1e-6),
            thread_initializer=_lower_thread_priority,
        )

    def close(self) -> None:
        """Stop the hashing threads once the checks in progress are done."""
        self.queue.close()

    async def hash(self, password: bytes) -> str:
        """The modular-crypt bcrypt hash (``$2b$<cost>$<salt+digest>``) of ``password``."""
        hashed = await self.queue.run(bcrypt.hashpw, password, bcrypt.gensalt(self.cost))
        return hashed.decode("ascii")

    async def verify(self, password: bytes | None, stored_hash: str) -> bool:
        """True if ``password`` matches ``stored_hash``; a ``None`` password is checked and fails."""
        if password is None:
            await self.verify_unknown()
            return False
        return await self.queue.run(bcrypt.checkpw, password, stored_hash.encode("ascii"))

    def needs_rehash(self, stored_hash: str) -> bool:
        """True if ``stored_hash`` was made at another cost than the current one (``$2b$<cost>$...``), so
        that raising ``BCRYPT_COST`` upgrades each user's hash at their next successful login."""
        parts = stored_hash.split("$")
        return len(parts) < 3 or parts[2] != f"{self.cost:02d}"

    async def verify_unknown(self) -> None:
        """Spend the time of one check without a user to check against."""
        await self.queue.run(bcrypt.checkpw, b"not the password", self._dummy_hash)
