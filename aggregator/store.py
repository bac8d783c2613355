"""The aggregator's I/O with Redis and Kafka: followers, SecondStat publishing, mini-ticker records.

Redis (docs/CONTRACTS.md, "Redis"):

- channel ``<symbol>``: each SecondStat JSON, once;
- key ``price:<symbol>``: the latest SecondStat JSON (no expiry);
- list ``seconds:<symbol>{price:<symbol>}``: the latest :data:`RECENT_SECONDS` SecondStat JSONs, oldest first
  (no expiry), from which the BFF makes its newest candles current before ClickHouse has the seconds;
- sets ``aggregator:followers:<symbol>{aggregator:symbols}`` (followers of a symbol) and ``aggregator:symbols``
  (symbols with at least one follower);
- hashes ``ticker:24h`` (symbol → its latest 24 h ticker JSON) and ``ticker:24h:event_time{ticker:24h}``
  (symbol → that ticker's event time ``E``), written newer-only by :class:`TickerStore`.

Keys written together by one script share a hash tag: the ``{…}`` suffix names the key they go
with (whose own name has no tag), so on a Redis Cluster they hash to that key's slot
(:mod:`crypto_mesh.redisclient`).

Kafka: topic ``binance.miniticker``, key = symbol, value = KafkaMsg JSON.

Neither broker may stall the real-time path: SecondStats, mini-ticker records and 24 h tickers go through
bounded buffers that never block the caller, drained by background tasks that reconnect with backoff.
"""

from __future__ import annotations

import asyncio
import functools
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Histogram
from redis.exceptions import RedisError

from aggregator.backfill import ResumePoint
from aggregator.secondstat import SecondStat
from aggregator.sendbuffer import SendBuffer
from aggregator.tickers import KafkaMsg, LatestTickers, day_ticker_json
from crypto_mesh import jsonutil
from crypto_mesh.binance import MiniTicker
from crypto_mesh.kafka import MINI_TICKER_TOPIC, ensure_topics
from crypto_mesh.logs import get_logger
from crypto_mesh.redisclient import PRICE_KEY_PREFIX, RedisClient, connect, mget, run_scripts, seconds_key
from crypto_mesh.retry import Backoff, raise_if_cancelling, retrying

log = get_logger(__name__)

T = TypeVar("T")

SYMBOLS_KEY = "aggregator:symbols"
FOLLOWERS_KEY_PREFIX = "aggregator:followers:"


def followers_key(symbol: str) -> str:
    """The set of ``symbol``'s followers, ``aggregator:followers:<symbol>{aggregator:symbols}``: in the slot
    of :data:`SYMBOLS_KEY`, which every follower script changes with it."""
    return f"{FOLLOWERS_KEY_PREFIX}{symbol}{{{SYMBOLS_KEY}}}"


#: Attempts of :meth:`FollowerStore.set_follower` while other writers keep adding symbols between its read
#: of the tracked symbols and its script.
SET_FOLLOWER_ATTEMPTS = 10

#: SecondStats kept in each ``seconds:<symbol>{price:<symbol>}`` list: 5 minutes of a symbol trading every
#: second, far more than the second or two that Kafka and the ETL's batches put between a published second
#: and ClickHouse, and enough to bridge a restart of the ETL. About 200 bytes each.
RECENT_SECONDS = 300

#: Partitions of ``binance.miniticker`` when the aggregator creates it; records of a symbol share one.
MINI_TICKER_PARTITIONS = 3

#: Stats pipelined to Redis per round trip.
PUBLISH_BATCH = 256

#: Buckets (s) of the close → Redis publish latency histogram: fine below the 50 ms goal.
PUBLISH_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 1, 5)

# KEYS[1]: the symbol's followers, KEYS[2]: aggregator:symbols; ARGV: follower, symbol. Adds the follower and
# tracks the symbol in one step; returns the symbol's follower count.
_ADD_FOLLOWER = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return redis.call('SCARD', KEYS[1])
"""

# Removing the last follower and the symbol from the tracked set must be one step, or a concurrent PUT could
# leave a followed symbol out of aggregator:symbols (and untracked after a restart).
_REMOVE_FOLLOWER = """
redis.call('SREM', KEYS[1], ARGV[1])
local n = redis.call('SCARD', KEYS[1])
if n == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return n
"""

# SET + PUBLISH only if the stat is newer than the stored latest price, and append it to the capped list of
# recent seconds (KEYS[2], at most ARGV[4] entries). A retry after an ambiguous failure (the connection
# dropped after Redis ran the commands) thus never republishes a second nor lists it twice, the latest price
# never goes back in time, and the list stays in the order of the seconds.
_PUBLISH_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  local stored_second = ok and type(decoded) == 'table' and tonumber(decoded['t'])
  if stored_second and stored_second >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
"""


