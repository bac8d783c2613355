"""Publishing never stalls intake: the SecondStat publisher conflates while Redis is down, the Kafka buffer
drops its oldest record when full, and the 24 h ticker store keeps only the newest pending ticker of each
symbol and never moves a stored one back in time."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from decimal import Decimal

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from support.credentials import TESTS_REDIS_USER, redis_acl_file, redis_user_url
from support.kafka_helpers import TopicTail
from support.polling import eventually

from aggregator.secondstat import SecondStat
from aggregator.store import (
    KAFKA_ROUND_RECORDS,
    MINI_TICKER_PARTITIONS,
    TICKER_KEY,
    TICKER_TIME_KEY,
    StatPublisher,
    TickerProducer,
    TickerStore,
    connect_redis,
)
from aggregator.tickers import KafkaMsg, day_ticker_json
from crypto_mesh import jsonutil
from crypto_mesh.binance import MiniTicker
from launcher.embedded import ManagedProcess, redis_command
from crypto_mesh.kafka import MINI_TICKER_TOPIC
from support.ports import free_port
from crypto_mesh.redisclient import seconds_key


def stat(symbol: str, second: int, price: str = "100") -> SecondStat:
    p = Decimal(price)
    return SecondStat(symbol, second * 1000, p, p, p, p, Decimal(1), p, 1, second)


def mini_ticker(symbol: str, event_time_ms: int, close: str = "61837.63000000") -> MiniTicker:
    d = Decimal
    return MiniTicker(
        event_time_ms, symbol, d(close), d("60000.00"), d("62000.00"), d("59000.00"), d("1.5"), d("90000.75")
    )


@pytest.fixture
def late_redis(tmp_path):
    """A Redis server that is not running yet: ``(url, start)``."""
    port = free_port()
    server = ManagedProcess(
        "redis", redis_command(port, tmp_path / "redis", redis_acl_file(tmp_path)), port, tmp_path / "redis.log"
    )
    yield redis_user_url(f"redis://127.0.0.1:{port}/0", "aggregator"), server.start
    server.stop()


async def test_while_redis_is_down_only_the_latest_stat_of_each_symbol_is_kept_and_then_published(late_redis):
    url, start_redis = late_redis
    client = connect_redis(url)
    publisher = StatPublisher(client)
    task = asyncio.create_task(publisher.run())
    try:
        publisher.submit(stat("btcusdt", 1))
        await eventually(lambda: publisher.failures >= 1)
        assert publisher.healthy is False

        # submit never waits for Redis: it is a plain function (it cannot await a round trip), and the seven
        # stats are conflated into the buffer before it returns, while Redis is still down.
        assert not inspect.iscoroutinefunction(StatPublisher.submit)
        for second in range(2, 6):
            assert publisher.submit(stat("btcusdt", second, f"10{second}")) is None
        for second in range(1, 4):
            assert publisher.submit(stat("ethusdt", second, f"20{second}")) is None
        assert publisher.pending() == 2 and publisher.published == 0

        start_redis()
        await eventually(lambda: publisher.published == 2)

        assert orjson.loads(await client.get("price:btcusdt"))["p"] == "105"
        assert orjson.loads(await client.get("price:ethusdt"))["p"] == "203"
        assert publisher.dropped == 6 and publisher.pending() == 0 and publisher.healthy is True
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


async def test_a_second_is_never_republished_nor_the_latest_price_moved_back(redis_url):
    symbol = f"zz{uuid.uuid4().hex[:8]}usdt"
    client = connect_redis(redis_url)
    publisher_client = connect_redis(redis_user_url(redis_url, "aggregator"))
    publisher = StatPublisher(publisher_client)
    task = asyncio.create_task(publisher.run())
    pubsub = client.pubsub()
    await pubsub.subscribe(symbol)
    try:
        for second, price in [(10, "1"), (10, "2"), (9, "3"), (11, "4")]:
            publisher.submit(stat(symbol, second, price))
        await eventually(lambda: publisher.published + publisher.stale == 4)
        assert orjson.loads(await client.get(f"price:{symbol}"))["t"] == 11_000
        assert publisher.stale == 2
        # A later second, published after the four: Redis delivers one channel's messages in order, so once
        # it arrives every message the four could have caused has arrived before it.
        publisher.submit(stat(symbol, 12, "5"))

        messages = []

        async def until_the_later_second_arrived() -> bool:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                messages.append(orjson.loads(message["data"]))
            return bool(messages) and messages[-1]["t"] == 12_000

        await eventually(until_the_later_second_arrived, interval_s=0)
        assert [(m["t"], m["p"]) for m in messages] == [(10_000, "1"), (11_000, "4"), (12_000, "5")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pubsub.aclose()
        await client.delete(f"price:{symbol}")
        await client.aclose()
        await publisher_client.aclose()


async def test_the_recent_seconds_list_holds_the_latest_seconds_in_order_each_once(redis_url):
    symbol = f"zz{uuid.uuid4().hex[:8]}usdt"
    client = connect_redis(redis_url)
    publisher_client = connect_redis(redis_user_url(redis_url, "aggregator"))
    publisher = StatPublisher(publisher_client, recent=3)
    task = asyncio.create_task(publisher.run())
    try:
        # A second again (a retry) and an older one are not listed; the list keeps the latest three.
        for second in (1, 2, 2, 1, 3, 4, 5):
            publisher.submit(stat(symbol, second, str(second)))
        await eventually(lambda: publisher.published + publisher.stale == 7)
        listed = [orjson.loads(value) for value in await client.lrange(seconds_key(symbol), 0, -1)]
        assert [(second["t"], second["p"]) for second in listed] == [(3000, "3"), (4000, "4"), (5000, "5")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.delete(f"price:{symbol}", seconds_key(symbol))
        await client.aclose()
        await publisher_client.aclose()


async def test_the_kafka_buffer_drops_its_oldest_record_when_full(kafka_bootstrap):
    symbol = f"zz{uuid.uuid4().hex[:8]}usdt"
    producer = TickerProducer(kafka_bootstrap, enable_idempotence=False, maxsize=2)
    for event_time in (1, 2, 3):
        producer.submit(KafkaMsg("24hrMiniTicker", event_time, 0, symbol, *[Decimal(1)] * 4))
    assert producer.dropped == 1

    async with TopicTail(kafka_bootstrap, MINI_TICKER_TOPIC, MINI_TICKER_PARTITIONS) as tail:
        task = asyncio.create_task(producer.run())
        try:
            await eventually(lambda: producer.sent == 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await producer.close()
        event_times = [orjson.loads(record.value)["E"] for record in await tail.records({symbol.encode()}, 2)]
    assert sorted(event_times) == [2, 3]  # a delivery that failed is sent again, possibly after the other


async def test_records_travel_in_batches_each_once_in_its_partition_of_the_producer_and_in_order(kafka_bootstrap):
    # 3,000 records of 30 symbols, handed over in rounds of up to KAFKA_ROUND_RECORDS: each symbol's records
    # land in the partition Kafka's default partitioner gives its key, each once, in the order submitted.
    symbols = [f"zz{uuid.uuid4().hex[:8]}usdt" for _ in range(30)]
    producer = TickerProducer(kafka_bootstrap, enable_idempotence=False, maxsize=10_000)
    async with TopicTail(kafka_bootstrap, MINI_TICKER_TOPIC, MINI_TICKER_PARTITIONS) as tail:
        task = asyncio.create_task(producer.run())
        try:
            for event_time in range(100):
                for symbol in symbols:
                    producer.submit(KafkaMsg("24hrMiniTicker", event_time, 0, symbol, *[Decimal(1)] * 4))
                await asyncio.sleep(0)
            await eventually(lambda: producer.sent == 3_000, timeout_s=30)
            records = await tail.records({symbol.encode() for symbol in symbols}, 3_000)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await producer.close()
    assert producer.failed == 0 and producer.dropped == 0
    partitioner, partitions = DefaultPartitioner(), list(range(MINI_TICKER_PARTITIONS))
    for symbol in symbols:
        mine = [record for record in records if record.key == symbol.encode()]
        assert [orjson.loads(record.value)["E"] for record in mine] == list(range(100))
        assert {record.partition for record in mine} == {partitioner(symbol.encode(), partitions, partitions)}


async def test_stopping_after_a_flush_delivers_every_record_taken_for_a_round(kafka_bootstrap):
    # The stop sequence: flush (wait until the producer holds every record), cancel the sender, close. A round
    # hands its partitions' batches over one after the other, so flush waits for the records it took too.
    symbols = [f"zz{uuid.uuid4().hex[:8]}usdt" for _ in range(12)]
    producer = TickerProducer(kafka_bootstrap, enable_idempotence=False, maxsize=10_000)
    task = asyncio.create_task(producer.run())
    try:
        await eventually(lambda: producer.healthy, timeout_s=30)
        for event_time in range(250):
            for symbol in symbols:
                producer.submit(KafkaMsg("24hrMiniTicker", event_time, 0, symbol, *[Decimal(1)] * 4))
        await producer.flush(30)
        assert producer.queue_depth == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await producer.close(timeout_s=30)
    assert (producer.sent, producer.failed, producer.dropped) == (3_000, 0, 0)


async def test_a_round_the_producer_refuses_at_once_goes_back_to_the_buffer_each_symbol_in_order(kafka_bootstrap):
    # A producer that refuses a batch as it is handed over (here: stopped, so aiokafka raises ProducerClosed):
    # that batch and the rest of the round go back to the front of the buffer, counted as failed, each
    # symbol's records in the order submitted, to be sent again after the backoff.
    symbols = [f"zz{uuid.uuid4().hex[:8]}usdt" for _ in range(12)]
    sink = TickerProducer(kafka_bootstrap, enable_idempotence=False, maxsize=10_000)
    task = asyncio.create_task(sink.run())
    try:
        await eventually(lambda: sink.healthy, timeout_s=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await sink._producer.partitions_for(MINI_TICKER_TOPIC)  # the topic's partitions known from here on
    await sink._producer.stop()
    messages = [
        KafkaMsg("24hrMiniTicker", event_time, 0, symbol, *[Decimal(1)] * 4)
        for event_time in range(5)
        for symbol in symbols
    ]
    for message in messages:
        sink.submit(message)
    await sink._send_round(sink._buffer.take_up_to(KAFKA_ROUND_RECORDS))
    assert (sink.sent, sink.failed, sink.queue_depth, sink.healthy) == (0, 60, 60, False)
    given_back = sink._buffer.take_up_to(KAFKA_ROUND_RECORDS)
    assert sorted(given_back, key=messages.index) == messages
    for symbol in symbols:
        assert [m.event_time_ms for m in given_back if m.symbol == symbol] == list(range(5))


async def test_closing_on_a_broker_that_died_gives_up_once_nothing_is_delivered(own_kafka):
    # The embedded mesh stops the aggregator when its broker crashes and starts the broker again only once the
    # aggregator has exited: a close that waited its whole timeout for records no broker will take would hold
    # the broker's restart, and the prices, back by that long.
    broker, port = own_kafka, own_kafka.port
    symbol = f"zz{uuid.uuid4().hex[:8]}usdt"
    producer = TickerProducer(f"127.0.0.1:{port}", enable_idempotence=False)
    task = asyncio.create_task(producer.run())
    try:
        producer.submit(KafkaMsg("24hrMiniTicker", 1, 0, symbol, *[Decimal(1)] * 4))
        await eventually(lambda: producer.sent == 1, timeout_s=30)
        broker.kill()
        for event_time in (2, 3, 4):
            producer.submit(KafkaMsg("24hrMiniTicker", event_time, 0, symbol, *[Decimal(1)] * 4))
        await eventually(lambda: producer.queue_depth == 0 or producer.failed > 0, timeout_s=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Up to a minute in all, but not a second without a delivery: it returns long before the minute.
    await asyncio.wait_for(producer.close(timeout_s=60.0, stall_s=0.5), timeout=30)
    assert producer.sent == 1 and producer.failed >= 1


async def test_a_price_key_that_is_not_a_second_stat_is_replaced(redis_url):
    symbol = f"zz{uuid.uuid4().hex[:8]}usdt"
    client = connect_redis(redis_url)
    publisher_client = connect_redis(redis_user_url(redis_url, "aggregator"))
    publisher = StatPublisher(publisher_client)
    task = asyncio.create_task(publisher.run())
    try:
        for junk in (b"not json", b'{"p": "1"}', b'{"t": "x"}'):
            await client.set(f"price:{symbol}", junk)
            published = publisher.published
            publisher.submit(stat(symbol, 5))
            await eventually(lambda published=published: publisher.published == published + 1)
            await client.delete(f"price:{symbol}")
        assert publisher.failures == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        await publisher_client.aclose()


async def test_a_whole_market_frame_of_tickers_is_stored_and_an_older_ticker_never_replaces_one(redis_url):
    run = uuid.uuid4().hex[:8]
    symbols = [f"zz{run}{n:04d}" for n in range(2000)]
    client = connect_redis(redis_url)
    store_client = connect_redis(redis_user_url(redis_url, "aggregator"))
    store = TickerStore(store_client)
    task = asyncio.create_task(store.run())
    try:
        frame = [mini_ticker(symbol, 2000) for symbol in symbols]
        store.submit(frame)
        await eventually(lambda: store.written == 2000)
        stored = await client.hmget(TICKER_KEY, symbols)
        assert [orjson.loads(value) for value in stored] == [
            orjson.loads(jsonutil.dumps(day_ticker_json(ticker))) for ticker in frame
        ]
        assert await client.hmget(TICKER_TIME_KEY, symbols[:2]) == [b"2000", b"2000"]

        # An older ticker, the same one again (a retried round), a newer one.
        first, second, third = symbols[:3]
        store.submit(
            [mini_ticker(first, 1000, "1"), mini_ticker(second, 2000, "2"), mini_ticker(third, 3000, "3")]
        )
        await eventually(lambda: store.written + store.stale == 2003)

        assert (store.written, store.stale, store.failures) == (2001, 2, 0)
        stored = await client.hmget(TICKER_KEY, [first, second, third])
        assert [orjson.loads(value)["c"] for value in stored] == ["61837.63000000", "61837.63000000", "3"]
        assert await client.hget(TICKER_TIME_KEY, third) == b"3000"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.hdel(TICKER_KEY, *symbols)
        await client.hdel(TICKER_TIME_KEY, *symbols)
        await client.aclose()
        await store_client.aclose()


async def test_while_redis_is_down_only_the_newest_ticker_of_each_symbol_waits_and_is_then_stored(late_redis):
    url, start_redis = late_redis
    client = connect_redis(url)
    store = TickerStore(client)
    task = asyncio.create_task(store.run())
    try:
        store.submit([mini_ticker("btcusdt", 1000, "1")])
        await eventually(lambda: store.failures >= 1)
        assert store.healthy is False

        assert not inspect.iscoroutinefunction(TickerStore.submit)
        for second in range(2, 6):
            assert store.submit([mini_ticker("btcusdt", second * 1000, str(second))]) is None
        store.submit([mini_ticker("ethusdt", 3000, "30"), mini_ticker("ethusdt", 2000, "20")])
        assert store.pending() == 2 and store.written == 0

        start_redis()
        await eventually(lambda: store.written == 2)

        stored = await client.hmget(TICKER_KEY, ["btcusdt", "ethusdt"])
        assert [orjson.loads(value)["c"] for value in stored] == ["5", "30"]
        assert store.pending() == 0 and store.healthy is True
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


async def test_stats_are_published_once_each_after_redis_forgot_its_scripts(late_redis):
    # Scripts are called by their SHA1 alone: a server that no longer knows them (restarted, or flushed as
    # here) answers NOSCRIPT, and those calls must be loaded and run again, each exactly once.
    url, start_redis = late_redis
    start_redis()
    client = connect_redis(url)
    admin = connect_redis(redis_user_url(url, TESTS_REDIS_USER))
    publisher = StatPublisher(client, recent=10)
    task = asyncio.create_task(publisher.run())
    try:
        publisher.submit(stat("btcusdt", 1, "101"))
        await eventually(lambda: publisher.published == 1)
        await admin.script_flush()
        for second in (2, 3):
            publisher.submit(stat("btcusdt", second, f"10{second}"))
        publisher.submit(stat("ethusdt", 1, "201"))
        await eventually(lambda: publisher.published == 4)

        recent = [orjson.loads(item) for item in await admin.lrange(seconds_key("btcusdt"), 0, -1)]
        assert [(item["t"], item["p"]) for item in recent] == [(1000, "101"), (2000, "102"), (3000, "103")]
        assert orjson.loads(await admin.get("price:ethusdt"))["p"] == "201"
        assert publisher.stale == 0 and publisher.failures == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        await admin.aclose()
