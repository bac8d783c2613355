"""The service runtime's helpers for background tasks (crypto_mesh/runtime.py)."""

from __future__ import annotations

import asyncio

from crypto_mesh.retry import raise_if_cancelling


class LibraryTimeout(Exception):
    """What a client library raises when its own timeout fires."""


async def call_that_turns_cancellation_into_its_error() -> None:
    # As Python 3.11's asyncio.timeout can when a cancel arrives as it expires, and clients re-raise as theirs.
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        raise LibraryTimeout from None


async def retry(check_cancelling: bool, attempts: list[int], limit: int) -> None:
    """A retry loop on LibraryTimeout, as the services' background tasks are; gives up after ``limit``
    attempts so that a loop that swallows its cancellation still ends in the test."""
    while len(attempts) < limit:
        attempts.append(1)
        try:
            await call_that_turns_cancellation_into_its_error()
        except LibraryTimeout:
            if check_cancelling:
                raise_if_cancelling()


async def test_a_retry_loop_that_checks_ends_when_cancelled_even_if_the_cancellation_was_converted():
    attempts: list[int] = []
    task = asyncio.create_task(retry(True, attempts, limit=3))
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done and task.cancelled()
    assert len(attempts) == 1


async def test_without_the_check_such_a_loop_swallows_the_cancellation():
    # The failure the helper exists for: after cancel(), the loop retries as if nothing had happened.
    attempts: list[int] = []
    task = asyncio.create_task(retry(False, attempts, limit=2))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done() and task.cancelling() == 1 and len(attempts) == 2
    task.cancel()  # the second attempt converts this one too, then the loop gives up
    await asyncio.wait([task], timeout=2)
    assert task.done() and not task.cancelled()


async def call_that_swallows_cancellation() -> None:
    # As redis-py's pipeline was seen to: the cancellation ends the call, which returns as if it had worked.
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        return


async def test_a_loop_that_checks_at_the_top_ends_when_a_call_swallowed_its_cancellation():
    attempts: list[int] = []

    async def publish_forever() -> None:
        while len(attempts) < 3:
            raise_if_cancelling()
            attempts.append(1)
            await call_that_swallows_cancellation()

    task = asyncio.create_task(publish_forever())
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done and task.cancelled()
    assert len(attempts) == 1
