"""Which followed symbols this aggregator replica streams (pure, no I/O): the ownership decisions of sharing.

Replicas share the followed symbols through a Kafka consumer group (:mod:`aggregator.follows`): the follow topic
(``AGGREGATOR_FOLLOW_TOPIC``, compacted, key = symbol) has ``partitions`` partitions, and a symbol belongs to the
partition Kafka's default partitioner gives its key (murmur2 of the UTF-8 symbol, as the Java client and
aiokafka's ``DefaultPartitioner`` compute it). The replica the group assigns that partition to *owns* the
symbol: it alone streams it while it has followers, and publishes its SecondStats. The owner of partition 0 also
streams the all-market mini-tickers, which are one stream for every symbol.

Redis stays the source of truth of who follows what (:class:`aggregator.store.FollowerStore`); the topic only
carries ownership (its partitions) and change notices. :class:`Ownership` turns the three events a replica sees
into what to start and stop:

- an assignment (:meth:`Ownership.assign`, with the followed symbols read from Redis after it): stop every
  streamed symbol whose partition is no longer assigned, start every followed symbol of an assigned partition
  not streamed yet. Symbols started this way are *taken over*: another replica may have streamed them until
  now, so their first window, which began before the stream did, is not published (see
  :meth:`aggregator.intake.TradeIntake.skip_first_window`);
- a change of a symbol's follower count (:meth:`Ownership.change`): start or stop it if this replica owns it;
- a periodic resync with Redis (:meth:`Ownership.resync`): the same reconciliation as an assignment, for the
  partitions already held (a notice lost between Redis and Kafka is repaired by it).

Streams are not stopped when partitions are revoked but when the next assignment no longer includes them, so a
replica keeps the symbols it keeps across a rebalance without a break (Kafka's eager protocol, the one aiokafka
speaks, revokes every partition of every member at each rebalance). The replica that is assigned a symbol may
start it while the previous owner is still stopping it; both then publish whole seconds of the same trades,
which are the same contents, and the Redis publish is newer-only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.partitioner import murmur2

#: The partition whose owner streams the all-market mini-tickers.
MINI_TICKER_PARTITION = 0


def partition_of(symbol: str, partitions: int) -> int:
    """The partition of the follow topic (``partitions`` > 0 of them) that the record keyed ``symbol`` goes to:
    Kafka's default partitioner, ``(murmur2(key) & 0x7fffffff) % partitions`` (``Utils.toPositive``)."""
    return (murmur2(symbol.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Plan:
    """What to do after an event: ``stop`` these symbols' streams (first), then ``start`` these (sorted both);
    ``taken_over``: started symbols whose first window must not be published (all of ``start`` after an
    assignment, none after a follower change); ``mini_tickers``: whether the mini-ticker stream must run."""

    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    taken_over: bool = False
    mini_tickers: bool = False


class Ownership:
    """The ownership state of one replica: the partitions of the follow topic it is assigned (``assigned``,
    none before the first assignment) and the symbols it streams (``streamed``). The methods return a
    :class:`Plan` and record its outcome, so the caller must carry each plan out before the next call."""

    def __init__(self, partitions: int) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.partitions = partitions
        self.assigned: frozenset[int] = frozenset()
        self.streamed: set[str] = set()

    def owns(self, symbol: str) -> bool:
        """Whether ``symbol``'s partition is assigned to this replica."""
        return partition_of(symbol, self.partitions) in self.assigned

    @property
    def mini_tickers(self) -> bool:
        """Whether this replica streams the mini-tickers (it holds partition :data:`MINI_TICKER_PARTITION`)."""
        return MINI_TICKER_PARTITION in self.assigned

    def assign(self, assigned: Iterable[int], followed: Iterable[str], partitions: int | None = None) -> Plan:
        """A new assignment ``assigned`` (partition numbers), with ``followed`` the symbols that have followers
        (from Redis, read after the assignment): stop what is no longer owned or followed, take over the owned
        followed symbols not streamed yet. ``partitions``: the topic's partition count as the broker has it, if
        known (a topic created earlier with another count than configured is partitioned as it is)."""
        if partitions is not None:
            if partitions < 1:
                raise ValueError("partitions must be >= 1")
            self.partitions = partitions
        self.assigned = frozenset(assigned)
        return self._reconcile(followed)

    def resync(self, followed: Iterable[str]) -> Plan:
        """Reconcile with ``followed`` (every symbol with followers, from Redis) under the current assignment.
        Symbols started here were missed by a notice; nobody else streams them, but they may have been followed
        for a while, so they too skip their first window."""
        return self._reconcile(followed)

    def change(self, symbol: str, followed: bool) -> Plan:
        """``symbol`` now has followers (``followed``) or none: start or stop it if this replica owns it
        (a symbol just followed was streamed by nobody, so its first window is published)."""
        if followed and self.owns(symbol) and symbol not in self.streamed:
            self.streamed.add(symbol)
            return Plan(start=(symbol,), mini_tickers=self.mini_tickers)
        if not followed and symbol in self.streamed:
            self.streamed.discard(symbol)
            return Plan(stop=(symbol,), mini_tickers=self.mini_tickers)
        return Plan(mini_tickers=self.mini_tickers)

    def _reconcile(self, followed: Iterable[str]) -> Plan:
        wanted = {symbol for symbol in followed if self.owns(symbol)}
        stop = tuple(sorted(self.streamed - wanted))
        start = tuple(sorted(wanted - self.streamed))
        self.streamed = wanted
        return Plan(stop=stop, start=start, taken_over=True, mini_tickers=self.mini_tickers)
