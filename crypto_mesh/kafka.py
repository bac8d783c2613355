"""Kafka helpers shared by the aggregator and the ETL (aiokafka)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

#: Topic of mini-ticker records (key = symbol, value = KafkaMsg JSON).
MINI_TICKER_TOPIC = "binance.miniticker"
#: Topic of every SecondStat the aggregator publishes (key = symbol, value = SecondStat JSON with message_id).
SECOND_TOPIC = "binance.second"
#: Topic of records the ETL could not decode, each wrapped with its origin and the reason.
DEADLETTER_TOPIC = "binance.deadletter"


async def ensure_topics(bootstrap_servers: str, topics: dict[str, int], replication_factor: int = 1) -> None:
    """Create each topic of ``topics`` (name → partition count) that does not exist yet.

    Raises ``aiokafka.errors.KafkaError`` if the broker cannot be reached or refuses.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
            for name, partitions in topics.items()
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created by a concurrent caller
    finally:
        await admin.close()
