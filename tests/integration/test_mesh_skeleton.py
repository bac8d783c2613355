"""The service skeleton every service shares (crypto_mesh.service, crypto_mesh.retry, crypto_mesh.httperrors)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from crypto_mesh.httperrors import ApiError, error_middleware
from crypto_mesh.retry import Backoff, retrying
from crypto_mesh.service import Lifecycle, start_service


async def test_stop_undoes_the_start_in_reverse_order_once():
    undone = []

    async def build(lifecycle: Lifecycle):
        for step in ("client", "tasks", "port"):
            lifecycle.on_stop(_record, undone, step)
        return 1234, {"state": "ok"}

    running = await start_service("example", build)
    assert (running.port, running.service) == (1234, {"state": "ok"})
    await running.stop()
    await running.stop()
    assert undone == ["port", "tasks", "client"]


async def test_a_failed_start_closes_what_it_had_opened_and_raises_its_error():
    undone = []

    async def build(lifecycle: Lifecycle):
        lifecycle.on_stop(_record, undone, "client")
        lifecycle.on_stop_sync(undone.append, "threads")
        raise OSError("port 8080 is busy")

    with pytest.raises(OSError, match="port 8080 is busy"):
        await start_service("example", build)
    assert undone == ["threads", "client"]


async def test_background_tasks_are_cancelled_and_awaited_at_stop():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever():
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def build(lifecycle: Lifecycle):
        task = lifecycle.task(forever(), "forever")
        return 0, task

    running = await start_service("example", build)
    await started.wait()
    await running.stop()
    assert cancelled.is_set() and running.service.cancelled()


async def test_an_http_port_serves_until_stop_and_is_closed_after():
    app = web.Application()
    app.router.add_get("/", _ok)

    async def build(lifecycle: Lifecycle):
        return await lifecycle.serve_http(app, "127.0.0.1", 0), None

    running = await start_service("example", build)
    url = f"http://127.0.0.1:{running.port}/"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert (response.status, await response.text()) == (200, "ok")
        await running.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url):
                pass


def test_backoff_delays_grow_to_their_cap_and_start_again_after_a_reset():
    backoff = Backoff(base_s=0.1, max_s=1.0)
    caps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for _ in range(200):
        backoff.reset()
        delays = [backoff.next_delay() for _ in caps]
        assert all(0 <= delay <= cap for delay, cap in zip(delays, caps, strict=True))
    assert backoff.failures == len(caps)
    backoff.reset()
    assert backoff.next_delay() <= 0.1
    with pytest.raises(ValueError):
        Backoff(base_s=2.0, max_s=1.0)


async def test_retrying_repeats_the_listed_errors_logs_each_pause_and_raises_others():
    calls = []

    async def no_pause(_seconds):
        pass

    async def flaky():
        calls.append(len(calls))
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "done"

    with capture_logs() as events:
        async for attempt in retrying("example_retrying", retry_on=(ConnectionError,), sleep=no_pause):
            with attempt:
                result = await flaky()
    assert (result, len(calls)) == ("done", 3)
    assert [(event["event"], event["attempt"], event["error"]) for event in events] == [
        ("example_retrying", 1, "ConnectionError: not yet"),
        ("example_retrying", 2, "ConnectionError: not yet"),
    ]

    with pytest.raises(KeyError):
        async for attempt in retrying("example_retrying", retry_on=(ConnectionError,), sleep=no_pause):
            with attempt:
                raise KeyError("not retried")


async def test_retrying_gives_up_with_the_last_error_once_told_to_stop():
    stopping = asyncio.Event()
    attempts = 0

    async def pause(_seconds):
        stopping.set()

    with pytest.raises(ConnectionError, match="down"):
        async for attempt in retrying("example_retrying", stop_when=stopping.is_set, sleep=pause):
            with attempt:
                attempts += 1
                raise ConnectionError("down")
    assert attempts == 2


class _Unavailable(Exception):
    pass


class _DatabaseDown(_Unavailable):
    pass


async def test_the_error_layer_answers_every_failure_as_the_mesh_error_json():
    async def api_error(_request):
        raise ApiError(429, "rate_limited", "slow down", {"Retry-After": "3"})

    async def domain_error(_request):
        raise _DatabaseDown("connection refused to 10.0.0.5")

    async def bug(_request):
        raise RuntimeError("secret internal state")

    app = web.Application(
        middlewares=[
            error_middleware({_Unavailable: lambda _exc, _request: ApiError(503, "unavailable", "retry later")})
        ]
    )
    app.router.add_get("/api", api_error)
    app.router.add_get("/domain", domain_error)
    app.router.add_get("/bug", bug)
    app.router.add_post("/only-post", _ok)

    async def build(lifecycle: Lifecycle):
        return await lifecycle.serve_http(app, "127.0.0.1", 0), None

    running = await start_service("example", build)
    base = f"http://127.0.0.1:{running.port}"
    try:
        async with aiohttp.ClientSession() as session:
            answers = {}
            for path in ("/api", "/domain", "/bug", "/missing", "/only-post"):
                async with session.get(base + path) as response:
                    answers[path] = (response.status, await response.json(), response.headers)
    finally:
        await running.stop()
    assert answers["/api"][:2] == (429, {"error": {"code": "rate_limited", "message": "slow down"}})
    assert answers["/api"][2]["Retry-After"] == "3"
    assert answers["/domain"][:2] == (503, {"error": {"code": "unavailable", "message": "retry later"}})
    assert answers["/bug"][:2] == (500, {"error": {"code": "internal", "message": "internal error"}})
    assert answers["/missing"][0] == 404 and answers["/missing"][1]["error"]["code"] == "not_found"
    assert answers["/only-post"][0] == 405 and answers["/only-post"][1]["error"]["code"] == "method_not_allowed"
    assert answers["/only-post"][2]["Allow"] == "POST"


async def _record(undone: list, step: str) -> None:
    undone.append(step)


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_a_background_task_that_fails_is_logged_at_once_and_only_once():
    lifecycle = Lifecycle("example")
    lost = asyncio.Event()

    async def consume():
        await lost.wait()
        raise RuntimeError("consumer lost")

    async def forever():
        await asyncio.Event().wait()

    with capture_logs() as events:
        failing = lifecycle.task(consume(), "consume")
        lifecycle.task(forever(), "forever")
        lost.set()
        await asyncio.gather(failing, return_exceptions=True)
        await asyncio.sleep(0)  # the done callbacks run
        logged_before_stop = [event for event in events if event["event"] == "background_task_failed"]
        await lifecycle.close()
    failures = [event for event in events if event["event"] == "background_task_failed"]
    assert [(event["task"], event["error"]) for event in logged_before_stop] == [
        ("consume", "RuntimeError: consumer lost")
    ]
    assert failures == logged_before_stop  # the stop cancels "forever" without an error, and logs nothing again
