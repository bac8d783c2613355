"""The BFF's portfolio API beyond the basics, over real HTTP against real auth, PostgreSQL and Redis:
symbols checked against the exchange's list, Idempotency-Key, the operation history, instrument search.

The stack (``bff`` fixture) is tests/support/stacks.py's: auth, the fake aggregator and a BFF.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
from support.bff import COIN, error_of, second_stat
from support.databases import execute_sql
from support.stacks import serve_stack


@pytest.fixture(scope="module")
async def bff(postgres, redis_url, tmp_path_factory):
    """Auth, the fake aggregator and a BFF shared by this module's tests (each uses new users)."""
    async with serve_stack(postgres, redis_url, tmp_path_factory) as running:
        yield running


async def test_a_symbol_the_exchange_does_not_list_is_unprocessable_with_the_reason(bff):
    _, auth = await bff.user()
    async with bff.http.post(
        f"{bff.url}{COIN}", json={"symbol": "nosuchusdt", "quantity": "1"}, headers=auth
    ) as resp:
        assert resp.status == 422
        body = await resp.json()
    assert body["error"]["code"] == "unknown_symbol"
    assert "nosuchusdt is not listed" in body["error"]["message"]


async def test_a_listed_symbol_that_is_not_trading_is_unprocessable_with_its_status(bff):
    _, auth = await bff.user()
    # BCCBTC is in the 2021-10-12 snapshot with status BREAK.
    async with bff.http.post(
        f"{bff.url}{COIN}", json={"symbol": "BCCBTC", "quantity": "1"}, headers=auth
    ) as resp:
        assert resp.status == 422
        body = await resp.json()
    assert body["error"] == {"code": "symbol_not_trading", "message": "bccbtc is not trading (status BREAK)"}


async def test_a_retried_post_with_the_same_idempotency_key_replays_the_first_answer_and_changes_nothing(bff):
    user_id, auth = await bff.user()
    headers = {**auth, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"symbol": "ethusdt", "quantity": "2.5"}
    async with bff.http.post(f"{bff.url}{COIN}", json=body, headers=headers) as first:
        assert first.status == 201
        first_body = await first.json()
    async with bff.http.post(f"{bff.url}{COIN}", json=body, headers=headers) as retry:
        assert retry.status == 201
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert await retry.json() == first_body == {"symbol": "ethusdt", "quantity": "2.5"}
    # Without the key the same body is a new request, and a conflict.
    async with bff.http.post(f"{bff.url}{COIN}", json=body, headers=auth) as again:
        assert again.status == 409
    async with bff.http.get(f"{bff.url}/v2/user/history", headers=auth) as resp:
        assert [item["operation"] for item in (await resp.json())["items"]] == ["add"]
    # One follower PUT and one change notice for the one real add.
    assert bff.aggregator.calls_of(user_id) == [("follow", "ethusdt")]


async def test_an_idempotency_key_reused_for_another_body_is_unprocessable(bff):
    _, auth = await bff.user()
    headers = {**auth, "Idempotency-Key": "same-key"}
    async with bff.http.post(
        f"{bff.url}{COIN}", json={"symbol": "ethusdt", "quantity": "1"}, headers=headers
    ) as resp:
        assert resp.status == 201
    async with bff.http.post(
        f"{bff.url}{COIN}", json={"symbol": "btcusdt", "quantity": "1"}, headers=headers
    ) as resp:
        assert resp.status == 422
        assert await error_of(resp) == "idempotency_key_reused"
    async with bff.http.get(f"{bff.url}/v2/coin/symbols", headers=auth) as resp:
        assert [coin["symbol"] for coin in (await resp.json())["coins"]] == ["ethusdt"]


async def test_idempotency_keys_belong_to_one_user(bff):
    _, first = await bff.user()
    _, second = await bff.user()
    body = {"symbol": "dotusdt", "quantity": "3"}
    for auth in (first, second):
        async with bff.http.post(
            f"{bff.url}{COIN}", json=body, headers={**auth, "Idempotency-Key": "shared"}
        ) as resp:
            assert resp.status == 201
            assert "Idempotent-Replayed" not in resp.headers


