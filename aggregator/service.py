"""The parts of a running aggregator and its use cases, apart from HTTP: :class:`AggregatorService`.

:func:`aggregator.app.start` opens and closes the parts (:mod:`crypto_mesh.service`); the control API's views
only translate HTTP to the use cases here (follow, unfollow, set a follower's symbols, health, counters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

from aggregator.backfill import ResumePoint
from aggregator.feeds import Feeds, TradeStreams
from aggregator.follows import FollowGroup, FollowNotices
from aggregator.intake import TickerIntake, TradeIntake, counters_json
from aggregator.ownership import Ownership, Plan
from aggregator.second_topic import SecondProducer, fan_out
from aggregator.secondstat import SecondWindows
from aggregator.settings import AggregatorSettings
from aggregator.store import FollowerStore, StatPublisher, TickerProducer, TickerStore, connect_redis
from aggregator.watchdog import StreamWatchdog
from crypto_mesh.logs import get_logger
from crypto_mesh.metrics import RedisMetrics
from crypto_mesh.redisclient import RedisClient
from crypto_mesh.observe import GrpcMetrics, HttpMetrics, client_observers
from crypto_mesh.pki import MeshTls
from crypto_mesh.retry import raise_if_cancelling, retrying

log = get_logger(__name__)

T = TypeVar("T")

#: How long a takeover waits for the last published seconds on Redis (s) before streaming without them.
RESUME_READ_TIMEOUT_S = 1.0
#: How long a health check waits for Redis's PONG (s).
HEALTH_PING_TIMEOUT_S = 0.5


class AggregatorService:
    """A running aggregator: the Redis client (:attr:`redis`) with the follower store (:attr:`followers`),
    the SecondStat publisher (:attr:`publisher`) and the 24 h ticker store (:attr:`ticker_store`), the Kafka
    producers of mini-tickers (:attr:`kafka`) and of
    SecondStats (:attr:`seconds`), the trade and mini-ticker intakes (:attr:`trades`, :attr:`tickers`), the
    gRPC streams from socket_proxy (:attr:`feeds`) over mutual TLS with ``tls``, and the sharing of the followed
    symbols with the other replicas: which ones this replica streams (:attr:`ownership`), the notices of follower
    changes it sends (:attr:`notices`) and its membership of the replicas' consumer group (:attr:`group`).

    Building it opens nothing (no connection is made); :func:`aggregator.app.start` runs the background tasks
    and closes the clients. Every follower method raises ``redis.exceptions.RedisError`` (or ``OSError``) when
    Redis is unreachable.
    """

    def __init__(self, settings: AggregatorSettings, tls: MeshTls) -> None:
        #: The RED series of the control API and of the streams from socket_proxy, the Redis client's series
        #: (:mod:`aggregator.metrics`); ``AGGREGATOR_ACCESS_LOG``.
        self.http_metrics = HttpMetrics("aggregator")
        self.grpc_metrics = GrpcMetrics("aggregator", "client")
        self.redis_metrics = RedisMetrics("aggregator")
        self.access_log = settings.access_log
        self.redis: RedisClient = self.redis_metrics.instrument(connect_redis(settings.redis_url.get_secret_value()))
        self.followers = FollowerStore(self.redis)
        self.publisher = StatPublisher(self.redis)
        kafka_options = settings.kafka_client_options()
        self.kafka = TickerProducer(
            settings.kafka_bootstrap_servers, settings.kafka_enable_idempotence, client_options=kafka_options
        )
        # Every SecondStat also goes to Kafka (binance.second) for the analytical path; neither sink blocks.
        self.seconds = SecondProducer(
            settings.kafka_bootstrap_servers, settings.kafka_enable_idempotence, client_options=kafka_options
        )
        self.trades = TradeIntake(
            SecondWindows(settings.window_grace_ms),
            fan_out(self.publisher.submit, self.seconds.submit),
            max_backfill_ids=settings.backfill_max_ids,
        )
        self.ticker_store = TickerStore(self.redis)
        self.tickers = TickerIntake(self.kafka.submit, self.ticker_store.submit)
        self.feeds = Feeds(
            settings.socket_proxy_target,
            tls,
            TradeStreams(settings.trade_stream, settings.trade_stream_by_symbol),
            self.trades,
            self.tickers,
            StreamWatchdog(round(settings.stale_stream_s * 1000)),
            backfill_timeout_s=settings.backfill_timeout_ms / 1000,
            interceptors=client_observers(self.grpc_metrics),
        )
        # Skipped trades are fetched back through socket_proxy, the intake holding the symbol meanwhile.
        self.trades.backfill = self.feeds.backfill
        # Which followed symbols this replica streams: those of the follow topic's partitions that the
        # replicas' consumer group assigns it (aggregator.ownership, aggregator.follows).
        self.ownership = Ownership(settings.follow_partitions)
        self.notices = FollowNotices(
            settings.kafka_bootstrap_servers,
            settings.follow_topic,
            settings.follow_partitions,
            settings.kafka_enable_idempotence,
            client_options=kafka_options,
        )
        self.group = FollowGroup(
            settings.kafka_bootstrap_servers,
            settings.follow_topic,
            settings.group_id,
            settings.group_session_timeout_ms,
            self.on_assigned,
            self.on_notice,
            settings.follow_partitions,
            client_options=kafka_options,
        )
        self._resync_s = settings.follow_resync_s
        self._adopted = False
        #: True once the followed symbols of a first assignment are streamed.
        self.followers_loaded = False
        # Serialises follower changes and assignments with the streams they start or stop, so a PUT racing
        # the DELETE of the last follower cannot leave a followed symbol unstreamed.
        self._tracking = asyncio.Lock()

    async def on_assigned(self, partitions: frozenset[int], count: int | None = None) -> None:
        """The group assigned this replica ``partitions`` of the follow topic (of ``count``, as the broker has
        it): read the followed symbols from Redis (retrying until it answers) and stream exactly those of the
        assigned partitions (:meth:`aggregator.ownership.Ownership.assign`). Called by
        :class:`aggregator.follows.FollowGroup`."""
        if count is not None and count != self.ownership.partitions:
            log.warning("follow_topic_partitions_differ", configured=self.ownership.partitions, topic=count)
        if not self._adopted:
            adopted = await self._until_redis_answers(self.followers.adopt_untagged)
            if adopted:
                log.info("followers_adopted_untagged", symbols=adopted)
            self._adopted = True
        async with self._tracking:
            counts = await self._until_redis_answers(self.followers.counts)
            await self._carry_out(self.ownership.assign(partitions, counts, count))
        self.followers_loaded = True
        log.info("followers_loaded", partitions=len(partitions), symbols=len(self.ownership.streamed))

    async def on_notice(self, symbols: list[str]) -> None:
        """Notices of changed follower counts of ``symbols`` came (from any replica): read their followers from
        Redis again and start or stop those this replica owns."""
        async with self._tracking:
            counts = await self._until_redis_answers(lambda: self.followers.counts_of(symbols))
            for symbol in symbols:
                await self._carry_out(self.ownership.change(symbol, counts.get(symbol, 0) > 0))

    async def resync(self) -> None:
        """Every ``AGGREGATOR_FOLLOW_RESYNC_S``, once partitions are assigned, stream exactly the followed
        symbols of this replica's partitions as Redis has them (a task; cancel to stop)."""
        while True:
            await asyncio.sleep(self._resync_s)
            if not self.followers_loaded:
                continue
            try:
                async with self._tracking:
                    counts = await self.followers.counts()
                    plan = self.ownership.resync(counts)
                    await self._carry_out(plan)
            except (RedisError, OSError) as exc:
                raise_if_cancelling()  # redis-py may turn a cancellation into a TimeoutError
                log.warning("followers_resync_failed", error=str(exc))
                continue
            if plan.start or plan.stop:
                log.warning("followers_resynced", started=list(plan.start), stopped=list(plan.stop))

    async def follow(self, symbol: str, follower: str) -> int:
        """Add ``follower`` to ``symbol`` (normalised), stream the symbol if this replica owns it, and tell the
        other replicas (a notice on the follow topic, :mod:`aggregator.follows`) (idempotent); returns the
        symbol's follower count."""
        async with self._tracking:
            count = await self.followers.add(symbol, follower)
            await self._carry_out(self.ownership.change(symbol, count > 0))
        self.notices.notify({symbol: count})
        return count

    async def unfollow(self, symbol: str, follower: str) -> int:
        """Remove ``follower`` from ``symbol`` (idempotent); the last one leaving stops the symbol's stream
        (on whichever replica owns it). Returns the remaining follower count (0: no longer streamed)."""
        async with self._tracking:
            count = await self.followers.remove(symbol, follower)
            await self._carry_out(self.ownership.change(symbol, count > 0))
        self.notices.notify({symbol: count})
        return count

    async def set_follower_symbols(
        self, follower: str, symbols: list[str]
    ) -> tuple[dict[str, int], list[str]]:
        """Make ``symbols`` (normalised, distinct) exactly what ``follower`` follows (idempotent): symbols it
        joins are streamed, symbols it was the last follower of stop streaming (on whichever replica owns
        each). Returns (follower count of each of ``symbols``, symbols released), as
        :meth:`aggregator.store.FollowerStore.set_follower`."""
        async with self._tracking:
            counts, released = await self.followers.set_follower(follower, symbols)
            for symbol in symbols:
                await self._carry_out(self.ownership.change(symbol, True))
            for symbol in released:
                await self._carry_out(self.ownership.change(symbol, False))
        self.notices.notify({**counts, **dict.fromkeys(released, 0)})
        return counts, released

    async def _carry_out(self, plan: Plan) -> None:
        """Stop, then start, the streams ``plan`` says (:class:`aggregator.ownership.Plan`). A taken-over
        symbol resumes after the last second published for it, read from Redis
        (:meth:`aggregator.intake.TradeIntake.resume_after`): with Redis unreachable (or slower than
        :data:`RESUME_READ_TIMEOUT_S`), its first window is skipped instead."""
        for symbol in plan.stop:
            await self.feeds.untrack(symbol)
        points: dict[str, ResumePoint] = {}
        if plan.taken_over and plan.start:
            try:
                async with asyncio.timeout(RESUME_READ_TIMEOUT_S):
                    points = await self.publisher.last_published(list(plan.start))
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("resume_points_unread", symbols=len(plan.start), error=str(exc))
        for symbol in plan.start:
            self.feeds.track(symbol, skip_first_window=plan.taken_over, resume_after=points.get(symbol))
        self.feeds.stream_mini_tickers(plan.mini_tickers)

    @staticmethod
    async def _until_redis_answers(read: Callable[[], Awaitable[T]]) -> T:
        async for attempt in retrying(
            "followers_load_retrying", retry_on=(RedisError, OSError), base_s=0.1, max_s=5.0
        ):
            with attempt:
                result = await read()
        return result

    async def health(self) -> tuple[str, dict[str, bool]]:
        """``("ok", checks)`` when Redis, Kafka and socket_proxy are reachable and the followers are loaded;
        else ``"starting"`` (not connected yet) or ``"degraded"`` (was connected, lost something). ``checks``:
        ``{"redis", "kafka", "socket_proxy", "followers_loaded"}`` → bool."""
        checks = {
            "redis": await self._redis_reachable()
            and self.publisher.healthy is not False
            and self.ticker_store.healthy is not False,
            "kafka": self.kafka.healthy is True
            and self.seconds.healthy is not False
            and self.notices.healthy is not False,
            "socket_proxy": self.feeds.connected(),
            "followers_loaded": self.followers_loaded,
        }
        if all(checks.values()):
            return "ok", checks
        if self.kafka.healthy is None or not self.followers_loaded:
            return "starting", checks
        return "degraded", checks

    def counters(self) -> dict:
        """Totals since start and queue sizes: ``{"trades", "publisher", "tickers", "ticker_store", "kafka",
        "second_topic", "sharing", "upstream"}``, each an object of integers, but ``sharing``: ``{"partitions":
        [the follow topic's partitions assigned to this replica], "mini_tickers": bool (this replica streams
        them), "notices_sent", "notices_failed", "notices_dropped", "notices_received", "group_restarts"}``."""
        return {
            "trades": counters_json(self.trades.counters),
            "publisher": {
                "published": self.publisher.published,
                "stale": self.publisher.stale,
                "dropped": self.publisher.dropped,
                "failures": self.publisher.failures,
                "pending": self.publisher.pending(),
            },
            "tickers": counters_json(self.tickers.counters),
            "ticker_store": {
                "written": self.ticker_store.written,
                "stale": self.ticker_store.stale,
                "conflated": self.ticker_store.buffer.conflated,
                "dropped": self.ticker_store.buffer.dropped,
                "failures": self.ticker_store.failures,
                "pending": self.ticker_store.pending(),
            },
            "kafka": {"sent": self.kafka.sent, "failed": self.kafka.failed, "dropped": self.kafka.dropped},
            "second_topic": {
                "sent": self.seconds.sent,
                "failed": self.seconds.failed,
                "dropped": self.seconds.dropped,
                "pending": self.seconds.pending(),
            },
            "sharing": {
                "partitions": sorted(self.ownership.assigned),
                "mini_tickers": self.feeds.streaming_mini_tickers,
                "notices_sent": self.notices.sent,
                "notices_failed": self.notices.failed,
                "notices_dropped": self.notices.dropped,
                "notices_received": self.group.notices,
                "group_restarts": self.group.restarts,
            },
            "upstream": {
                "reconnects": self.feeds.reconnects,
                "stale_streams": len(self.feeds.watchdog.stale),
                "stale_stream_periods": self.feeds.watchdog.periods,
            },
        }

    async def flush(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds (each) for the closed seconds to leave for Redis and Kafka, and the
        follow notices for Kafka (at stop, once the streams are closed). Open windows are incomplete seconds:
        they are dropped, not published."""
        await self.publisher.flush(timeout_s)
        await self.seconds.flush(timeout_s)
        await self.notices.flush(timeout_s)

    async def _redis_reachable(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), HEALTH_PING_TIMEOUT_S))
        except (RedisError, OSError, TimeoutError):
            return False
