"""The BFF's symbol list follows the exchange: a BFF fetches ``GET /api/v3/exchangeInfo`` from a real replay
exchange (launcher/replay), whose document the test replaces between two fetches, over real HTTP, with real
auth, PostgreSQL and Redis (the aggregator is the fake of tests/support/fake_aggregator.py).

What a user sees: a symbol the exchange lists later is refused as unknown, then accepted once the BFF has
fetched the new list; a held symbol whose status becomes ``BREAK`` is refused for new coins naming its status
and still valued in its holder's profile; and a BFF keeps its last good list while the exchange fails, and
starts on its snapshot while the exchange is down.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.bff import Bff, error_body, second_stat
from support.databases import new_database
from support.exchange_info import replace_file, snapshot_with
from support.fake_aggregator import FakeAggregator
from support.polling import eventually
from support.stacks import serve_auth, serve_bff

from support.ports import free_port
from launcher.replay.server import Running as RunningExchange
from launcher.replay.server import start as start_exchange
from launcher.replay.settings import ReplaySettings
from profile_bff.instruments import InstrumentRefresh

#: Symbols only this run uses (the snapshot of 2021 lists none of them).
_RUN = uuid.uuid4().hex[:6]
#: Seconds between two fetches of the list: short, so that a replaced document is fetched within a test.
REFRESH_S = 0.2


@dataclass
class Stack:
    """What every BFF of this module talks to: auth, the fake aggregator, one profile database."""

    auth_port: int
    aggregator: FakeAggregator
    database_url: str
    redis_url: str


@pytest.fixture(scope="module")
async def stack(postgres, redis_url, tmp_path_factory) -> AsyncIterator[Stack]:
    async with (
        serve_auth(new_database(postgres, "auth"), tmp_path_factory.mktemp("auth")) as auth,
        FakeAggregator() as aggregator,
    ):
        yield Stack(auth.port, aggregator, new_database(postgres, "profile"), redis_url)


@dataclass
class Exchange:
    """A replay exchange serving ``document`` at ``url`` (``GET /api/v3/exchangeInfo``)."""

    url: str
    document: Path
    running: RunningExchange

    def publish(self, statuses: Mapping[str, str]) -> None:
        """From the next fetch on, serve the shipped snapshot with ``statuses`` (symbol → status) applied."""
        replace_file(self.document, snapshot_with(statuses))

    def break_document(self) -> None:
        """From the next fetch on, answer 500 (the file is no exchangeInfo body)."""
        replace_file(self.document, b'{"symbols": null}')


@pytest.fixture
async def exchange(tmp_path, agg_trade_recording) -> AsyncIterator[Exchange]:
    """A replay exchange of this test, serving the shipped snapshot until the test publishes another list."""
    document = tmp_path / "exchangeInfo.json"
    replace_file(document, snapshot_with({}))
    running = await start_exchange(
        ReplaySettings(port=0, files=(agg_trade_recording,), exchange_info_file=document)
    )
    try:
        yield Exchange(f"http://127.0.0.1:{running.port}", document, running)
    finally:
        await running.stop()


@asynccontextmanager
async def bff_fetching_from(stack: Stack, exchange_url: str) -> AsyncIterator[Bff]:
    """A BFF that starts on the shipped snapshot and fetches the list at ``exchange_url`` every
    :data:`REFRESH_S`."""
    async with serve_bff(
        stack.database_url,
        stack.redis_url,
        stack.auth_port,
        stack.aggregator,
        exchange_rest_url=exchange_url,
        exchange_info_refresh_s=REFRESH_S,
    ) as bff:
        yield bff


def refresh_of(bff: Bff) -> InstrumentRefresh:
    refresh = bff.running.service.instrument_refresh
    assert refresh is not None
    return refresh


async def fetched(bff: Bff, after: int = 0) -> None:
    """Wait until the BFF has applied more than ``after`` lists from the exchange."""
    refresh = refresh_of(bff)
    await eventually(lambda: refresh.applied > after, what="a list fetched from the exchange")


async def add_coin(bff: Bff, auth: dict[str, str], symbol: str) -> tuple[int, dict | None]:
    """``POST /v2/coin/symbol``: the status, and the error (``{"code", "message"}``) unless 201."""
    async with bff.http.post(
        f"{bff.url}/v2/coin/symbol", json={"symbol": symbol, "quantity": "2"}, headers=auth
    ) as resp:
        return resp.status, None if resp.status == 201 else await error_body(resp)


async def search(bff: Bff, query: str) -> dict[str, dict]:
    """``GET /v1/instruments?q=``: the instruments found, by symbol."""
    async with bff.http.get(f"{bff.url}/v1/instruments", params={"q": query}) as resp:
        assert resp.status == 200
        return {found["symbol"]: found for found in (await resp.json())["instruments"]}


async def test_a_symbol_the_exchange_lists_later_is_unknown_until_the_bff_fetches_the_new_list(
    stack, exchange
):
    listed_later = f"l{_RUN}usdt"
    async with bff_fetching_from(stack, exchange.url) as bff:
        await fetched(bff)
        _, auth = await bff.user()
        status, error = await add_coin(bff, auth, listed_later)
        assert (status, error["code"]) == (422, "unknown_symbol")
        assert error["message"] == f"{listed_later} is not listed by the exchange"

        exchange.publish({listed_later: "TRADING"})

        async def accepted() -> bool:
            status, error = await add_coin(bff, auth, listed_later)
            assert status == 201 or error["code"] == "unknown_symbol", error
            return status == 201

        await eventually(accepted, what=f"{listed_later} accepted")
        assert (await search(bff, listed_later))[listed_later]["status"] == "TRADING"


async def test_a_held_symbol_whose_status_becomes_break_is_refused_for_new_coins_and_still_valued(
    stack, exchange
):
    halted = f"h{_RUN}usdt"
    exchange.publish({halted: "TRADING"})
    async with bff_fetching_from(stack, exchange.url) as bff:
        await fetched(bff)
        holder, holder_auth = await bff.user()
        assert await add_coin(bff, holder_auth, halted) == (201, None)
        second_ms = (time.time_ns() // 1_000_000_000 - 5) * 1000
        await bff.redis.set(f"price:{halted}", second_stat(halted, "0.0421", second_ms))

        exchange.publish({halted: "BREAK"})
        # A fetch under way may have read the former document: of two more lists applied, the later is new.
        await fetched(bff, after=refresh_of(bff).applied + 1)

        _, newcomer_auth = await bff.user()
        status, error = await add_coin(bff, newcomer_auth, halted)
        assert (status, error) == (
            422,
            {"code": "symbol_not_trading", "message": f"{halted} is not trading (status BREAK)"},
        )
        assert (await search(bff, halted))[halted]["status"] == "BREAK"

        async with bff.http.get(f"{bff.url}/v2/user/profile", headers=holder_auth) as resp:
            assert resp.status == 200
            profile = await resp.json()
        assert profile["ID"] == holder
        coins = profile["Coins"]
        assert coins["Quantities"][halted] == "2"
        assert coins["Prices"][halted] == "0.0421"
        assert coins["Totals"][halted] == "0.0842"
        assert profile["Total"] == "0.0842"


async def test_while_the_exchange_fails_or_is_down_the_last_good_list_stays(stack, exchange):
    listed = f"k{_RUN}usdt"
    # Fetched: a symbol the snapshot lacks, and a status the snapshot does not have (btcusdt TRADING there).
    exchange.publish({listed: "TRADING", "btcusdt": "HALT"})
    async with bff_fetching_from(stack, exchange.url) as bff:
        refresh = refresh_of(bff)
        await fetched(bff)
        _, auth = await bff.user()
        assert await add_coin(bff, auth, listed) == (201, None)

        exchange.break_document()
        failures = refresh.failures
        await eventually(lambda: refresh.failures > failures, what="a fetch answered 500")
        await exchange.running.stop()
        failures = refresh.failures
        await eventually(lambda: refresh.failures > failures + 1, what="two fetches of a stopped exchange")

        _, other_auth = await bff.user()
        assert await add_coin(bff, other_auth, listed) == (201, None)
        status, error = await add_coin(bff, other_auth, "btcusdt")
        assert (status, error["message"]) == (422, "btcusdt is not trading (status HALT)")
        assert refresh.source == "exchange"


async def test_a_bff_starts_on_its_snapshot_while_the_exchange_is_down(stack):
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with bff_fetching_from(stack, nowhere) as bff:
        refresh = refresh_of(bff)
        _, auth = await bff.user()
        # btcusdt is TRADING in the shipped snapshot of 2021, bccbtc BREAK.
        assert await add_coin(bff, auth, "btcusdt") == (201, None)
        status, error = await add_coin(bff, auth, "bccbtc")
        assert (status, error["code"]) == (422, "symbol_not_trading")
        await eventually(lambda: refresh.failures >= 2, what="two failed fetches")
        assert (refresh.source, refresh.applied) == ("snapshot", 0)
