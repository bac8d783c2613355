"""When a worker of several joins the shared port (profile_bff.app.ready_or_late): once every readiness check
holds, or after the wait, whichever comes first. The readiness is an in-memory fake of Bff.readiness."""

from __future__ import annotations

import asyncio

from profile_bff.app import ready_or_late


async def test_a_worker_joins_as_soon_as_it_is_ready():
    checks = {"database": False, "redis": False}

    async def dependencies_answer() -> None:
        await asyncio.sleep(0.1)
        checks["database"] = True
        await asyncio.sleep(0.1)
        checks["redis"] = True

    answering = asyncio.create_task(dependencies_answer())
    joined = await asyncio.wait_for(ready_or_late(lambda: dict(checks), wait_s=60), timeout=30)

    assert joined is True and all(checks.values())
    await answering


async def test_a_worker_ready_at_once_does_not_wait():
    assert await asyncio.wait_for(ready_or_late(lambda: {"database": True, "redis": True}, wait_s=60), 5)


async def test_a_worker_whose_dependencies_stay_down_joins_after_the_wait():
    loop = asyncio.get_running_loop()
    started = loop.time()

    joined = await ready_or_late(lambda: {"database": True, "redis": False}, wait_s=0.3)

    assert joined is False and loop.time() - started >= 0.3
