"""The bounded buffer between the real-time path and a Kafka producer (:class:`aggregator.store.KafkaSink`):
pure, no I/O.

The real-time path never waits on Kafka, so the buffer has a size and, when full, drops its oldest record (a
record of a second long past is worth less than the newest). A record whose delivery failed is not lost: it
goes back to the front, to be sent again before the records that came after it.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SendBuffer(Generic[T]):
    """Records waiting to be sent, oldest first, at most ``maxsize`` (≥ 1) of them.

    :attr:`dropped` counts the records the buffer gave up: the oldest one when a record is submitted to a full
    buffer, or a record given back (:meth:`give_back`) after a failed delivery while the buffer is full (it is
    then the oldest record there is).
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self.maxsize = maxsize
        self._records: deque[T] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._records)

    def submit(self, record: T) -> None:
        """Queue ``record`` last; when the buffer is full, the oldest record is dropped to make room."""
        if len(self._records) >= self.maxsize:
            self._records.popleft()
            self.dropped += 1
        self._records.append(record)

    def take(self) -> T:
        """The oldest record, removed from the buffer; ``IndexError`` when empty."""
        return self._records.popleft()

    def take_up_to(self, limit: int) -> list[T]:
        """The oldest ``limit`` records (all of them when fewer), oldest first, removed from the buffer."""
        records = self._records
        return [records.popleft() for _ in range(min(limit, len(records)))]

    def give_back_all(self, records: list[T]) -> None:
        """Put ``records`` (oldest first), whose delivery failed, back at the front in their order, as
        :meth:`give_back` does one: when the buffer fills up meanwhile, the oldest of them are dropped."""
        for record in reversed(records):
            self.give_back(record)

    def give_back(self, record: T) -> None:
        """Put ``record``, whose delivery failed, back at the front, to be taken before every record queued
        now; when the buffer is full, ``record`` is older than all of them and is dropped instead."""
        if len(self._records) >= self.maxsize:
            self.dropped += 1
            return
        self._records.appendleft(record)
