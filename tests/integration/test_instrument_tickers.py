"""Instrument search on the whole market path, every part real: the replay exchange derives the all-market
mini-tickers (``!miniTicker@arr``) from a shipped recording, socket_proxy streams them to the aggregator, the
aggregator keeps each symbol's 24 h ticker in Redis, and the BFF ranks and shows them.

The test listens to the exchange's mini-tickers itself, beside socket_proxy, so every price, change and volume
the BFF answers is checked against the very mini-ticker that produced it (the one whose event time it shows),
the change percent computed here independently.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import aiohttp
import orjson
import pytest
import redis.asyncio as redis
from support import polling
from support.credentials import service_headers
from support.databases import new_database
from support.stacks import exchange_and_proxy, serve_aggregator, serve_bff
from websockets.asyncio.client import connect

from support.ports import free_port

#: The market path crosses several services and processes: a longer default wait.
eventually = functools.partial(polling.eventually, timeout_s=30.0)


def unix_ms(rfc3339: str) -> int:
    """``"2024-08-09T00:00:01.000Z"`` → ``1723161601000``, exactly."""
    moment = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def change_percent(close: str, open_: str) -> str:
    """(close − open) / open × 100, rounded half-even to 8 places, as docs/CONTRACTS.md defines it."""
    if Decimal(open_) == 0:
        return "0"
    with localcontext() as context:
        context.prec = 80
        ratio = (Decimal(close) - Decimal(open_)) * 100 / Decimal(open_)
        return format(ratio.quantize(Decimal("1E-8"), rounding=ROUND_HALF_EVEN), "f")


@asynccontextmanager
async def mini_tickers(exchange_url: str) -> AsyncIterator[dict[tuple[str, int], dict]]:
    """Every all-market mini-ticker the exchange sends while the context lasts, by (symbol ``s``, ``E``)."""
    seen: dict[tuple[str, int], dict] = {}

    async def listen() -> None:
        async with connect(f"{exchange_url}/ws/!miniTicker@arr") as ws:
            async for message in ws:
                for ticker in orjson.loads(message):
                    seen[(ticker["s"], ticker["E"])] = ticker

    task = asyncio.create_task(listen())
    try:
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def get_json(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.mark.parametrize(
    ("recording", "trade_stream"), [("trade_recording", "trade"), ("agg_trade_recording", "aggTrade")]
)
async def test_btc_finds_btcusdt_first_priced_exactly_as_the_mini_ticker_that_produced_it(
    request, recording, trade_stream, postgres, redis_url, kafka_bootstrap
):
    client = redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    async with AsyncExitStack() as stack:
        exchange, proxy = await stack.enter_async_context(
            exchange_and_proxy(request.getfixturevalue(recording), speed=1)
        )
        sent = await stack.enter_async_context(mini_tickers(exchange.url))
        aggregator = await stack.enter_async_context(
            serve_aggregator(redis_url, kafka_bootstrap, proxy.port, trade_stream=trade_stream)
        )
        # The shipped exchangeInfo snapshot; the routes under test never call auth.
        bff = await stack.enter_async_context(
            serve_bff(new_database(postgres, "profile"), redis_url, free_port(), aggregator)
        )

        async def priced_first() -> dict | None:
            found = (await get_json(bff.http, f"{bff.url}/v1/instruments?q=btc&limit=5"))["instruments"]
            return found if found[0]["price"] is not None else None

        found = await eventually(priced_first, what="a priced instrument first for q=btc")
        btcusdt = found[0]
        assert btcusdt["symbol"] == "btcusdt"
        # The recording trades only ?usdt pairs: no other btc… instrument has a ticker.
        assert all(other["quote_volume"] is None and other["price"] is None for other in found[1:])
        event_ms = unix_ms(btcusdt["price_time"])
        ticker = await eventually(lambda: sent.get(("BTCUSDT", event_ms)), what="the mini-ticker shown")
        assert btcusdt["price"] == ticker["c"]
        assert btcusdt["quote_volume"] == ticker["q"]
        assert btcusdt["change_percent"] == change_percent(ticker["c"], ticker["o"])

        one = await get_json(bff.http, f"{bff.url}/v1/instruments/btcusdt")
        shown = one["ticker"]
        ticker = await eventually(lambda: sent.get(("BTCUSDT", unix_ms(shown["event_time"]))))
        assert shown == {
            "close": ticker["c"],
            "open": ticker["o"],
            "high": ticker["h"],
            "low": ticker["l"],
            "volume": ticker["v"],
            "quote_volume": ticker["q"],
            "change_price": format(Decimal(ticker["c"]) - Decimal(ticker["o"]), "f"),
            "change_percent": change_percent(ticker["c"], ticker["o"]),
            "event_time": shown["event_time"],
        }
        # Nobody follows btcusdt: the mesh has no live data of it to speak of.
        assert one["live"] is None and one["last_second"] is None

        async with aiohttp.ClientSession(headers=service_headers()) as control:
            async with control.put(f"{aggregator}/v1/symbols/btcusdt/followers/test:1") as response:
                assert response.status == 200

        async def live() -> dict | None:
            answer = await get_json(bff.http, f"{bff.url}/v1/instruments/btcusdt")
            return answer if answer["live"] else None

        followed = await eventually(live, what="live data of btcusdt once followed")
        assert followed["last_second"] is not None
