"""Reads by key that share a query when they arrive together: :class:`ReadBatcher`.

The policy (of group commit, applied to reads): a read asked while fewer than ``max_in_flight`` queries run
goes at once, alone, so a read on a quiet process costs and waits what a plain query does; a read asked while
``max_in_flight`` queries run waits, and every read that waits goes in the next query, at most ``max_batch``
keys each, as soon as one of the running queries ends. So the busier the process, the more reads each query
(and each checkout of a pooled connection) serves, and no read waits for more than the queries ahead of it.
Nothing here knows what is read: ``fetch_many`` does (:meth:`profile_bff.store.ProfileStore.load`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: ``fetch_many(keys)`` → one result per key, in the order of ``keys`` (a key given twice is answered twice);
#: a result that is an exception is raised to that key's reader alone; an exception raised by ``fetch_many``
#: goes to every reader of the batch.
FetchMany = Callable[[Sequence[K]], Awaitable[Sequence["V | Exception"]]]


class ReadBatcher(Generic[K, V]):
    """Runs ``fetch_many`` for the keys of :meth:`load`, sharing a query between the reads that arrive while
    ``max_in_flight`` (≥ 1) queries run, at most ``max_batch`` (≥ 1) keys a query (module docstring).

    ``in_flight`` and ``waiting`` say how many queries run and how many reads wait now. Use it from one event
    loop.
    """

    def __init__(self, fetch_many: FetchMany[K, V], *, max_in_flight: int, max_batch: int) -> None:
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError("max_in_flight and max_batch must be at least 1")
        self._fetch_many = fetch_many
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._in_flight = 0
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._batches: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def load(self, key: K) -> V:
        """The result of ``key``; raises what ``fetch_many`` raised, or the exception that is its result.

        Cancelling the caller cancels only its wait: a query that already carries its key still runs for the
        other keys."""
        if self._in_flight < self._max_in_flight and not self._waiting:
            self._in_flight += 1
            try:
                [result] = await self._fetch_many([key])
            finally:
                self._query_ended()
            if isinstance(result, Exception):
                raise result
            return result
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        return await future

    def _query_ended(self) -> None:
        self._in_flight -= 1
        if self._waiting and self._in_flight < self._max_in_flight:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            self._in_flight += 1
            task = asyncio.create_task(self._run(batch))
            self._batches.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._batches.discard)

    async def _run(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        try:
            results = await self._fetch_many([key for key, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            if len(results) != len(batch):
                results = [RuntimeError(f"{len(results)} results for {len(batch)} keys")] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # its reader was cancelled
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._query_ended()
