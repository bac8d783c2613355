"""How :class:`aggregator.store.KafkaSink` groups a round's records into per-partition batches
(:func:`aggregator.store.by_partition`): where the producer itself would put each record (Kafka's default
partitioner, murmur2 of the key), and in the order they came."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from aggregator.store import by_partition, record_bytes


@given(keys=st.lists(st.sampled_from([b"btcusdt", b"ethusdt", b"dotusdt", b"solusdt", b"x"]), max_size=50))
def test_each_record_goes_where_the_default_partitioner_puts_its_key_in_its_order(keys):
    partitioner, partitions = DefaultPartitioner(), [0, 1, 2]
    encoded = [(index, key, b"value") for index, key in enumerate(keys)]
    groups = by_partition(encoded, partitions, partitioner)
    assert sorted(item for _, members in groups for item in members) == encoded
    for partition, members in groups:
        assert [index for index, _, _ in members] == sorted(index for index, _, _ in members)
        assert all(partitioner(key, partitions, partitions) == partition for _, key, _ in members)
    assert len({partition for partition, _ in groups}) == len(groups)


def test_a_symbol_always_lands_on_the_same_partition():
    partitioner = DefaultPartitioner()
    first = by_partition([(1, b"btcusdt", b"a")], [0, 1, 2], partitioner)
    again = by_partition([(2, b"ethusdt", b"b"), (3, b"btcusdt", b"c")], [0, 1, 2], partitioner)
    assert dict(again)[first[0][0]][-1] == (3, b"btcusdt", b"c")


def test_record_bytes_counts_key_and_value():
    assert record_bytes(b"ab", b"cde") == 5
    assert record_bytes(b"ab", None) == 2
    assert record_bytes(None, None) == 0
