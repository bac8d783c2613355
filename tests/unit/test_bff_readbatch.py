"""profile_bff.readbatch.ReadBatcher: a read alone goes at once; reads that arrive while the queries allowed
run share the next one. Driven with an in-memory fetch whose queries the test ends one by one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from profile_bff.readbatch import ReadBatcher


class FakeStore:
    """``fetch_many`` of squares: each call is recorded and waits until the test ends it (``finish``)."""

    def __init__(self) -> None:
        self.queries: list[list[int]] = []
        self._ends: list[asyncio.Future[Exception | None]] = []

    async def fetch_many(self, keys: Sequence[int]) -> list[int | Exception]:
        self.queries.append(list(keys))
        end: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._ends.append(end)
        error = await end
        if error is not None:
            raise error
        return [KeyError(key) if key < 0 else key * key for key in keys]

    async def finish(self, index: int, error: Exception | None = None) -> None:
        self._ends[index].set_result(error)
        for _ in range(5):  # let the readers and the next batch's task run
            await asyncio.sleep(0)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_read_alone_goes_at_once_in_a_query_of_its_own():
    store = FakeStore()
    batcher = ReadBatcher(store.fetch_many, max_in_flight=2, max_batch=10)

    read = asyncio.create_task(batcher.load(3))
    await settle()
    assert store.queries == [[3]]
    await store.finish(0)

    assert read.result() == 9
    assert (batcher.in_flight, batcher.waiting) == (0, 0)


async def test_reads_arriving_while_every_query_runs_wait_and_share_the_next_one():
    store = FakeStore()
    batcher = ReadBatcher(store.fetch_many, max_in_flight=2, max_batch=10)

    first = [asyncio.create_task(batcher.load(key)) for key in (1, 2)]
    await settle()
    later = [asyncio.create_task(batcher.load(key)) for key in (3, 4, 3)]
    await settle()
    assert store.queries == [[1], [2]]
    assert (batcher.in_flight, batcher.waiting) == (2, 3)

    await store.finish(0)  # a query ends: the three waiting reads go together, the key asked twice twice
    assert store.queries == [[1], [2], [3, 4, 3]]
    assert first[0].result() == 1 and not any(task.done() for task in later)
    await store.finish(2)
    await store.finish(1)

    assert [task.result() for task in first + later] == [1, 4, 9, 16, 9]
    assert (batcher.in_flight, batcher.waiting) == (0, 0)


async def test_a_batch_takes_at_most_max_batch_keys_and_the_rest_go_next():
    store = FakeStore()
    batcher = ReadBatcher(store.fetch_many, max_in_flight=1, max_batch=2)

    reads = [asyncio.create_task(batcher.load(key)) for key in range(1, 6)]
    await settle()
    assert store.queries == [[1]]
    for index in range(3):
        await store.finish(index)

    assert store.queries == [[1], [2, 3], [4, 5]]
    assert [task.result() for task in reads] == [1, 4, 9, 16, 25]


async def test_a_result_that_is_an_exception_goes_to_its_reader_alone():
    store = FakeStore()
    batcher = ReadBatcher(store.fetch_many, max_in_flight=1, max_batch=10)

    reads = [asyncio.create_task(batcher.load(key)) for key in (1, -2, 3)]
    await settle()
    await store.finish(0)
    await store.finish(1)

    assert reads[0].result() == 1 and reads[2].result() == 9
    with pytest.raises(KeyError):
        reads[1].result()


async def test_a_failed_query_fails_each_of_its_reads_and_the_waiting_ones_still_go():
    store = FakeStore()
    batcher = ReadBatcher(store.fetch_many, max_in_flight=1, max_batch=10)

    reads = [asyncio.create_task(batcher.load(key)) for key in (1, 2, 3)]
    await settle()
    await store.finish(0, ConnectionError("lost"))  # the lone read fails; 2 and 3 go next
    await store.finish(1, ConnectionError("lost again"))

    for task in reads:
        with pytest.raises(ConnectionError):
            task.result()
    assert store.queries == [[1], [2, 3]]
    assert (batcher.in_flight, batcher.waiting) == (0, 0)


async def test_a_cancelled_reader_does_not_stop_the_query_of_the_others():
    store = FakeStore()
    batcher = ReadBatcher(store.fetch_many, max_in_flight=1, max_batch=10)

    reads = [asyncio.create_task(batcher.load(key)) for key in (1, 2, 3)]
    await settle()
    await store.finish(0)
    reads[1].cancel()
    await settle()
    await store.finish(1)

    assert reads[1].cancelled()
    assert (reads[0].result(), reads[2].result()) == (1, 9)
    assert store.queries == [[1], [2, 3]]


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError):
        ReadBatcher(FakeStore().fetch_many, max_in_flight=0, max_batch=1)
    with pytest.raises(ValueError):
        ReadBatcher(FakeStore().fetch_many, max_in_flight=1, max_batch=0)