# Set one follower's whole symbol set in one step (the bulk form of add/remove, for rebuilding the followers
# from the portfolios): leave every tracked symbol not wanted (dropping a symbol whose last follower this was
# from KEYS[1]), join every wanted one. KEYS[1]: aggregator:symbols; KEYS[2..]: the followers sets of the
# symbols ARGV[3..] in the same order, the first ARGV[2] of them wanted, the others tracked when the caller
# read KEYS[1]. ARGV[1]: follower. Returns {symbols released (no follower left), follower counts of the wanted
# symbols in order}, or nil when a symbol is tracked whose set the caller did not pass (tracked since its
# read; the caller reads again and retries), so that every key the script touches is one of its KEYS.
_SET_FOLLOWER = """
local wanted_count = tonumber(ARGV[2])
local key_of, wanted = {}, {}
for i = 3, #ARGV do
  key_of[ARGV[i]] = KEYS[i - 1]
  if i - 2 <= wanted_count then wanted[ARGV[i]] = true end
end
local tracked = redis.call('SMEMBERS', KEYS[1])
for _, symbol in ipairs(tracked) do
  if not key_of[symbol] then return nil end
end
local released = {}
for _, symbol in ipairs(tracked) do
  if not wanted[symbol] then
    local key = key_of[symbol]
    if redis.call('SREM', key, ARGV[1]) == 1 and redis.call('SCARD', key) == 0 then
      redis.call('SREM', KEYS[1], symbol)
      table.insert(released, symbol)
    end
  end
end
local counts = {}
for i = 3, 2 + wanted_count do
  redis.call('SADD', KEYS[i - 1], ARGV[1])
  redis.call('SADD', KEYS[1], ARGV[i])
  table.insert(counts, redis.call('SCARD', KEYS[i - 1]))
end
return {released, counts}
"""


def connect_redis(url: str) -> RedisClient:
    """A Redis client for ``url`` (``redis://host:port/db``, or a cluster URL of
    :func:`crypto_mesh.redisclient.connect`) with short connect timeouts, so that calls fail fast while Redis
    is down instead of hanging a request or the publisher. No connection is made yet."""
    return connect(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=15)


class FollowerStore:
    """Followers of each symbol, in Redis sets: a symbol is tracked while it has at least one follower.

    Every method raises ``redis.exceptions.RedisError`` (or ``OSError``) if Redis is unreachable.
    """

    def __init__(self, client: RedisClient) -> None:
        self._redis = client
        self._add = client.register_script(_ADD_FOLLOWER)
        self._remove = client.register_script(_REMOVE_FOLLOWER)
        self._set = client.register_script(_SET_FOLLOWER)

    async def add(self, symbol: str, follower: str) -> int:
        """Add ``follower`` to ``symbol`` (idempotent); returns the symbol's follower count."""
        count = await self._add(keys=[followers_key(symbol), SYMBOLS_KEY], args=[follower, symbol])
        return int(count)

    async def remove(self, symbol: str, follower: str) -> int:
        """Remove ``follower`` from ``symbol`` (idempotent); returns the remaining count (0: untracked)."""
        count = await self._remove(keys=[followers_key(symbol), SYMBOLS_KEY], args=[follower, symbol])
        return int(count)

    async def set_follower(self, follower: str, symbols: list[str]) -> tuple[dict[str, int], list[str]]:
        """Make ``symbols`` (normalised, distinct) exactly the symbols ``follower`` follows, atomically and
        idempotently. Returns (follower count of each of ``symbols``, symbols left without any follower).
        Raises ``RedisError`` too if other writers added symbols between each of
        :data:`SET_FOLLOWER_ATTEMPTS` reads of the tracked symbols and the script that follows it."""
        for _attempt in range(SET_FOLLOWER_ATTEMPTS):
            tracked = {member.decode() for member in await self._redis.smembers(SYMBOLS_KEY)}
            named = [*symbols, *sorted(tracked.difference(symbols))]
            result = await self._set(
                keys=[SYMBOLS_KEY, *map(followers_key, named)], args=[follower, len(symbols), *named]
            )
            if result is not None:
                break
        else:
            raise RedisError(f"the tracked symbols kept changing during {SET_FOLLOWER_ATTEMPTS} attempts")
        released, counts = result
        return (
            {symbol: int(n) for symbol, n in zip(symbols, counts, strict=True)},
            sorted(symbol.decode() for symbol in released),
        )

    async def counts(self) -> dict[str, int]:
        """Tracked symbols → follower count, sorted by symbol."""
        symbols = sorted(member.decode() for member in await self._redis.smembers(SYMBOLS_KEY))
        return {symbol: count for symbol, count in (await self.counts_of(symbols)).items() if count}

    async def counts_of(self, symbols: list[str]) -> dict[str, int]:
        """``symbols`` → their follower counts now (0: not followed), in one round trip."""
        if not symbols:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for symbol in symbols:
            pipe.scard(followers_key(symbol))
        counts = await pipe.execute()
        return {symbol: int(count) for symbol, count in zip(symbols, counts, strict=True)}

    async def adopt_untagged(self) -> int:
        """Move the followers of each tracked symbol from its set of before the hash tags,
        ``aggregator:followers:<symbol>``, into :func:`followers_key` (idempotent; a no-op once done, and on a
        store that never had them). Returns the sets moved."""
        moved = 0
        for member in await self._redis.smembers(SYMBOLS_KEY):
            untagged = FOLLOWERS_KEY_PREFIX + member.decode()
            followers = await self._redis.smembers(untagged)
            if followers:
                await self._redis.sadd(followers_key(member.decode()), *followers)
                await self._redis.delete(untagged)
                moved += 1
        return moved


