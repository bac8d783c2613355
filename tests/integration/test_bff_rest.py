"""The BFF's portfolio API beyond the basics, over real HTTP against real auth, PostgreSQL and Redis:
symbols checked against the exchange's list, Idempotency-Key, the operation history, instrument search and
one instrument (24 h tickers seeded in Redis as the aggregator writes them).

The stack (``bff`` fixture) is tests/support/stacks.py's: auth, the fake aggregator and a BFF.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from decimal import Decimal

import pytest
from support.bff import COIN, error_of, new_symbol, second_stat
from support.polling import eventually
from support.databases import execute_sql
from support.stacks import serve_stack

from crypto_mesh import jsonutil


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
        "change_percent": None,
        "quote_volume": None,
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


def symbol_block() -> tuple[str, list[str]]:
    """Ten listed symbols no other test uses that are the only ones containing the returned query (their
    common prefix, e.g. ``t1a2b3c001`` for ``t1a2b3c0010usdt`` … ``t1a2b3c0019usdt``)."""
    symbol = new_symbol()
    while symbol[-5] != "0":  # the last digit of the number before "usdt"
        symbol = new_symbol()
    block = [symbol] + [new_symbol() for _ in range(9)]
    return symbol[:-5], block


def ticker_json(symbol: str, event_ms: int, close: str, open_: str, quote_volume: str) -> bytes:
    """A 24 h ticker JSON as the aggregator writes it into ``ticker:24h``."""
    change = Decimal(close) - Decimal(open_)
    percent = (change * 100 / Decimal(open_)).quantize(Decimal("1E-8"))
    return jsonutil.dumps(
        {
            "s": symbol,
            "E": event_ms,
            "c": close,
            "o": open_,
            "h": close,
            "l": open_,
            "v": "12.5",
            "q": quote_volume,
            "change_price": change,
            "change_percent": percent,
        }
    )


async def get_json(bff, path: str) -> tuple[int, dict]:
    async with bff.http.get(f"{bff.url}{path}") as resp:
        return resp.status, await resp.json()


async def test_instrument_search_ranks_by_24h_quote_volume_and_pages_on_with_a_cursor(bff):
    query, block = symbol_block()
    volumes = {block[3]: "900.5", block[7]: "12000", block[1]: "900.50", block[5]: "0.1"}
    await bff.redis.hset(
        "ticker:24h",
        mapping={s: ticker_json(s, 1723161256000, "2.5", "2", volume) for s, volume in volumes.items()},
    )

    async def ranked_with_the_tickers() -> dict | None:
        # The BFF reads the tickers at most once a second: an earlier search may have read them just before.
        status, page = await get_json(bff, f"/v1/instruments?q={query.upper()}&limit=4")
        assert status == 200
        return page if page["instruments"][0]["quote_volume"] is not None else None

    first = await eventually(ranked_with_the_tickers)
    status, rest = await get_json(bff, f"/v1/instruments?q={query}&limit=4&cursor={first['next_cursor']}")
    assert status == 200

    # By quote volume (equal volumes by symbol), then the instruments without a ticker by symbol.
    without = sorted(set(block) - set(volumes))
    ranked = [block[7], block[1], block[3], block[5], *without]
    assert [i["symbol"] for i in first["instruments"]] == ranked[:4]
    assert [i["symbol"] for i in rest["instruments"]] == ranked[4:8]
    assert first["instruments"][0] == {
        "symbol": block[7],
        "type": "spot",
        "base": block[7][:-4].upper(),
        "quote": "USDT",
        "status": "TRADING",
        "price": "2.5",
        "price_time": "2024-08-08T23:54:16.000Z",
        "change_percent": "25.00000000",
        "quote_volume": "12000",
    }
    assert rest["instruments"][0]["price"] is None and rest["instruments"][0]["quote_volume"] is None
    status, last = await get_json(bff, f"/v1/instruments?q={query}&limit=4&cursor={rest['next_cursor']}")
    assert [i["symbol"] for i in last["instruments"]] == ranked[8:] and last["next_cursor"] is None


async def test_a_malformed_ticker_in_redis_is_skipped_and_the_others_still_shown(bff):
    query, block = symbol_block()
    await bff.redis.hset(
        "ticker:24h",
        mapping={block[0]: b"not json", block[1]: ticker_json(block[1], 1723161256000, "2", "2", "1")},
    )

    async def ranked_with_the_tickers() -> list | None:
        _, page = await get_json(bff, f"/v1/instruments?q={query}&limit=2")
        return page["instruments"] if page["instruments"][0]["quote_volume"] is not None else None

    found = await eventually(ranked_with_the_tickers)
    assert [(i["symbol"], i["quote_volume"]) for i in found] == [(block[1], "1"), (block[0], None)]


async def test_a_cursor_of_another_query_or_not_given_by_the_search_is_unprocessable(bff):
    _, page = await get_json(bff, "/v1/instruments?q=eth&limit=1")
    for query in (f"q=btc&cursor={page['next_cursor']}", "q=eth&cursor=bm90IGEgY3Vyc29y", "cursor=%FF%FE"):
        async with bff.http.get(f"{bff.url}/v1/instruments?{query}") as resp:
            assert resp.status == 422, query
            assert await error_of(resp) == "invalid"
    status, again = await get_json(bff, f"/v1/instruments?q=ETH&limit=1&cursor={page['next_cursor']}")
    assert status == 200 and again["instruments"][0]["symbol"] != page["instruments"][0]["symbol"]


async def test_one_instrument_answers_its_whole_ticker_and_whether_the_mesh_has_live_data_of_it(bff):
    # New symbols: the BFF caches an instrument for a second, and none of these was asked for before.
    followed, stalled, unfollowed = new_symbol(), new_symbol(), new_symbol()
    now_ms = time.time_ns() // 1_000_000
    await bff.redis.hset("ticker:24h", followed, ticker_json(followed, now_ms - 5000, "0.99", "1.10", "7.5"))
    await bff.redis.set(f"price:{followed}", second_stat(followed, "1.01", now_ms - now_ms % 1000))
    await bff.redis.set(f"price:{stalled}", second_stat(stalled, "3", now_ms - 3_600_000))

    status, live = await get_json(bff, f"/v1/instruments/{followed.upper()}")
    assert status == 200
    assert live["ticker"] == {
        "close": "0.99",
        "open": "1.10",
        "high": "0.99",
        "low": "1.10",
        "volume": "12.5",
        "quote_volume": "7.5",
        "change_price": "-0.11",
        "change_percent": "-10.00000000",
        "event_time": live["ticker"]["event_time"],
    }
    # The latest second is newer than the ticker: its price is shown.
    assert (live["price"], live["change_percent"], live["quote_volume"]) == ("1.01", "-10.00000000", "7.5")
    assert live["live"] is True and live["last_second"] == live["price_time"]

    status, stale = await get_json(bff, f"/v1/instruments/{stalled}")
    assert status == 200 and stale["live"] is False and stale["ticker"] is None and stale["price"] == "3"
    status, quiet = await get_json(bff, f"/v1/instruments/{unfollowed}")
    assert status == 200 and quiet["live"] is None and quiet["last_second"] is None and quiet["price"] is None
    async with bff.http.get(f"{bff.url}/v1/instruments/{followed}") as resp:
        assert "no-store" not in resp.headers.get("Cache-Control", "")


async def test_one_instrument_the_exchange_does_not_list_is_not_found_and_a_malformed_one_unprocessable(bff):
    async with bff.http.get(f"{bff.url}/v1/instruments/nosuchusdt") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == {
            "code": "unknown_symbol",
            "message": "nosuchusdt is not listed by the exchange",
        }
    for symbol in ("b", "btc-usdt", "x" * 21):
        async with bff.http.get(f"{bff.url}/v1/instruments/{symbol}") as resp:
            assert resp.status == 422, symbol
            assert await error_of(resp) == "invalid_symbol"


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
