"""The embedded engines start and answer over real connections."""

import asyncpg
import redis.asyncio as redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def test_postgres_runs_queries(fresh_database):
    url = fresh_database("probe").replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT 1.5::numeric * 2") == 3
    finally:
        await conn.close()


async def test_redis_round_trip(redis_url):
    client = redis.from_url(redis_url)
    await client.set("probe", "42")
    assert await client.get("probe") == b"42"
    await client.aclose()


async def test_kafka_produce_then_consume_in_a_group(kafka_bootstrap):
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    await producer.send_and_wait("probe", key=b"k", value=b"v1")
    await producer.stop()
    consumer = AIOKafkaConsumer(
        "probe", bootstrap_servers=kafka_bootstrap, group_id="probe", auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=10_000)
        values = [record.value for records in batches.values() for record in records]
        assert values == [b"v1"]
    finally:
        await consumer.stop()