class _RedisWriter(ABC):
    """The drain loop both Redis writers share: take a batch from the writer's buffer, send it, and on a Redis
    failure give the batch back to the buffer and retry with backoff (logged once per outage, counted in
    :attr:`failures`); :attr:`healthy` tells whether the last round reached Redis (``None``: nothing tried
    yet). A writer names itself (``name``, in the log events) and fills in :meth:`_take`, :meth:`_send`,
    :meth:`_give_back` and, if it wants, :meth:`_sent`."""

    name = "redis_writer"

    def __init__(self) -> None:
        self._wakeup = asyncio.Event()
        self.failures = 0
        self.healthy: bool | None = None

    @abstractmethod
    def _take(self) -> list:
        """The next batch to send; empty when nothing waits."""

    @abstractmethod
    async def _send(self, batch: list) -> None:
        """Write ``batch`` to Redis; raises ``RedisError``/``OSError`` when it cannot."""

    @abstractmethod
    def _give_back(self, batch: list) -> None:
        """Return a batch that could not be sent to the buffer."""

    def _sent(self) -> None:
        """Called after a round reached Redis."""

    async def run(self) -> None:
        """Write forever (cancel to stop)."""
        backoff = Backoff(base_s=0.05, max_s=5.0)
        while True:
            raise_if_cancelling()  # a cancellation a library swallowed still ends the loop
            batch = self._take()
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._send(batch)
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                self.failures += 1
                if self.healthy is not False:
                    log.warning("redis_write_failed", writer=self.name, error=str(exc))
                self.healthy = False
                self._give_back(batch)
                await asyncio.sleep(backoff.next_delay())
                continue
            if self.healthy is False:
                log.info("redis_write_recovered", writer=self.name)
            self.healthy = True
            backoff.reset()
            self._sent()


def stat_keys(symbol: str) -> list[str]:
    """The keys the publish script of ``symbol``'s SecondStats writes: ``price:<symbol>`` and the list of its
    recent seconds, which carries the price key as its hash tag (:func:`crypto_mesh.redisclient.seconds_key`)."""
    return [PRICE_KEY_PREFIX + symbol, seconds_key(symbol)]


def resume_point(value: bytes | None) -> ResumePoint | None:
    """The :class:`aggregator.backfill.ResumePoint` of a ``price:<symbol>`` value (SecondStat JSON,
    docs/CONTRACTS.md): its ``"t"`` and ``"i"``; None for no value or anything else."""
    if value is None:
        return None
    try:
        stat = jsonutil.loads_object(value, ValueError, "price")
    except ValueError:
        return None
    second_ms, close_id = stat.get("t"), stat.get("i")
    if type(second_ms) is not int or type(close_id) is not int:
        return None
    return ResumePoint(second_ms, close_id)


