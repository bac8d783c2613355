"""The profile read (:meth:`profile_bff.store.ProfileStore.load`), on a real PostgreSQL: its rows as stored, exact
quantities, and what it does when its connection is gone. The read runs on asyncpg's own pool without a ping
before each checkout: a connection that the server closed since its last use is found dead by the read itself,
which then tries once more on another connection.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import pytest
from structlog.testing import capture_logs
from support.databases import execute_sql, new_database

from support.ports import free_port
from profile_bff.errors import ProfileNotFound, StoreUnavailable
import profile_bff.store
from profile_bff.store import READ_POOL_SIZE, ProfileStore

USER = 7


@pytest.fixture
def database_url(postgres) -> str:
    return new_database(postgres, "reads")


@pytest.fixture
async def store(database_url):
    store = ProfileStore(database_url)
    await store.migrate()
    await store.ensure_profile(USER, "trader")
    try:
        yield store
    finally:
        await store.close()


def _terminate_other_sessions_while_the_loop_waits(database_url: str) -> None:
    """Close every other session of the database from the server side, and return once they are gone, without
    letting this thread's event loop run meanwhile: the store's pooled connection is then dead but the loop has
    not read its end yet, as when the server goes away between two reads."""

    def terminate() -> None:
        asyncio.run(
            execute_sql(
                database_url,
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
        )

    thread = threading.Thread(target=terminate)
    thread.start()
    thread.join()


async def test_a_profile_is_read_with_its_coins_and_exact_quantities(store):
    await store.add_coin(USER, "btcusdt", Decimal("0.000000000000000001"))
    await store.add_coin(USER, "ethusdt", Decimal("12345678901234567890.5"))

    holdings = await store.load(USER)

    assert holdings.name == "trader"
    assert holdings.coins == {
        "btcusdt": Decimal("0.000000000000000001"),
        "ethusdt": Decimal("12345678901234567890.5"),
    }


async def test_a_profile_without_coins_is_read_and_an_unknown_one_is_not_found(store):
    assert (await store.load(USER)).coins == {}
    with pytest.raises(ProfileNotFound):
        await store.load(USER + 1)


async def test_a_read_whose_connection_the_server_closed_is_tried_again_on_another(store, database_url):
    await store.add_coin(USER, "btcusdt", Decimal("1.5"))
    await store.load(USER)  # the read pool now holds one open connection
    _terminate_other_sessions_while_the_loop_waits(database_url)

    with capture_logs() as events:
        holdings = await store.load(USER)

    assert holdings.coins == {"btcusdt": Decimal("1.5")}
    assert [event["event"] for event in events] == ["profile_read_retried"]


@pytest.mark.parametrize("loop_turns", [1, 2, 3, 5, 20])
async def test_a_read_some_loop_turns_after_the_server_closed_its_connection_is_answered(
    store, database_url, loop_turns
):
    # The loop reads the server's last message (the session's end) before the close itself; a read in between
    # found asyncpg refusing the statement (InternalClientError), which was not taken for a lost connection.
    await store.add_coin(USER, "btcusdt", Decimal("1.5"))
    await store.load(USER)
    _terminate_other_sessions_while_the_loop_waits(database_url)
    for _ in range(loop_turns):
        await asyncio.sleep(0)

    holdings = await store.load(USER)

    assert holdings.coins == {"btcusdt": Decimal("1.5")}


async def test_reads_arriving_while_the_pool_is_busy_share_a_query_and_each_gets_its_own_profile(
    store, monkeypatch
):
    await store.ensure_profile(USER + 1, "second")
    await store.add_coin(USER, "btcusdt", Decimal("1.5"))
    await store.add_coin(USER + 1, "ethusdt", Decimal("2"))
    await store.add_coin(USER + 1, "btcusdt", Decimal("0.25"))
    queries = []

    async def counting_fetch(pool, query, *args):
        queries.append(list(args[0]))
        return await fetch(pool, query, *args)

    fetch = profile_bff.store._fetch
    monkeypatch.setattr(profile_bff.store, "_fetch", counting_fetch)
    first = [USER, USER + 1, USER + 99, USER, USER + 1]  # one query each: READ_POOL_SIZE of them
    waiting = [USER + 1, USER + 99, USER, USER]  # asked while those run: one query for all four

    results = await asyncio.gather(*(store.load(user) for user in first + waiting), return_exceptions=True)

    assert len(first) == READ_POOL_SIZE
    assert queries == [[user] for user in first] + [waiting]
    alice = ("trader", {"btcusdt": Decimal("1.5")})
    bob = ("second", {"btcusdt": Decimal("0.25"), "ethusdt": Decimal("2")})
    for user, result in zip(first + waiting, results, strict=True):
        if user == USER + 99:
            assert isinstance(result, ProfileNotFound)
        else:
            assert (result.name, result.coins) == (alice if user == USER else bob)


async def test_a_read_while_the_database_is_unreachable_is_store_unavailable():
    store = ProfileStore(f"postgresql+asyncpg://profile:secret@127.0.0.1:{free_port()}/profile")
    try:
        with pytest.raises(StoreUnavailable):
            await store.load(USER)
    finally:
        await store.close()
