"""The ETL's batch policy, pure: what a batch of Kafka records holds, when it closes, which offsets it commits
or gives back, and how much one poll may take. No Kafka or ClickHouse here: the loop in :mod:`etl.consumer`
moves records between aiokafka and these values (and decodes them, and inserts them).

A partition is named ``(topic, partition)`` (aiokafka's ``TopicPartition`` is such a named tuple), offsets are
Kafka offsets, and times are monotonic seconds (``time.monotonic()``). The rules:

- Each topic has one open batch. It opens with its first record and is due once it holds ``max_rows``
  records (``ETL_BATCH_MAX_ROWS``) or its first record is ``max_age_ms`` old (``ETL_BATCH_MAX_AGE_MS``),
  whichever comes first; an empty batch is never due.
- One insert at a time: a due batch is inserted at once if no insert is in flight, else as soon as that one
  is acknowledged (it could not go sooner). Until then it keeps taking records, up to ``max_rows``
  (:meth:`Batch.ready`): when inserting is slower than polling, batches grow to ``max_rows`` instead of
  closing small by age, and fewer, larger inserts load faster; the first record waits no longer.
- A batch counts every record taken, decoded or dead-lettered, and its offsets cover both, so committing moves
  past the dead letters too.
- Its commit, made only once the batch is inserted (the loop's part), is the next record to read in each
  partition: the batch's last offset there + 1 (Kafka's convention for committed offsets).
- Given back (when an insert fails and only the failing batch is to be held): the open batches are dropped and
  each of their partitions is read again from the batch's first offset there (:attr:`Batch.first_offsets`).
- Backpressure: one poll takes at most ``max_rows`` minus the size of the fullest open batch
  (:meth:`BatchPolicy.room`), so no batch ever holds more than ``max_rows``; and it waits no longer than the
  oldest open batch has left before it is due (:meth:`BatchPolicy.poll_timeout_ms`), a batch already due and
  waiting for the insert in flight aside.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: A Kafka partition: ``(topic, partition number)``.
Partition = tuple[str, int]


@dataclass(frozen=True)
class BatchPolicy:
    """When a batch closes: ``max_rows`` records or ``max_age_ms`` milliseconds after its first record,
    whichever comes first (both at least 1)."""

    max_rows: int
    max_age_ms: int

    def room(self, batches: Iterable[Batch]) -> int:
        """How many records the next poll may take, at most: what the fullest of the open ``batches`` (one per
        topic) has room for. At least 1 once every due batch has been closed."""
        return self.max_rows - max((batch.size for batch in batches), default=0)

    def poll_timeout_ms(
        self, batches: Iterable[Batch], now: float, longest_ms: int, inserting: bool = False
    ) -> int:
        """How long the next poll may wait for records (whole ms, at least 0): ``longest_ms``, or less if one
        of the open ``batches`` is due sooner, so that it closes on time. With ``inserting`` (an insert is in
        flight), a batch already due does not shorten the wait: it waits for that insert anyway (the caller
        passes a short ``longest_ms`` then, to notice the acknowledgement soon)."""
        ages_left = [self.max_age_ms - batch.age_ms(now) for batch in batches if batch.size]
        if inserting:
            ages_left = [left for left in ages_left if left > 0]
        return max(0, int(min([longest_ms, *ages_left])))


@dataclass
class Batch:
    """The positions of one topic's records taken from Kafka and not yet committed.

    ``size``: records taken; ``opened_at``: when the first of them was (monotonic s, None while empty);
    ``first_offsets``/``last_offsets``: per partition, the first and the last offset taken.
    """

    topic: str
    policy: BatchPolicy
    size: int = 0
    opened_at: float | None = None
    first_offsets: dict[Partition, int] = field(default_factory=dict)
    last_offsets: dict[Partition, int] = field(default_factory=dict)

    def add(
        self, partition: Partition, first_offset: int, last_offset: int, records: int, now: float
    ) -> None:
        """Take a run of ``records`` (at least 1) consecutive records of one partition of this topic, from
        ``first_offset`` to ``last_offset``, polled at ``now``. Raises ``ValueError`` for another topic's
        partition or an empty run."""
        if partition[0] != self.topic:
            raise ValueError(f"partition {partition} is not of topic {self.topic!r}")
        if records < 1:
            raise ValueError("a run holds at least one record")
        self.first_offsets.setdefault(partition, first_offset)
        self.last_offsets[partition] = last_offset
        if self.opened_at is None:
            self.opened_at = now
        self.size += records

    def age_ms(self, now: float) -> float:
        """Milliseconds since the first record was taken at ``now``; 0 while empty."""
        return (now - self.opened_at) * 1000 if self.opened_at is not None else 0.0

    @property
    def full(self) -> bool:
        """True once the batch holds ``max_rows`` records: a poll may add nothing to it."""
        return self.size >= self.policy.max_rows

    def should_close(self, now: float) -> bool:
        """True if the batch is due at ``now``: not empty, and full or old enough."""
        return self.size > 0 and (self.full or self.age_ms(now) >= self.policy.max_age_ms)

    def ready(self, now: float, inserting: bool) -> bool:
        """True if the batch is to be inserted now, ``inserting`` telling whether an insert is in flight: it
        is due (:meth:`should_close`) and either nothing is in flight or it is full (then the caller waits
        for the insert in flight and inserts it next). A due batch that is not full waits for that insert
        while it keeps taking records."""
        return self.should_close(now) and (not inserting or self.full)

    def commit_offsets(self) -> dict[Partition, int]:
        """Offsets to commit once the batch is inserted: the next record to read in each partition, its last
        offset + 1."""
        return {partition: offset + 1 for partition, offset in self.last_offsets.items()}

    def deduplication_token(self, digest: str) -> str:
        """The batch's ``insert_deduplication_token``: ``<topic>:<partition>:<first offset>-<last offset>
        [,<partition>:...]:<digest>``, partitions in order (docs/ANALYTICS.md, "Exactly once").

        The offsets name the runs of records; ``digest`` (of the message ids, computed by the caller) keeps
        the token from matching a different run that reuses those offsets (a topic recreated on a broker with
        memory storage starts again at 0). Raises ``ValueError`` if the batch is empty.
        """
        if not self.size:
            raise ValueError("an empty batch is never inserted")
        runs = ",".join(
            f"{partition[1]}:{self.first_offsets[partition]}-{self.last_offsets[partition]}"
            for partition in sorted(self.first_offsets, key=lambda partition: partition[1])
        )
        return f"{self.topic}:{runs}:{digest}"