async def test_a_client_error_is_replayed_too(bff):
    _, auth = await bff.user()
    headers = {**auth, "Idempotency-Key": "bad-quantity"}
    for _ in range(2):
        async with bff.http.post(
            f"{bff.url}{COIN}", json={"symbol": "ethusdt", "quantity": "-1"}, headers=headers
        ) as resp:
            assert resp.status == 422
            assert await error_of(resp) == "invalid_quantity"


async def test_concurrent_retries_with_one_key_add_the_coin_once(bff):
    _, auth = await bff.user()
    headers = {**auth, "Idempotency-Key": "burst"}

    async def post() -> int:
        async with bff.http.post(
            f"{bff.url}{COIN}", json={"symbol": "ethusdt", "quantity": "1"}, headers=headers
        ) as resp:
            return resp.status

    statuses = await asyncio.gather(*(post() for _ in range(8)))
    # Each retry either replays the 201 or is told the first is still in flight (409): never a second add.
    assert set(statuses) <= {201, 409} and 201 in statuses
    async with bff.http.get(f"{bff.url}/v2/user/history", headers=auth) as resp:
        assert len((await resp.json())["items"]) == 1


async def test_a_malformed_idempotency_key_is_a_bad_request(bff):
    _, auth = await bff.user()
    async with bff.http.post(
        f"{bff.url}{COIN}",
        json={"symbol": "ethusdt", "quantity": "1"},
        headers={**auth, "Idempotency-Key": "x" * 300},
    ) as resp:
        assert resp.status == 400
        assert await error_of(resp) == "invalid_idempotency_key"


async def test_every_change_is_in_the_history_newest_first_with_old_and_new_quantities(bff):
    _, auth = await bff.user()
    await bff.add_coin(auth, "btcusdt", "1.5")
    await bff.update_coin(auth, "btcusdt", "2")
    await bff.remove_coin(auth, "btcusdt")
    async with bff.http.get(f"{bff.url}/v2/user/history", headers=auth) as resp:
        assert resp.status == 200
        page = await resp.json()
    changes = [(i["operation"], i["symbol"], i["old_quantity"], i["new_quantity"]) for i in page["items"]]
    assert changes == [
        ("remove", "btcusdt", "2", None),
        ("update", "btcusdt", "1.5", "2"),
        ("add", "btcusdt", None, "1.5"),
    ]
    assert page["next_cursor"] is None
    assert all(item["at"].endswith("Z") for item in page["items"])


async def test_a_failed_change_leaves_no_history(bff):
    _, auth = await bff.user()
    await bff.add_coin(auth, "btcusdt", "1")
    async with bff.http.post(
        f"{bff.url}{COIN}", json={"symbol": "btcusdt", "quantity": "2"}, headers=auth
    ) as resp:
        assert resp.status == 409
    async with bff.http.patch(
        f"{bff.url}{COIN}", json={"symbol": "ethusdt", "quantity": "2"}, headers=auth
    ) as resp:
        assert resp.status == 404
    async with bff.http.get(f"{bff.url}/v2/user/history", headers=auth) as resp:
        assert [item["operation"] for item in (await resp.json())["items"]] == ["add"]


