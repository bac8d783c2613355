"""Waiting in the tests for something that happens in the background: one polling helper for every suite."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


async def eventually(
    check: Callable[[], Any | Awaitable[Any]],
    timeout_s: float = 10.0,
    what: str | None = None,
    *,
    interval_s: float = 0.05,
    tolerate: tuple[type[BaseException], ...] = (),
) -> Any:
    """Call ``check`` (a function or a coroutine function) every ``interval_s`` seconds until it returns a
    truthy value, and return that value.

    An exception of a type in ``tolerate`` counts as a falsy result (a service not answering yet). After
    ``timeout_s`` seconds the test fails, naming ``what`` (default: the function's name) and the last result.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
        except tolerate as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            name = what or getattr(check, "__name__", "condition")
            pytest.fail(f"{name} not reached within {timeout_s} s (last: {last!r})")
        await asyncio.sleep(interval_s)