class StatPublisher(_RedisWriter):
    """Publishes SecondStats to Redis (channel ``<symbol>``, key ``price:<symbol>``, and the list
    ``seconds:<symbol>{price:<symbol>}`` of the latest ``recent`` ones) from a bounded buffer.

    :meth:`submit` never blocks. While Redis keeps up, every stat is published in order. When a publish fails
    or ``maxsize`` stats are waiting, the buffer conflates: only the latest unpublished stat of each symbol is
    kept (a viewer wants the current price, not a backlog), older ones are counted in :attr:`dropped`. Failed
    rounds are retried with backoff; :attr:`healthy` tells whether the last round reached Redis (``None``:
    nothing tried yet). :attr:`latency` is a Prometheus histogram (not registered anywhere: the service
    registers it) of the seconds from :meth:`submit` (the window's close) to the acknowledged publish.
    """

    def __init__(self, client: RedisClient, maxsize: int = 10_000, recent: int = RECENT_SECONDS) -> None:
        super().__init__()
        self._redis = client
        self._publish = client.register_script(_PUBLISH_IF_NEWER)
        self._maxsize = maxsize
        self._recent = recent
        self._fifo: deque[SecondStat] = deque()
        self._latest: dict[str, SecondStat] = {}
        self._conflating = False
        #: (symbol, second) → monotonic time of submit, for the latency histogram; entries leave with their
        #: stat (published or conflated away), so it holds at most the pending stats.
        self._submitted_at: dict[tuple[str, int], float] = {}
        self.latency = Histogram(
            "aggregator_publish_latency_seconds",
            "Seconds from a SecondStat's window close to its acknowledged Redis publish.",
            buckets=PUBLISH_LATENCY_BUCKETS,
            registry=None,
        )
        self.published = 0
        self.stale = 0
        self.dropped = 0

    def submit(self, stat: SecondStat) -> None:
        """Queue ``stat`` for publishing; returns at once."""
        if len(self._submitted_at) < 2 * self._maxsize:
            self._submitted_at[(stat.symbol, stat.second_ms)] = time.monotonic()
        if not self._conflating and len(self._fifo) >= self._maxsize:
            self._start_conflating()
        if self._conflating:
            self._keep_latest(stat)
        else:
            self._fifo.append(stat)
        self._wakeup.set()

    def pending(self) -> int:
        """Stats waiting to be published."""
        return len(self._fifo) + len(self._latest)

    async def last_published(self, symbols: list[str]) -> dict[str, ResumePoint]:
        """The last second published for each of ``symbols`` (by any replica), read from ``price:<symbol>`` in
        one ``MGET``: ``{symbol: ResumePoint}``, without the symbols that have none (or a value that is not a
        SecondStat JSON with integer ``"t"`` and ``"i"``). Raises ``RedisError``/``OSError`` when Redis is
        unreachable."""
        if not symbols:
            return {}
        values = await mget(self._redis, [PRICE_KEY_PREFIX + symbol for symbol in symbols])
        points = {}
        for symbol, value in zip(symbols, values):
            point = resume_point(value)
            if point is not None:
                points[symbol] = point
        return points

    name = "prices"

    def _take(self) -> list[SecondStat]:
        return self._take_stats(PUBLISH_BATCH)

    def _give_back(self, batch: list[SecondStat]) -> None:
        # While Redis is down only the latest stat of each symbol is worth keeping.
        self._start_conflating()
        for stat in batch:
            self._keep_latest(stat, newer_wins=True)

    def _sent(self) -> None:
        if self._conflating and not self._latest:
            self._conflating = False

    async def flush(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for the buffer to drain (used at stop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending() and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def _send(self, batch: list[SecondStat]) -> None:
        results = await run_scripts(
            self._redis,
            [
                (
                    self._publish,
                    stat_keys(stat.symbol),
                    [jsonutil.dumps(stat.to_json()), stat.second_ms, stat.symbol, self._recent],
                )
                for stat in batch
            ],
        )
        done = time.monotonic()
        for stat in batch:
            submitted = self._submitted_at.pop((stat.symbol, stat.second_ms), None)
            if submitted is not None:
                self.latency.observe(done - submitted)
        fresh = sum(int(result) for result in results)
        self.published += fresh
        self.stale += len(batch) - fresh

    def _take_stats(self, limit: int) -> list[SecondStat]:
        if self._latest:
            batch = list(self._latest.values())[:limit]
            for stat in batch:
                del self._latest[stat.symbol]
            return batch
        return [self._fifo.popleft() for _ in range(min(limit, len(self._fifo)))]

    def _start_conflating(self) -> None:
        self._conflating = True
        while self._fifo:
            self._keep_latest(self._fifo.popleft())

    def _keep_latest(self, stat: SecondStat, newer_wins: bool = False) -> None:
        """Keep ``stat`` as its symbol's pending stat. ``newer_wins``: ``stat`` is a retried one, so a pending
        stat (submitted after it) wins."""
        current = self._latest.get(stat.symbol)
        if current is not None:
            self.dropped += 1
            if newer_wins and current.second_ms > stat.second_ms:
                self._submitted_at.pop((stat.symbol, stat.second_ms), None)
                return
            self._submitted_at.pop((current.symbol, current.second_ms), None)
        self._latest[stat.symbol] = stat


#: Records a :class:`KafkaSink` takes from its buffer per round, at most.
KAFKA_ROUND_RECORDS = 1_000
#: The largest record (key and value) a :class:`KafkaSink` sends: below Kafka's default 1 MiB
#: ``max.request.size`` and ``message.max.bytes``, with room for the batch's framing.
MAX_RECORD_BYTES = 1_000_000
#: Keys whose partition a :class:`KafkaSink` remembers at most (its keys are symbols: some thousands).
PARTITION_CACHE_KEYS = 100_000


def record_bytes(key: bytes | None, value: bytes | None) -> int:
    """The size of a record's key and value (bytes; a missing one counts 0)."""
    return (len(key) if key is not None else 0) + (len(value) if value is not None else 0)


def by_partition(
    encoded: list[tuple[T, bytes, Any]],
    partitions: list[int],
    partitioner: Callable[[bytes, list[int], list[int]], int],
) -> list[tuple[int, list[tuple[T, bytes, Any]]]]:
    """``encoded`` records ``(record, key, value)`` grouped by the partition ``partitioner(key, partitions,
    partitions)`` gives each (Kafka's default partitioner: murmur2 of the key modulo the partition count), as
    ``(partition, records)`` in the order each partition first appears, each group keeping the records'
    order. Pure."""
    groups: dict[int, list[tuple[T, bytes, Any]]] = {}
    for item in encoded:
        groups.setdefault(partitioner(item[1], partitions, partitions), []).append(item)
    return list(groups.items())


class KafkaSink(Generic[T]):
    """Writes records of type ``T`` to ``topic`` from a bounded buffer; ``encode(record)`` gives (key, value),
    a value of ``None`` being a tombstone.

    :meth:`submit` never blocks: when ``maxsize`` records wait, the oldest is dropped (:attr:`dropped`), so
    the real-time path never waits on Kafka (:class:`aggregator.sendbuffer.SendBuffer`). The background task
    :meth:`run` (cancel to stop) creates the topic with ``partitions`` partitions and ``topic_config`` (Kafka
    topic configs) and starts the producer, retrying with backoff until Kafka is reachable, then sends in order.
    aiokafka retries failed requests; a delivery that still fails (a broker answering an error aiokafka does not
    retry, such as the embedded Tansu's UNKNOWN_SERVER_ERROR when two producers write one partition at once: its
    store refuses the second batch of the same offset, ``AlreadyExists``) is counted in :attr:`failed` and its
    record goes back to the front of the buffer, sent again after a backoff delay (0.1 s doubling to 5 s), ahead
    of the records that came after it — so it may reach the topic after records sent meanwhile, or twice where
    the first attempt's outcome was unknown; consumers key on the record's id. Only a record Kafka refuses for
    itself (too large: over :data:`MAX_RECORD_BYTES`, or refused by the broker) is given up.

    Records travel in batches (aiokafka's ``create_batch``/``send_batch``): each round takes up to
    :data:`KAFKA_ROUND_RECORDS` records from the buffer, encodes them, and hands each partition's records to
    the producer as record batches, partitioned as the producer would (murmur2 of the key, Kafka's default
    partitioner), so a symbol's records keep one partition and their order. A batch costs the producer one
    future and one delivery callback where each record sent alone cost both (about 13 µs of CPU a record
    against 6 on the embedded broker); a batch delivered counts its records in :attr:`sent`, and a batch that
    fails gives all its records back, in order. Producer: ``acks=all``, ``enable_idempotence`` as configured,
    ``linger_ms=20``, and
    ``client_options`` (authentication, :meth:`crypto_mesh.kafka.KafkaClientSettings.kafka_client_options`).
    ``healthy`` is None until the first connection, then whether the last delivery worked.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        enable_idempotence: bool,
        *,
        topic: str,
        partitions: int,
        encode: Callable[[T], tuple[bytes, bytes | None]],
        maxsize: int = 10_000,
        client_options: Mapping[str, Any] | None = None,
        topic_config: Mapping[str, str] | None = None,
    ) -> None:
        self.topic = topic
        self._topic_config = dict(topic_config or {})
        self._client_options = dict(client_options or {})
        self._partitions = partitions
        self._encode = encode
        self._bootstrap = bootstrap_servers
        self._idempotence = enable_idempotence
        self._buffer: SendBuffer[T] = SendBuffer(maxsize)
        self._partitioner = DefaultPartitioner()
        #: Key → partition, for the partition list :attr:`_cached_for` (murmur2 in Python costs about 2.4 µs a
        #: key, and the keys are the few symbols, over and over).
        self._partition_cache: dict[bytes, int] = {}
        self._cached_for: list[int] = []
        #: Records of the round being handed to the producer that it does not hold yet (:meth:`flush` waits
        #: for them too).
        self._in_round = 0
        self._wakeup = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._backoff = Backoff(base_s=0.1, max_s=5.0)
        self._retry_due = False
        #: Records handed to the producer whose delivery has not ended yet; once a close gave them up (and
        #: counted them as failed), their deliveries are not counted again.
        self._in_flight = 0
        self._given_up = False
        self.sent = 0
        self.failed = 0
        self.healthy: bool | None = None

    @property
    def queue_depth(self) -> int:
        """Records waiting for the producer: in the buffer, and taken for the round being handed over."""
        return len(self._buffer) + self._in_round

    @property
    def dropped(self) -> int:
        """Records given up because the buffer was full (see :class:`aggregator.sendbuffer.SendBuffer`)."""
        return self._buffer.dropped

    def pending(self) -> int:
        """Records waiting for the producer (as :attr:`queue_depth`)."""
        return self.queue_depth

    def submit(self, record: T) -> None:
        """Queue ``record``; returns at once."""
        self._buffer.submit(record)
        self._wakeup.set()

    async def run(self) -> None:
        """Connect (with backoff), then send forever (cancel to stop)."""
        self._producer = await self._connect()
        self.healthy = True
        while True:
            raise_if_cancelling()  # a cancellation a library swallowed still ends the loop
            if self._retry_due:
                self._retry_due = False
                await asyncio.sleep(self._backoff.next_delay())
                continue
            if not self._buffer:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._send_round(self._buffer.take_up_to(KAFKA_ROUND_RECORDS))

    async def _send_round(self, records: list[T]) -> None:
        """Hand ``records`` (oldest first) to the producer: per partition, as few record batches as its
        ``max_batch_size`` allows."""
        self._in_round = len(records)
        try:
            await self._hand_over(records)
        finally:
            self._in_round = 0

    async def _hand_over(self, records: list[T]) -> None:
        producer = self._producer
        assert producer is not None
        encoded = [(record, *self._encode(record)) for record in records]
        fitting = [item for item in encoded if record_bytes(item[1], item[2]) <= MAX_RECORD_BYTES]
        if len(fitting) < len(encoded):
            self._refused(len(encoded) - len(fitting))
        try:
            partitions = sorted(await producer.partitions_for(self.topic))
        except KafkaError as exc:
            raise_if_cancelling()
            self._on_failure([record for record, _, _ in fitting], exc)
            return
        if partitions != self._cached_for or len(self._partition_cache) >= PARTITION_CACHE_KEYS:
            self._partition_cache.clear()
            self._cached_for = partitions
        groups = by_partition(fitting, partitions, self._cached_partition)
        for index, (partition, members) in enumerate(groups):
            first = 0
            while first < len(members):
                batch = producer.create_batch()
                end = first
                while end < len(members) and batch.append(
                    key=members[end][1], value=members[end][2], timestamp=None
                ):
                    end += 1
                if end == first:  # a record no batch takes (the first record of a batch always fits)
                    self._refused(1)
                    first += 1
                    continue
                records = [record for record, _, _ in members[first:end]]
                error = await self._send_batch(batch, partition, records)
                if error is not None:
                    # Refused at once: the batch and the rest of the round go back to the buffer, in order.
                    records += [record for record, _, _ in members[end:]]
                    records += [record for _, group in groups[index + 1 :] for record, _, _ in group]
                    self._on_failure(records, error)
                    return
                first = end

    async def _send_batch(self, batch: Any, partition: int, records: list[T]) -> KafkaError | None:
        """Hand ``batch`` (of ``records``) to the producer for ``partition``; the error when the producer
        refused it at once (nothing is handed over then), else None."""
        assert self._producer is not None
        try:
            delivery = await self._producer.send_batch(batch, self.topic, partition=partition)
        except KafkaError as exc:
            raise_if_cancelling()
            return exc
        self._in_flight += len(records)
        self._in_round -= len(records)
        delivery.add_done_callback(functools.partial(self._on_delivery, records))
        return None

    def _cached_partition(self, key: bytes, partitions: list[int], available: list[int]) -> int:
        """The default partitioner's partition of ``key``, remembered per key (for :attr:`_cached_for`)."""
        partition = self._partition_cache.get(key)
        if partition is None:
            partition = self._partition_cache[key] = self._partitioner(key, partitions, available)
        return partition

    def _refused(self, count: int) -> None:
        """``count`` records too large to send: given up."""
        self.failed += count
        log.error("kafka_record_refused", topic=self.topic, records=count, limit=MAX_RECORD_BYTES)

    async def flush(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for the buffer to be handed to the producer (used at stop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.queue_depth and self._producer is not None and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def close(self, timeout_s: float = 5.0, stall_s: float = 1.0) -> None:
        """Deliver what the producer holds and stop it, giving up after ``timeout_s`` seconds in all, or once
        ``stall_s`` seconds pass without a delivery: a broker that does not answer (the embedded one crashed,
        and the mesh stops this process before it starts the broker again) is not waited for, as the ETL does
        not wait for a commit no broker answers. The records given up are counted in :attr:`failed`."""
        if self._producer is None:
            return
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(self._producer.stop())
        deadline = loop.time() + timeout_s
        sent, progressed_at = self.sent, loop.time()
        try:
            while not stopping.done():
                now = loop.time()
                if self.sent != sent:
                    sent, progressed_at = self.sent, now
                if now >= deadline or now - progressed_at >= stall_s:
                    raise TimeoutError(f"no delivery for {now - progressed_at:.1f} s")
                await asyncio.wait({stopping}, timeout=0.05)
            stopping.result()
        except (TimeoutError, KafkaError) as exc:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
            log.warning(
                "kafka_producer_stop_failed", topic=self.topic, error=str(exc), undelivered=self._in_flight
            )
            self.failed += self._in_flight
            self._given_up = True
        self._producer = None

    async def _connect(self) -> AIOKafkaProducer:
        """Create the topic and start a producer, retrying until Kafka is reachable."""
        async for attempt in retrying(
            "kafka_connect_retrying", retry_on=(KafkaError, OSError), base_s=0.2, max_s=10.0, topic=self.topic
        ):
            with attempt:
                try:
                    producer = await self._start_producer()
                except (KafkaError, OSError):
                    self.healthy = False
                    raise
        log.info("kafka_producer_started", topic=self.topic)
        return producer

    async def _start_producer(self) -> AIOKafkaProducer:
        await ensure_topics(
            self._bootstrap,
            {self.topic: self._partitions},
            client_options=self._client_options,
            configs={self.topic: self._topic_config},
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            **self._client_options,
            acks="all",
            enable_idempotence=self._idempotence,
            linger_ms=20,
        )
        try:
            await producer.start()
        except BaseException:
            # Also on cancellation (stop during start): a half-started producer holds connections.
            await producer.stop()
            raise
        return producer

    def _on_delivery(self, records: list[T], delivery: asyncio.Future) -> None:
        self._in_flight -= len(records)
        if self._given_up:
            return
        if delivery.cancelled():
            # The producer was stopped with the batch in flight (the service stopping): not delivered.
            self.failed += len(records)
        elif delivery.exception() is not None:
            self._on_failure(records, delivery.exception())
        else:
            self.sent += len(records)
            self.healthy = True
            self._backoff.reset()

    def _on_failure(self, records: list[T], exc: BaseException) -> None:
        """Count a failed delivery of ``records`` (oldest first) and give them back, in order, to be sent
        again after a backoff delay, unless Kafka refuses them for themselves (too large)."""
        self.failed += len(records)
        if isinstance(exc, MessageSizeTooLargeError):
            log.error("kafka_record_refused", topic=self.topic, records=len(records), error=str(exc))
            return
        if self.healthy:
            log.warning("kafka_delivery_failed", topic=self.topic, error=str(exc))
        self.healthy = False
        self._buffer.give_back_all(records)
        self._retry_due = True
        self._wakeup.set()


class TickerProducer(KafkaSink[KafkaMsg]):
    """KafkaMsg records to ``binance.miniticker``, key = symbol (docs/CONTRACTS.md, "Kafka")."""

    def __init__(
        self,
        bootstrap_servers: str,
        enable_idempotence: bool,
        maxsize: int = 10_000,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            enable_idempotence,
            topic=MINI_TICKER_TOPIC,
            partitions=MINI_TICKER_PARTITIONS,
            encode=lambda message: (message.symbol.encode(), jsonutil.dumps(message.to_json())),
            maxsize=maxsize,
            client_options=client_options,
        )


TICKER_KEY = "ticker:24h"
#: In the slot of :data:`TICKER_KEY` (hash tag), which the same script writes.
TICKER_TIME_KEY = "ticker:24h:event_time{ticker:24h}"
#: Tickers per script call, several calls pipelined in one round trip: Redis's Lua ``unpack`` takes at most
#: about 8,000 values (2 per ticker here), and a short script holds Redis up for less time.
TICKER_SCRIPT_BATCH = 500

# Newer-only HSET of many tickers at once. KEYS[1]: ticker:24h, KEYS[2]: ticker:24h:event_time{ticker:24h}
# (in the slot of KEYS[1]); ARGV: triples (symbol, event time E in ms, ticker JSON). A ticker is written only if no ticker of its symbol is stored or
# the stored one's E is older, so a retried round never moves a ticker back in time. Returns the number
# written. E (Unix ms, < 2^53) compares exactly as a Lua number.
_TICKERS_IF_NEWER = """
local n = #ARGV / 3
local symbols = {}
for i = 1, n do symbols[i] = ARGV[3 * i - 2] end
local stored = redis.call('HMGET', KEYS[2], unpack(symbols))
local times, values = {}, {}
for i = 1, n do
  local old = tonumber(stored[i])
  if not old or tonumber(ARGV[3 * i - 1]) > old then
    table.insert(times, symbols[i])
    table.insert(times, ARGV[3 * i - 1])
    table.insert(values, symbols[i])
    table.insert(values, ARGV[3 * i])
  end
end
if #times > 0 then
  redis.call('HSET', KEYS[2], unpack(times))
  redis.call('HSET', KEYS[1], unpack(values))
end
return #times / 2
"""


class TickerStore(_RedisWriter):
    """Keeps each symbol's latest 24 h ticker in Redis (hashes ``ticker:24h`` and
    ``ticker:24h:event_time{ticker:24h}``, docs/CONTRACTS.md "Redis"), from the all-market mini-ticker stream.

    :meth:`submit` never blocks: it hands a frame's tickers to a :class:`aggregator.tickers.LatestTickers`
    buffer, which keeps only the newest pending ticker of each symbol, so a slow or absent Redis costs memory
    bounded by the number of symbols and never a backlog. The background task :meth:`run` writes what is
    pending in one pipelined round trip per round (a frame of ~2,000 symbols: a few script calls of
    :data:`TICKER_SCRIPT_BATCH`), each call atomic and newer-only; failed rounds are put back and retried with
    backoff. Counters: :attr:`written` (tickers stored), :attr:`stale` (refused as not newer),
    :attr:`failures` (failed rounds), and the buffer's ``conflated``/``dropped``; :attr:`healthy` tells
    whether the last round reached Redis (``None``: nothing tried yet).
    """

    name = "tickers"

    def __init__(self, client: RedisClient, max_symbols: int = 10_000) -> None:
        super().__init__()
        self._redis = client
        self._write = client.register_script(_TICKERS_IF_NEWER)
        self.buffer = LatestTickers(max_symbols)
        self.written = 0
        self.stale = 0

    def submit(self, tickers: list[MiniTicker]) -> None:
        """Queue the tickers of one mini-ticker frame; returns at once."""
        self.buffer.add(tickers)
        self._wakeup.set()

    def pending(self) -> int:
        """Symbols whose ticker waits to be written."""
        return len(self.buffer)

    def _take(self) -> list[MiniTicker]:
        return self.buffer.take()

    def _give_back(self, batch: list[MiniTicker]) -> None:
        self.buffer.restore(batch)

    async def _send(self, batch: list[MiniTicker]) -> None:
        calls = []
        for start in range(0, len(batch), TICKER_SCRIPT_BATCH):
            args: list[str | int | bytes] = []
            for ticker in batch[start : start + TICKER_SCRIPT_BATCH]:
                args += (ticker.symbol, ticker.event_time_ms, jsonutil.dumps(day_ticker_json(ticker)))
            calls.append((self._write, [TICKER_KEY, TICKER_TIME_KEY], args))
        fresh = sum(int(result) for result in await run_scripts(self._redis, calls))
        self.written += fresh
        self.stale += len(batch) - fresh