async def test_the_history_is_paged_with_a_cursor(bff):
    _, auth = await bff.user()
    await bff.add_coin(auth, "btcusdt", "1")
    for quantity in ("2", "3", "4", "5"):
        await bff.update_coin(auth, "btcusdt", quantity)
    seen, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        async with bff.http.get(f"{bff.url}/v2/user/history{query}", headers=auth) as resp:
            page = await resp.json()
        seen.append([item["new_quantity"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [["5", "4"], ["3", "2"], ["1"]]


async def test_history_parameters_out_of_range_are_unprocessable_and_the_history_needs_a_token(bff):
    _, auth = await bff.user()
    for query in ("limit=0", "limit=101", "limit=x", "cursor=-1", "cursor=99999999999999999999"):
        async with bff.http.get(f"{bff.url}/v2/user/history?{query}", headers=auth) as resp:
            assert resp.status == 422, query
    async with bff.http.get(f"{bff.url}/v2/user/history") as resp:
        assert resp.status == 401


async def test_instrument_search_needs_no_login_and_answers_type_assets_status_and_last_price(bff):
    await bff.redis.set("price:btcusdt", second_stat("btcusdt", "61837.63", 4102444800000))
    async with bff.http.get(f"{bff.url}/v1/instruments?q=BTCUSDT&limit=5") as resp:
        assert resp.status == 200
        found = (await resp.json())["instruments"]
    assert found[0] == {
        "symbol": "btcusdt",
        "type": "spot",
        "base": "BTC",
        "quote": "USDT",
        "status": "TRADING",
        "price": "61837.63",
        "price_time": "2100-01-01T00:00:00.000Z",
    }
    assert len(found) <= 5 and all("btcusdt" in instrument["symbol"] for instrument in found)


async def test_instrument_search_puts_prefix_matches_before_other_matches(bff):
    async with bff.http.get(f"{bff.url}/v1/instruments?q=eth&limit=100") as resp:
        symbols = [instrument["symbol"] for instrument in (await resp.json())["instruments"]]
    starts = [symbol.startswith("eth") for symbol in symbols]
    assert "ethusdt" in symbols and "ethbtc" in symbols
    assert starts == sorted(starts, reverse=True) and not all(starts)


async def test_instrument_search_lists_prefix_matches_first_and_shows_non_trading_symbols(bff):
    async with bff.http.get(f"{bff.url}/v1/instruments?q=bccbtc") as resp:
        found = (await resp.json())["instruments"]
    assert found[0]["symbol"] == "bccbtc" and found[0]["status"] == "BREAK" and found[0]["price"] is None


async def test_instrument_search_bounds_its_query_and_limit(bff):
    for query in ("q=" + "a" * 21, "q=btc%2Fusdt", "limit=0", "limit=101"):
        async with bff.http.get(f"{bff.url}/v1/instruments?{query}") as resp:
            assert resp.status == 422, query
            assert await error_of(resp) == "invalid"


async def test_deleting_the_profile_deletes_its_history(bff):
    # The history rows are kept by the database itself: a delete cascades from the profile.
    user_id, auth = await bff.user()
    await bff.add_coin(auth, "btcusdt", "1")
    async with bff.http.delete(f"{bff.url}/v2/user/profile", headers=auth) as resp:
        assert resp.status == 204
    await execute_sql(
        bff.database_url,
        f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM coin_history WHERE user_id = {user_id}) "
        "THEN RAISE EXCEPTION 'history left behind'; END IF; END $$",
    )


def fingerprint(method: str, path: str, body: bytes) -> str:
    """The request hash the BFF stores with a key: SHA-256 over the length-prefixed method, path and body."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


async def test_a_retry_while_the_first_request_is_unanswered_is_a_conflict(bff):
    user_id, auth = await bff.user()
    body = b'{"symbol": "ethusdt", "quantity": "1"}'
    # The first request with this key is being processed (reserved a moment ago, no answer yet).
    await execute_sql(
        bff.database_url,
        "INSERT INTO idempotency_keys (user_id, key, request_hash, expires_at) VALUES "
        f"({user_id}, 'pending', '\\x{fingerprint('POST', COIN, body)}', now() + interval '1 day')",
    )
    headers = {**auth, "Idempotency-Key": "pending", "Content-Type": "application/json"}
    async with bff.http.post(f"{bff.url}{COIN}", data=body, headers=headers) as resp:
        assert resp.status == 409
        assert await error_of(resp) == "idempotency_key_in_flight"


async def test_a_reservation_left_by_a_request_that_died_is_taken_over_after_a_minute(bff):
    user_id, auth = await bff.user()
    body = b'{"symbol": "ethusdt", "quantity": "1"}'
    await execute_sql(
        bff.database_url,
        "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at, expires_at) VALUES "
        f"({user_id}, 'orphan', '\\x{fingerprint('POST', COIN, body)}', now() - interval '2 minutes', "
        "now() + interval '1 day')",
    )
    headers = {**auth, "Idempotency-Key": "orphan", "Content-Type": "application/json"}
    async with bff.http.post(f"{bff.url}{COIN}", data=body, headers=headers) as resp:
        assert resp.status == 201
    async with bff.http.post(f"{bff.url}{COIN}", data=body, headers=headers) as resp:
        assert resp.status == 201 and resp.headers["Idempotent-Replayed"] == "true"
