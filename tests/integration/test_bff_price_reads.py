"""Where ``GET /v2/user/profile`` takes its prices, against real auth, PostgreSQL and Redis: from the BFF's
pub/sub subscription once a SecondStat of the symbol has been heard there, from the ``price:<symbol>`` key
before that and whenever the subscription was lost
(:meth:`profile_bff.connections.ConnectionManager.latest_prices`).

Prices are SecondStats written as the aggregator writes them: the key set, then the SecondStat published on
the symbol's channel. The BFF's own count of where each price came from (``bff_price_reads_total{source}``,
:attr:`ConnectionManager.price_reads`) says which way a read went; the prices themselves are checked exactly.
"""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs
from support.bff import Bff, new_symbol, second_stat, wait_until_subscribed, write_exchange_info, write_second
from support.databases import new_database
from support.fake_aggregator import FakeAggregator
from support.polling import eventually
from support.stacks import serve_auth, serve_bff

from profile_bff import connections, subscriptions

SECOND_MS = 1723161600000


@pytest.fixture(scope="module")
async def stack(postgres, redis_url, tmp_path_factory):
    async with (
        FakeAggregator() as aggregator,
        serve_auth(new_database(postgres, "auth"), tmp_path_factory.mktemp("auth")) as auth,
    ):
        yield (
            new_database(postgres, "profile"),
            redis_url,
            auth.port,
            aggregator,
            write_exchange_info(tmp_path_factory.mktemp("exchange")),
        )


@pytest.fixture
async def bff(stack):
    async with serve_bff(*stack) as running:
        yield running


def reads(bff: Bff) -> dict[str, int]:
    """The BFF's count of prices its profile reads took from the subscription and from Redis."""
    return dict(bff.running.service.manager.price_reads)


async def holder(bff: Bff, symbol: str, quantity: str = "2") -> str:
    """A new user holding ``quantity`` of ``symbol``; its access token."""
    _, auth = await bff.user()
    await bff.add_coin(auth, symbol, quantity)
    return auth["Authorization"].removeprefix("Bearer ")


async def publish(bff: Bff, symbol: str, price: str, second_ms: int) -> None:
    """A SecondStat as the aggregator writes it (:func:`support.bff.write_second`)."""
    await write_second(bff.redis, symbol, price, second_ms)


async def total(bff: Bff, token: str) -> str:
    """The profile's total."""
    status, body = await bff.profile(token)
    assert status == 200, body
    return body["Total"]


async def until_total(bff: Bff, token: str, expected: str, source: str) -> None:
    """Wait until a profile read shows ``expected`` as its total with its one price taken from ``source``."""

    async def shown() -> bool:
        before = reads(bff)[source]
        return await total(bff, token) == expected and reads(bff)[source] == before + 1

    await eventually(shown, what=f"a total of {expected} from the {source}")


async def test_a_read_takes_the_key_until_a_second_stat_is_heard_then_the_newest_second_heard(bff):
    symbol = new_symbol()
    token = await holder(bff, symbol)
    await bff.redis.set(f"price:{symbol}", second_stat(symbol, "10", SECOND_MS))
    before = reads(bff)
    assert await total(bff, token) == "20"
    assert reads(bff)["redis"] == before["redis"] + 1
    # The read subscribed the symbol; the next SecondStat published is heard and answers the reads.
    await wait_until_subscribed(bff, symbol)
    await publish(bff, symbol, "10.25", SECOND_MS + 1000)
    await until_total(bff, token, "20.5", "subscription")
    heard = reads(bff)
    assert await total(bff, token) == "20.5"
    assert reads(bff) == {"subscription": heard["subscription"] + 1, "redis": heard["redis"]}
    # An older second heard later does not replace it (the aggregator never publishes one, a replica might).
    await bff.redis.publish(symbol, second_stat(symbol, "9", SECOND_MS))
    await publish(bff, symbol, "11", SECOND_MS + 2000)
    await until_total(bff, token, "22", "subscription")
    assert await total(bff, token) == "22"


async def test_after_the_subscription_is_lost_reads_take_the_key_until_a_new_second_stat_is_heard(bff):
    symbol = new_symbol()
    token = await holder(bff, symbol, "3")
    await total(bff, token)
    await wait_until_subscribed(bff, symbol)
    await publish(bff, symbol, "2", SECOND_MS)
    await until_total(bff, token, "6", "subscription")
    # Redis drops the BFF's pub/sub connection; a SecondStat published before it has resubscribed is missed.
    await bff.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await bff.redis.set(f"price:{symbol}", second_stat(symbol, "5", SECOND_MS + 1000))
    # What was heard before is not trusted any more: reads go to the key, which has the missed price.
    await until_total(bff, token, "15", "redis")
    # The reader resubscribed: the next SecondStat heard answers again.
    await wait_until_subscribed(bff, symbol)
    await publish(bff, symbol, "7", SECOND_MS + 2000)
    await until_total(bff, token, "21", "subscription")


async def test_a_symbol_no_read_asked_for_lately_is_unsubscribed(stack, monkeypatch):
    monkeypatch.setattr(connections, "PRICE_WATCH_S", 1.0)
    async with serve_bff(*stack) as bff:
        symbol = new_symbol()
        token = await holder(bff, symbol)
        await total(bff, token)
        await wait_until_subscribed(bff, symbol)
        assert bff.running.service.manager.watched_count == 1

        async def unsubscribed() -> bool:
            return (await bff.redis.pubsub_numsub(symbol))[0][1] == 0

        await eventually(unsubscribed, what=f"{symbol} unsubscribed")
        assert bff.running.service.manager.watched_count == 0


async def test_a_pub_sub_connection_that_falls_silent_is_replaced_and_prices_are_heard_again(
    bff, monkeypatch
):
    monkeypatch.setattr(subscriptions, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(subscriptions, "SILENCE_S", 1.0)
    symbol = new_symbol()
    token = await holder(bff, symbol)
    await total(bff, token)
    await wait_until_subscribed(bff, symbol)
    with capture_logs() as logs:
        # Redis answers no client for 2.5 s: the BFF's PING goes unanswered, as on a connection whose peer
        # vanished.
        await bff.redis.execute_command("CLIENT", "PAUSE", "2500", "ALL")
        await eventually(
            lambda: any(event["event"] == "pubsub_lost" for event in logs), what="the silence noticed"
        )
        lost = next(event for event in logs if event["event"] == "pubsub_lost")
        # The subscriber's connection has no read timeout of its own: this one is the silence's.
        assert lost["error"] == "network:TimeoutError"
        assert await eventually(lambda: bff.running.service.manager.subscriber_connected, timeout_s=15)
    await wait_until_subscribed(bff, symbol)
    await publish(bff, symbol, "4", SECOND_MS)
    await until_total(bff, token, "8", "subscription")
