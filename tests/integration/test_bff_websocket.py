"""The profile WebSocket over real sockets, against real auth, PostgreSQL and Redis: browser-friendly
authentication, token expiry, reconnects, second tabs, changes while connected, restarts of the BFF and of
the aggregator, two BFF replicas, slow and misbehaving clients.

The aggregator is the fake of tests/support/fake_aggregator.py, which answers its control API as the real one
does (docs/CONTRACTS.md, "Aggregator control HTTP"), which is all the BFF sees of it; prices are SecondStats
published on Redis as the aggregator publishes them. It can be stopped and started again on the same port,
forgetting its followers, to play an aggregator that restarted and lost them. One test runs the real
aggregator instead, on a socket_proxy and a replay exchange of the shipped recording, and restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp.http import WebSocketWriter
from support.polling import eventually
from support.bff import (
    Bff,
    new_symbol,
    next_profile,
    second_stat,
    wait_until_subscribed,
    write_exchange_info,
    write_second,
)
from support.databases import execute_sql, new_database
from support.fake_aggregator import FakeAggregator
from support.stacks import aggregator_settings, exchange_and_proxy, serve_auth, serve_bff

from aggregator.app import start as start_aggregator
from support.ports import free_port
from profile_bff.sockets import text_frame

WS = "/v2/user/profile/ws"
ORIGIN = "https://app.example"


@dataclass
class Stack:
    """Shared engines of one test module: where a BFF replica needs to point."""

    database_url: str
    redis_url: str
    auth_port: int
    aggregator: FakeAggregator
    exchange_info: Path

    def replica(self, **overrides):
        return serve_bff(
            self.database_url,
            self.redis_url,
            self.auth_port,
            self.aggregator,
            self.exchange_info,
            allowed_origins=ORIGIN,
            **overrides,
        )


@pytest.fixture(scope="module")
async def stack(postgres, redis_url, tmp_path_factory):
    async with (
        FakeAggregator() as aggregator,
        serve_auth(new_database(postgres, "auth"), tmp_path_factory.mktemp("auth")) as auth,
    ):
        yield Stack(
            new_database(postgres, "profile"),
            redis_url,
            auth.port,
            aggregator,
            write_exchange_info(tmp_path_factory.mktemp("exchange")),
        )


@pytest.fixture(scope="module")
async def bff(stack):
    async with stack.replica() as running:
        yield running


async def publish(bff: Bff, symbol: str, price: str, second_ms: int) -> None:
    """A new price as the aggregator writes it: key ``price:<symbol>`` set, then published on ``<symbol>``."""
    await wait_until_subscribed(bff, symbol)
    await write_second(bff.redis, symbol, price, second_ms)


async def until_unsubscribed(bff: Bff, channel: str) -> None:
    """Wait until nobody (the BFF) is subscribed to Redis channel ``channel`` any more."""

    async def unsubscribed() -> bool:
        return (await bff.redis.pubsub_numsub(channel))[0][1] == 0

    await eventually(unsubscribed, what=f"{channel} unsubscribed", interval_s=0.02)


def token_of(auth: dict[str, str]) -> str:
    return auth["Authorization"].removeprefix("Bearer ")


# -- authentication that browsers can do ------------------------------------------------------------------


async def test_the_access_token_as_a_bearer_subprotocol_opens_the_socket_and_bearer_is_echoed(bff):
    user_id, auth = await bff.user()
    async with (
        aiohttp.ClientSession() as browser,
        browser.ws_connect(
            f"{bff.url}{WS}", protocols=("bearer", token_of(auth)), headers={"Origin": ORIGIN}
        ) as ws,
    ):
        assert ws.protocol == "bearer"
        assert (await next_profile(ws))["ID"] == user_id


async def test_a_bad_token_as_subprotocol_is_unauthorized(bff):
    for protocols in (("bearer", "not-a-token"), ("bearer",)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await bff.http.ws_connect(f"{bff.url}{WS}", protocols=protocols)
        assert refused.value.status == 401


async def test_a_one_time_ticket_opens_one_socket_only(bff):
    user_id, auth = await bff.user()
    async with bff.http.post(f"{bff.url}/v2/user/ws-ticket", headers=auth) as resp:
        assert resp.status == 201
        ticket = (await resp.json())["ticket"]
    async with bff.http.ws_connect(f"{bff.url}{WS}?ticket={ticket}", headers={"Origin": ORIGIN}) as ws:
        assert (await next_profile(ws))["ID"] == user_id
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await bff.http.ws_connect(f"{bff.url}{WS}?ticket={ticket}")
    assert refused.value.status == 401


async def test_an_origin_outside_the_allow_list_is_forbidden_whatever_the_credentials(bff):
    _, auth = await bff.user()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await bff.http.ws_connect(
            f"{bff.url}{WS}", protocols=("bearer", token_of(auth)), headers={"Origin": "https://evil.example"}
        )
    assert refused.value.status == 403
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers={**auth, "Origin": ORIGIN + "/"}) as ws:
        await next_profile(ws)


async def test_the_bffs_own_origin_opens_the_socket_as_the_dashboard_it_serves_does(bff):
    user_id, auth = await bff.user()
    async with bff.http.ws_connect(
        f"{bff.url}{WS}", protocols=("bearer", token_of(auth)), headers={"Origin": bff.url}
    ) as ws:
        assert (await next_profile(ws))["ID"] == user_id
    # Another port of the same host is another origin.
    port = int(bff.url.rsplit(":", 1)[1])
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await bff.http.ws_connect(
            f"{bff.url}{WS}", headers={**auth, "Origin": f"http://127.0.0.1:{port + 1}"}
        )
    assert refused.value.status == 403


@pytest.fixture(scope="module")
async def short_lived(stack, postgres, redis_url, tmp_path_factory):
    """A BFF whose auth issues access tokens valid for 2 seconds."""
    async with (
        serve_auth(
            new_database(postgres, "auth"), tmp_path_factory.mktemp("short-auth"), access_token_ttl_s=2
        ) as auth,
        serve_bff(
            new_database(postgres, "profile"), redis_url, auth.port, stack.aggregator, stack.exchange_info
        ) as running,
    ):
        yield running


async def test_an_expired_token_is_refused_at_connect(short_lived):
    _, auth = await short_lived.user()
    await asyncio.sleep(3.1)
    for connect in (
        lambda: short_lived.http.ws_connect(f"{short_lived.url}{WS}", headers=auth),
        lambda: short_lived.http.ws_connect(f"{short_lived.url}{WS}", protocols=("bearer", token_of(auth))),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect()
        assert refused.value.status == 401


async def test_the_socket_is_closed_with_4401_when_its_token_expires(short_lived):
    _, auth = await short_lived.user()
    async with short_lived.http.ws_connect(f"{short_lived.url}{WS}", headers=auth) as ws:
        await next_profile(ws)
        message = await ws.receive(timeout=10)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4401


# -- tracking across reconnects, tabs and changes ----------------------------------------------------------


async def test_on_connect_the_snapshot_comes_at_once_and_the_holder_is_followed(bff):
    symbol = new_symbol()
    user_id, auth = await bff.user()
    await bff.add_coin(auth, symbol)
    await bff.redis.set(f"price:{symbol}", second_stat(symbol, "10", 1723161600000))
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        assert (await next_profile(ws))["Coins"]["Totals"] == {symbol: "20"}
        await eventually(lambda: bff.aggregator.followed_by(user_id) == {symbol})


async def test_a_reconnecting_user_gets_a_snapshot_and_prices_keep_flowing(bff):
    symbol = new_symbol()
    _, auth = await bff.user()
    await bff.add_coin(auth, symbol)
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        await next_profile(ws)
    await until_unsubscribed(bff, symbol)
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        await next_profile(ws)
        await publish(bff, symbol, "3", 1723161601000)
        assert (await next_profile(ws))["Coins"]["Totals"] == {symbol: "6"}


async def test_a_second_tab_gets_the_same_pushes_and_survives_the_first_closing(bff):
    symbol = new_symbol()
    _, auth = await bff.user()
    await bff.add_coin(auth, symbol)
    first = await bff.http.ws_connect(f"{bff.url}{WS}", headers=auth)
    second = await bff.http.ws_connect(f"{bff.url}{WS}", headers=auth)
    await next_profile(first)
    await next_profile(second)
    await publish(bff, symbol, "4", 1723161601000)
    assert (await next_profile(first))["Total"] == (await next_profile(second))["Total"] == "8"
    await first.close()
    await publish(bff, symbol, "5", 1723161602000)
    assert (await next_profile(second))["Total"] == "10"
    await second.close()


async def test_a_coin_added_while_connected_is_pushed_then_priced(bff):
    symbol = new_symbol()
    _, auth = await bff.user()
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        assert (await next_profile(ws))["Coins"]["Quantities"] == {}
        await bff.add_coin(auth, symbol, "3")
        assert (await next_profile(ws))["Coins"]["Quantities"] == {symbol: "3"}
        await publish(bff, symbol, "2", 1723161601000)
        assert (await next_profile(ws))["Total"] == "6"


async def test_a_coin_removed_while_connected_is_pushed_and_its_channel_released(bff):
    symbol, other = new_symbol(), new_symbol()
    _, auth = await bff.user()
    await bff.add_coin(auth, symbol)
    await bff.add_coin(auth, other)
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        await next_profile(ws)
        await wait_until_subscribed(bff, symbol)
        async with bff.http.delete(f"{bff.url}/v2/coin/symbol?symbol={symbol}", headers=auth) as resp:
            assert resp.status == 204
        assert (await next_profile(ws))["Coins"]["Quantities"] == {other: "2"}
        await until_unsubscribed(bff, symbol)


async def test_the_last_client_of_a_symbol_leaving_releases_its_channel(bff):
    symbol = new_symbol()
    _, first = await bff.user()
    _, second = await bff.user()
    await bff.add_coin(first, symbol)
    await bff.add_coin(second, symbol)
    one = await bff.http.ws_connect(f"{bff.url}{WS}", headers=first)
    two = await bff.http.ws_connect(f"{bff.url}{WS}", headers=second)
    await next_profile(one)
    await next_profile(two)
    await one.close()
    await publish(bff, symbol, "1", 1723161601000)
    assert (await next_profile(two))["Total"] == "2"
    await two.close()
    await until_unsubscribed(bff, symbol)


# -- replicas and restarts ---------------------------------------------------------------------------------


async def test_a_change_made_through_another_replica_is_pushed_without_reconnecting(stack, bff):
    symbol = new_symbol()
    _, auth = await bff.user()
    async with stack.replica() as other, bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        await next_profile(ws)
        await other.add_coin(auth, symbol, "7")
        assert (await next_profile(ws))["Coins"]["Quantities"] == {symbol: "7"}
        async with other.http.ws_connect(f"{other.url}{WS}", headers=auth) as on_other:
            await next_profile(on_other)
            await publish(bff, symbol, "1", 1723161601000)
            assert (await next_profile(ws))["Total"] == (await next_profile(on_other))["Total"] == "7"


async def test_after_a_bff_restart_followers_are_rebuilt_and_a_reconnect_resumes_prices(stack):
    symbol = new_symbol()
    async with aiohttp.ClientSession() as browser:
        async with stack.replica() as first:
            user_id, auth = await first.user()
            await first.add_coin(auth, symbol)
            ws = await browser.ws_connect(f"{first.url}{WS}", headers=auth)
            await next_profile(ws)
            # The aggregator loses every follower while the BFF goes away.
            stack.aggregator.followers.clear()
        closing = await ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001
    async with stack.replica() as second:
        # Start-up sets every holder's follower set again, before any client connects.
        await eventually(lambda: stack.aggregator.followed_by(user_id) == {symbol})
        assert ("set", symbol) in stack.aggregator.calls_of(user_id)
        async with second.http.ws_connect(f"{second.url}{WS}", headers=auth) as ws:
            await next_profile(ws)
            await publish(second, symbol, "9", 1723161601000)
            assert (await next_profile(ws))["Total"] == "18"


async def test_while_the_aggregator_restarts_prices_keep_flowing_and_its_followers_are_restored(stack, bff):
    symbol, added_meanwhile = new_symbol(), new_symbol()
    user_id, auth = await bff.user()
    await bff.add_coin(auth, symbol)
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        await next_profile(ws)
        await eventually(lambda: stack.aggregator.followed_by(user_id) == {symbol})
        await stack.aggregator.stop()
        try:
            # A coin added while the aggregator is down is stored and pushed all the same.
            await bff.add_coin(auth, added_meanwhile)
            assert set((await next_profile(ws))["Coins"]["Quantities"]) == {symbol, added_meanwhile}
            await publish(bff, symbol, "1", 1723161601000)
            assert (await next_profile(ws))["Coins"]["Prices"] == {symbol: "1"}
        finally:
            await stack.aggregator.start()
    assert stack.aggregator.followed_by(user_id) == set()
    # The next connect sets the user's whole set on the restarted aggregator.
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        await next_profile(ws)
        await eventually(lambda: stack.aggregator.followed_by(user_id) == {symbol, added_meanwhile})
        await publish(bff, added_meanwhile, "3", 1723161602000)
        assert (await next_profile(ws))["Coins"]["Prices"] == {symbol: "1", added_meanwhile: "3"}


async def next_price_time(ws: aiohttp.ClientWebSocketResponse, symbol: str, after: str = "") -> str:
    """Read profiles until one prices ``symbol`` at a second later than ``after`` (RFC 3339 strings of one
    format compare as times); returns that ``PriceTimes`` entry."""
    while True:
        # The replay exchange plays the recording in real time: about one SecondStat per second.
        seen = (await next_profile(ws, timeout=15.0))["Coins"]["PriceTimes"].get(symbol, "")
        if seen > after:
            return seen


async def test_while_the_real_aggregator_restarts_prices_keep_flowing(
    stack, postgres, redis_database_url, kafka_bootstrap, trade_recording
):
    symbol = "btcusdt"  # in the recording, and listed in exchangeInfo
    port = free_port()
    # A Redis database of its own, empty: the aggregator never publishes a second older than a price:btcusdt
    # another test left.
    redis_url = redis_database_url()
    async with exchange_and_proxy(trade_recording, speed=1.0) as (_, proxy):
        # On a port of its own, so that it comes back where the BFF calls it.
        settings = aggregator_settings(redis_url, kafka_bootstrap, proxy.port, port=port)
        aggregator = await start_aggregator(settings)
        try:
            # A profile database of its own: at start-up the BFF follows every holder's coins, and the other
            # tests' symbols are not in the recording.
            async with serve_bff(
                new_database(postgres, "profile"),
                redis_url,
                stack.auth_port,
                f"http://127.0.0.1:{port}",
                stack.exchange_info,
            ) as bff:
                _, auth = await bff.user()
                await bff.add_coin(auth, symbol)
                async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
                    await next_profile(ws)
                    before = await next_price_time(ws, symbol)
                    await aggregator.stop()
                    # Followers live in Redis: the aggregator started again tracks the symbol at once, and
                    # the BFF, subscribed to Redis, pushes its prices to the open socket.
                    aggregator = await start_aggregator(settings)
                    await next_price_time(ws, symbol, after=before)
                    await next_price_time(ws, symbol, after=await next_price_time(ws, symbol, after=before))
                await bff.remove_coin(auth, symbol)
        finally:
            await aggregator.stop()


# -- slow and misbehaving clients --------------------------------------------------------------------------


async def hold_many(bff: Bff, user_id: int, symbols: list[str]) -> None:
    """Give the user many priced coins at once (straight into the database and Redis), so that each profile
    message is large (about 40 KB for 400 coins)."""
    values = ", ".join(f"({user_id}, '{symbol}', 1)" for symbol in symbols)
    await execute_sql(bff.database_url, f"INSERT INTO coins (user_id, symbol, quantity) VALUES {values}")
    await bff.redis.mset(
        {f"price:{symbol}": second_stat(symbol, "1.25", 1723161600000) for symbol in symbols}
    )


@contextlib.asynccontextmanager
async def holder_of_new_symbols(bff: Bff, count: int):
    """A new user holding ``count`` new symbols, connected and past its snapshot (which has no prices yet),
    once the BFF is subscribed to each symbol: yields ``(symbols, ws)``, the symbols sorted."""
    symbols = sorted(new_symbol() for _ in range(count))
    _, auth = await bff.user()
    for symbol in symbols:
        await bff.add_coin(auth, symbol)
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        assert (await next_profile(ws))["Coins"]["Prices"] == {}
        for symbol in symbols:
            await wait_until_subscribed(bff, symbol)
        yield symbols, ws


def at_second(second: int) -> str:
    """The ``PriceTimes`` text of second ``second`` (0 to 59) after 2024-08-09T00:00:00Z (1723161600000)."""
    return f"2024-08-09T00:00:{second:02d}.000Z"


async def test_with_a_coalescing_window_every_push_is_exact_and_the_last_has_the_newest_second_of_each(stack):
    # Which prices share a message is the window's rule, unit-tested in tests/test_bff_fanout.py; it depends
    # on when each price arrives. Whatever the grouping, every push must be a profile at prices that were
    # published for the seconds it names, a symbol's second never goes back from one push to the next, and
    # the last push carries the newest second of every coin: nothing lost, nothing reordered.
    async with stack.replica(ws_coalesce_ms=50) as bff, holder_of_new_symbols(bff, 3) as (symbols, ws):
        last_second = 20
        for second in range(1, last_second + 1):
            for n, symbol in enumerate(symbols, start=1):
                stat = second_stat(symbol, str(n * second), 1723161600000 + second * 1000)
                assert await bff.redis.publish(symbol, stat) == 1
        seconds_of = {at_second(second): second for second in range(1, last_second + 1)}
        shown: dict[str, int] = {}
        while shown != dict.fromkeys(symbols, last_second):
            coins = (profile := await next_profile(ws))["Coins"]
            assert set(coins["Prices"]) == set(coins["PriceTimes"]) == set(coins["Totals"])
            for n, symbol in enumerate(symbols, start=1):
                if symbol not in coins["Prices"]:
                    continue
                second = seconds_of[coins["PriceTimes"][symbol]]
                assert second >= shown.get(symbol, 0), f"{symbol} went back to second {second}"
                shown[symbol] = second
                assert coins["Prices"][symbol] == str(n * second)
                assert coins["Totals"][symbol] == str(2 * n * second)  # the holder's quantity is 2
            assert Decimal(profile["Total"]) == sum(Decimal(total) for total in coins["Totals"].values())
            assert profile["PricesAt"] == max(coins["PriceTimes"].values())


async def test_prices_published_in_one_pipeline_reach_a_holder_as_one_message_without_a_window(bff):
    # The default window is 0: the aggregator publishes the SecondStats its clock closes in one tick in one
    # pipelined round trip, and the reader dispatches all of them before the fan-out runs.
    async with holder_of_new_symbols(bff, 3) as (symbols, ws):
        for second in (1723161601000, 1723161602000):
            async with bff.redis.pipeline(transaction=False) as pipe:
                for n, symbol in enumerate(symbols, start=1):
                    pipe.publish(symbol, second_stat(symbol, str(n * second // 1000), second))
                assert await pipe.execute() == [1, 1, 1]
            profile = await next_profile(ws)
            assert profile["Coins"]["Prices"] == {
                symbol: str(n * second // 1000) for n, symbol in enumerate(symbols, start=1)
            }
            assert set(profile["Coins"]["PriceTimes"].values()) == {profile["PricesAt"]}
        # Two rounds of three prices made two messages: the next message is that of a lone later price.
        await bff.redis.publish(symbols[0], second_stat(symbols[0], "7", 1723161603000))
        profile = await next_profile(ws)
        assert profile["Coins"]["Prices"][symbols[0]] == "7"
        assert profile["Coins"]["PriceTimes"][symbols[0]] == "2024-08-09T00:00:03.000Z"


async def test_a_slow_client_gets_the_latest_profile_not_a_backlog(bff):
    hot = new_symbol()
    slow_id, slow_auth = await bff.user()
    _, watcher_auth = await bff.user()
    await hold_many(bff, slow_id, [hot, *(new_symbol() for _ in range(399))])
    await bff.add_coin(watcher_auth, hot)
    slow = await bff.http.ws_connect(f"{bff.url}{WS}", headers=slow_auth, max_msg_size=0)
    watcher = await bff.http.ws_connect(f"{bff.url}{WS}", headers=watcher_auth)
    await next_profile(watcher)
    await wait_until_subscribed(bff, hot)
    published = 600
    async with bff.redis.pipeline(transaction=False) as pipe:
        for n in range(1, published + 1):
            pipe.publish(hot, second_stat(hot, str(n), 1723161600000 + n * 1000))
        await pipe.execute()
    # The watcher reads all along: once it has the last price, the BFF has dispatched every one.
    while (await next_profile(watcher))["Coins"]["Prices"][hot] != str(published):
        pass
    # The slow client, which read nothing so far, gets fewer profiles than prices, ending with the latest.
    received, latest = 0, None
    while latest != str(published):
        latest = (await next_profile(slow))["Coins"]["Prices"].get(hot)
        received += 1
    assert received < published
    await slow.close()
    await watcher.close()


async def test_a_client_that_stops_reading_is_disconnected_and_others_keep_receiving(stack):
    # No coalescing window, so that every price is a profile sent on its own.
    async with stack.replica(ws_send_timeout_s=0.5, ws_coalesce_ms=0) as bff:
        hot, shared = new_symbol(), new_symbol()
        stalled_id, stalled_auth = await bff.user()
        _, healthy_auth = await bff.user()
        await hold_many(bff, stalled_id, [hot, *(new_symbol() for _ in range(399))])
        await bff.add_coin(healthy_auth, shared)
        stalled = await bff.http.ws_connect(f"{bff.url}{WS}", headers=stalled_auth, max_msg_size=0)
        healthy = await bff.http.ws_connect(f"{bff.url}{WS}", headers=healthy_auth)
        await next_profile(healthy)
        await wait_until_subscribed(bff, hot)
        # One price at a time, so the BFF sends a large profile after each: the stalled peer's buffers fill,
        # the send waits past its bound, and the socket is dropped; with its user's only socket goes the
        # channel of its coin.
        for n in range(1, 5001):
            if not await bff.redis.publish(hot, second_stat(hot, str(n), 1723161600000 + n * 1000)):
                break
        else:
            pytest.fail("the stalled socket was never dropped")
        await publish(bff, shared, "2", 1723161601000)
        assert (await next_profile(healthy))["Total"] == "4"
        await healthy.close()
        await stalled.close()


async def test_garbage_text_frames_are_ignored_and_the_socket_keeps_working(bff):
    symbol = new_symbol()
    _, auth = await bff.user()
    await bff.add_coin(auth, symbol)
    async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
        await next_profile(ws)
        for garbage in ("hello", "{not json", "\u0000\ufffd", '{"subscribe": "everything"}'):
            await ws.send_str(garbage)
        await publish(bff, symbol, "1", 1723161601000)
        assert (await next_profile(ws))["Total"] == "2"


async def test_binary_and_oversized_frames_close_only_that_socket(bff):
    symbol = new_symbol()
    _, auth = await bff.user()
    await bff.add_coin(auth, symbol)
    bystander = await bff.http.ws_connect(f"{bff.url}{WS}", headers=auth)
    await next_profile(bystander)
    for send, code in (
        (lambda ws: ws.send_bytes(b"\x00\x01garbage"), 1003),
        (lambda ws: ws.send_str("x" * 10_000), 1009),
    ):
        async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
            await next_profile(ws)
            await send(ws)
            message = await ws.receive(timeout=5)
            while message.type == aiohttp.WSMsgType.TEXT:
                message = await ws.receive(timeout=5)
            assert message.type == aiohttp.WSMsgType.CLOSE and message.data == code
    await publish(bff, symbol, "1", 1723161601000)
    assert (await next_profile(bystander))["Total"] == "2"
    await bystander.close()


class _CapturingTransport:
    """A transport that keeps what is written, for aiohttp's own frame writer."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("length", [0, 125, 126, 65_535, 65_536])
async def test_the_frame_the_fan_out_encodes_once_per_user_is_the_one_aiohttp_writes(length):
    # The fan-out frames a user's profile once and writes those bytes to each of its sockets; at each
    # boundary of RFC 6455's payload length encoding they must equal what aiohttp's writer sends.
    payload = bytes(index % 251 for index in range(length))
    transport = _CapturingTransport()
    writer = WebSocketWriter(SimpleNamespace(_paused=False), transport)
    await writer.send_frame(payload, aiohttp.WSMsgType.TEXT)
    assert text_frame(payload) == bytes(transport.written)
