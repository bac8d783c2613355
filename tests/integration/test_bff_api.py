"""The BFF over real HTTP and WebSocket, against a real auth server, PostgreSQL and Redis.

The aggregator is the fake of tests/support/fake_aggregator.py, which answers its follower routes
(docs/CONTRACTS.md, "Aggregator control HTTP") as the real one does and records the calls it receives.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import aiohttp
import pytest
from support.credentials import TESTS_REDIS_USER, redis_acl_file, redis_user_url
from support.polling import eventually
from support.bff import (
    PASSWORD,
    error_of,
    new_symbol,
    next_profile,
    refresh_cookie,
    second_stat,
    wait_until_subscribed,
    with_refresh_cookie,
    write_exchange_info,
)
from support.databases import execute_sql
from support.fake_aggregator import FakeAggregator
from support.stacks import serve_auth, serve_bff, serve_stack

from support.ports import free_port
from launcher.embedded import ManagedProcess, redis_command


@pytest.fixture(scope="module")
async def bff(postgres, redis_url, tmp_path_factory):
    """One stack (auth, the fake aggregator, BFF) shared by the tests of this module; each test uses new
    users and symbols, so they do not see each other."""
    async with serve_stack(postgres, redis_url, tmp_path_factory) as running:
        yield running


@pytest.fixture
async def own_auth_server(fresh_database, tmp_path):
    """An auth server for one test, which may stop it."""
    async with serve_auth(fresh_database("auth"), tmp_path) as running:
        yield running


@pytest.fixture
async def own_bff(fresh_database, redis_url, own_auth_server, tmp_path):
    """A stack for one test, which may break its database or stop it."""
    async with (
        FakeAggregator() as aggregator,
        serve_bff(
            fresh_database("profile"),
            redis_url,
            own_auth_server.port,
            aggregator,
            write_exchange_info(tmp_path),
        ) as running,
    ):
        yield running


# -- sessions --------------------------------------------------------------------------------------------


async def test_register_then_login_then_profile(bff):
    name, user_id = await bff.sign_up()
    access, _ = await bff.sign_in(name)
    async with bff.http.get(
        f"{bff.url}/v2/user/profile", headers={"Authorization": f"Bearer {access}"}
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "ID": user_id,
            "Name": name,
            "Coins": {"Quantities": {}, "Prices": {}, "Totals": {}, "PriceTimes": {}},
            "Total": "0",
            "PricesAt": None,
        }


async def test_registering_a_taken_name_is_a_conflict(bff):
    name, _ = await bff.sign_up()
    async with bff.http.post(f"{bff.url}/v1/register", json={"name": name, "password": PASSWORD}) as resp:
        assert resp.status == 409
        assert await error_of(resp) == "conflict"


async def test_registering_an_invalid_name_or_password_is_unprocessable(bff):
    for body in (
        {"name": "a b", "password": PASSWORD},
        {"name": "valid_name", "password": "short"},
        {"name": 5, "password": PASSWORD},
    ):
        async with bff.http.post(f"{bff.url}/v1/register", json=body) as resp:
            assert resp.status == 422, body


async def test_login_answers_the_access_token_and_sets_the_refresh_token_only_as_a_strict_host_cookie(bff):
    name, _ = await bff.sign_up()
    async with bff.http.post(f"{bff.url}/v1/login", json={"name": name, "password": PASSWORD}) as resp:
        assert resp.status == 200
        body = await resp.json()
        cookie = refresh_cookie(resp)
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 900
    assert cookie.value and cookie.value not in str(body)
    assert cookie["httponly"] and cookie["secure"]
    # The __Host- prefix: Secure, Path=/ and no Domain, or browsers refuse it (RFC 6265bis §4.1.3.2).
    assert cookie["samesite"] == "Strict" and cookie["path"] == "/" and not cookie["domain"]
    assert 0 < int(cookie["max-age"]) <= 2_592_000


async def test_a_wrong_password_and_an_unknown_name_are_both_unauthorized(bff):
    name, _ = await bff.sign_up()
    for body in ({"name": name, "password": "wrong password"}, {"name": "nobody_here", "password": PASSWORD}):
        async with bff.http.post(f"{bff.url}/v1/login", json=body) as resp:
            assert resp.status == 401
            assert await error_of(resp) == "unauthenticated"


async def test_refresh_rotates_the_cookie_and_the_old_one_stops_working(bff):
    name, _ = await bff.sign_up()
    _, first = await bff.sign_in(name)
    async with bff.http.post(f"{bff.url}/v1/refresh", headers=with_refresh_cookie(first)) as resp:
        assert resp.status == 200
        body = await resp.json()
        second = refresh_cookie(resp).value
    assert set(body) == {"access_token", "token_type", "expires_in"} and second not in str(body)
    assert second != first
    async with bff.http.get(
        f"{bff.url}/v2/coin/symbols", headers={"Authorization": f"Bearer {body['access_token']}"}
    ) as resp:
        assert resp.status == 200
    async with bff.http.post(f"{bff.url}/v1/refresh", headers=with_refresh_cookie(first)) as resp:
        assert resp.status == 401


# /v1/auth/logout: the original Crypto-Service's route, kept for its clients.
@pytest.mark.parametrize("route", ["/v1/logout", "/v1/auth/logout"])
async def test_logout_revokes_the_session_and_clears_the_cookie(bff, route):
    name, _ = await bff.sign_up()
    _, token = await bff.sign_in(name)
    async with bff.http.post(f"{bff.url}{route}", headers=with_refresh_cookie(token)) as resp:
        assert resp.status == 204
        cleared = refresh_cookie(resp)
    assert cleared.value == "" and cleared["path"] == "/" and int(cleared["max-age"]) == 0
    async with bff.http.post(f"{bff.url}/v1/refresh", headers=with_refresh_cookie(token)) as resp:
        assert resp.status == 401


async def test_refresh_without_a_valid_cookie_is_unauthorized_and_logout_still_succeeds(bff):
    async with bff.http.post(f"{bff.url}/v1/refresh") as resp:
        assert resp.status == 401
    for garbage in ("x", "y" * 500):
        headers = with_refresh_cookie(garbage)
        async with bff.http.post(f"{bff.url}/v1/refresh", headers=headers) as resp:
            assert resp.status == 401
        async with bff.http.post(f"{bff.url}/v1/logout", headers=headers) as resp:
            assert resp.status == 204


# -- coins -----------------------------------------------------------------------------------------------


async def test_coins_are_added_normalised_updated_and_deleted(bff):
    user_id, auth = await bff.user()
    coin = f"{bff.url}/v2/coin/symbol"
    async with bff.http.post(coin, json={"symbol": "BTCUSDT ", "quantity": "1.50"}, headers=auth) as resp:
        assert resp.status == 201
        assert await resp.json() == {"symbol": "btcusdt", "quantity": "1.5"}
    async with bff.http.patch(coin, json={"symbol": " BtcUsdt", "quantity": 2.25}, headers=auth) as resp:
        assert resp.status == 200
        assert await resp.json() == {"symbol": "btcusdt", "quantity": "2.25"}
    assert await bff.add_coin(auth, "ethusdt", "0.000000000000000001") == {
        "symbol": "ethusdt",
        "quantity": "0.000000000000000001",
    }
    async with bff.http.get(f"{bff.url}/v2/coin/symbols", headers=auth) as resp:
        assert await resp.json() == {
            "coins": [
                {"symbol": "btcusdt", "quantity": "2.25"},
                {"symbol": "ethusdt", "quantity": "0.000000000000000001"},
            ]
        }
    async with bff.http.delete(coin, json={"symbol": "BTCUSDT"}, headers=auth) as resp:
        assert resp.status == 204
    async with bff.http.delete(f"{coin}?symbol=ETHUSDT", headers=auth) as resp:
        assert resp.status == 204
    async with bff.http.get(f"{bff.url}/v2/coin/symbols", headers=auth) as resp:
        assert await resp.json() == {"coins": []}
    assert bff.aggregator.calls_of(user_id) == [
        ("follow", "btcusdt"),
        ("follow", "ethusdt"),
        ("unfollow", "btcusdt"),
        ("unfollow", "ethusdt"),
    ]
    assert bff.aggregator.followed_by(user_id) == set()


async def test_adding_a_held_coin_again_is_a_conflict(bff):
    _, auth = await bff.user()
    coin = f"{bff.url}/v2/coin/symbol"
    async with bff.http.post(coin, json={"symbol": "btcusdt", "quantity": "1"}, headers=auth) as resp:
        assert resp.status == 201
    async with bff.http.post(coin, json={"symbol": "BTCUSDT", "quantity": "2"}, headers=auth) as resp:
        assert resp.status == 409
        assert await error_of(resp) == "coin_already_held"
    async with bff.http.get(f"{bff.url}/v2/coin/symbols", headers=auth) as resp:
        assert await resp.json() == {"coins": [{"symbol": "btcusdt", "quantity": "1"}]}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"symbol": "btcusdt", "quantity": "-1"}, "invalid_quantity"),
        ({"symbol": "btcusdt", "quantity": "0"}, "invalid_quantity"),
        ({"symbol": "btcusdt", "quantity": 0}, "invalid_quantity"),
        ({"symbol": "btcusdt", "quantity": "1.0000000000000000001"}, "invalid_quantity"),
        ({"symbol": "btcusdt", "quantity": "123456789012345678901"}, "invalid_quantity"),
        ({"symbol": "btcusdt", "quantity": "abc"}, "invalid_quantity"),
        ({"symbol": "btcusdt", "quantity": True}, "invalid_quantity"),
        ({"symbol": "btc/usdt", "quantity": "1"}, "invalid_symbol"),
        ({"symbol": "b", "quantity": "1"}, "invalid_symbol"),
        ({"symbol": 42, "quantity": "1"}, "invalid_symbol"),
    ],
)
async def test_invalid_quantities_and_symbols_are_unprocessable(bff, body, code):
    _, auth = await bff.user()
    async with bff.http.post(f"{bff.url}/v2/coin/symbol", json=body, headers=auth) as resp:
        assert resp.status == 422
        assert await error_of(resp) == code


async def test_a_quantity_given_as_a_json_number_is_read_exactly(bff):
    _, auth = await bff.user()
    body = b'{"symbol": "btcusdt", "quantity": 0.123456789012345678}'
    headers = {**auth, "Content-Type": "application/json"}
    async with bff.http.post(f"{bff.url}/v2/coin/symbol", data=body, headers=headers) as resp:
        assert resp.status == 201
        assert (await resp.json())["quantity"] == "0.123456789012345678"


async def test_updating_or_deleting_a_coin_not_held_is_not_found(bff):
    _, auth = await bff.user()
    coin = f"{bff.url}/v2/coin/symbol"
    async with bff.http.patch(coin, json={"symbol": "btcusdt", "quantity": "1"}, headers=auth) as resp:
        assert resp.status == 404
        assert await error_of(resp) == "coin_not_held"
    async with bff.http.delete(coin, json={"symbol": "btcusdt"}, headers=auth) as resp:
        assert resp.status == 404


async def test_portfolio_routes_need_a_valid_access_token(bff):
    _, auth = await bff.user()
    tampered = auth["Authorization"][:-4] + ("AAAA" if not auth["Authorization"].endswith("AAAA") else "BBBB")
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": tampered}):
        async with bff.http.get(f"{bff.url}/v2/coin/symbols", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert await error_of(resp) == "unauthenticated"


async def test_deleting_the_profile_deletes_the_auth_user_and_unfollows_its_coins(bff):
    name, user_id = await bff.sign_up()
    access, _ = await bff.sign_in(name)
    auth = {"Authorization": f"Bearer {access}"}
    await bff.add_coin(auth, "dotusdt", "3")
    async with bff.http.delete(f"{bff.url}/v2/user/profile", headers=auth) as resp:
        assert resp.status == 204
    async with bff.http.post(f"{bff.url}/v1/login", json={"name": name, "password": PASSWORD}) as resp:
        assert resp.status == 401
    async with bff.http.get(f"{bff.url}/v2/user/profile", headers=auth) as resp:
        assert resp.status == 404
    assert bff.aggregator.calls_of(user_id) == [("follow", "dotusdt"), ("unfollow", "dotusdt")]


# -- malformed requests ----------------------------------------------------------------------------------


async def test_malformed_json_is_a_bad_request(bff):
    _, auth = await bff.user()
    headers = {**auth, "Content-Type": "application/json"}
    for body in (b"{", b"[1, 2]", b'{"symbol": NaN}', b"\xff\xfe", b"[" * 100_00 + b"]" * 100_00):
        async with bff.http.post(f"{bff.url}/v2/coin/symbol", data=body, headers=headers) as resp:
            assert resp.status == 400, body[:20]
            assert await error_of(resp) == "malformed_json"


async def test_missing_fields_are_a_bad_request(bff):
    _, auth = await bff.user()
    for body in ({"symbol": "btcusdt"}, {"quantity": "1"}, {}):
        async with bff.http.post(f"{bff.url}/v2/coin/symbol", json=body, headers=auth) as resp:
            assert resp.status == 400
            assert await error_of(resp) == "missing_field"
    async with bff.http.post(f"{bff.url}/v1/login", json={"name": "someone"}) as resp:
        assert resp.status == 400


async def test_a_body_that_is_not_json_is_an_unsupported_media_type(bff):
    async with bff.http.post(f"{bff.url}/v1/login", data={"name": "a", "password": "b"}) as resp:
        assert resp.status == 415
        assert await error_of(resp) == "unsupported_media_type"


async def test_a_one_megabyte_body_is_too_large(bff):
    body = b'{"name": "' + b"a" * 1_000_000 + b'", "password": "x"}'
    headers = {"Content-Type": "application/json"}
    async with bff.http.post(f"{bff.url}/v1/register", data=body, headers=headers) as resp:
        assert resp.status == 413
        assert await error_of(resp) == "payload_too_large"


async def test_unknown_routes_and_wrong_methods_answer_json_errors(bff):
    async with bff.http.get(f"{bff.url}/v2/nothing-here") as resp:
        assert resp.status == 404
        assert await error_of(resp) == "not_found"
    async with bff.http.get(f"{bff.url}/v1/login") as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        assert await error_of(resp) == "method_not_allowed"


# -- WebSocket -------------------------------------------------------------------------------------------


async def test_the_socket_sends_a_snapshot_then_exact_totals_on_each_second_stat(bff):
    symbol = new_symbol()
    user_id, auth = await bff.user()
    await bff.redis.set(f"price:{symbol}", second_stat(symbol, "60000.5", 1723161600000))
    await bff.add_coin(auth, symbol, "1.5")
    async with bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth) as ws:
        snapshot = await next_profile(ws)
        assert snapshot["ID"] == user_id
        assert snapshot["Coins"]["Prices"] == {symbol: "60000.5"}
        assert snapshot["Coins"]["Totals"] == {symbol: "90000.75"}
        # Connecting sets the user's whole follower set at the aggregator again (in the background: the
        # snapshot does not wait).
        await eventually(lambda: bff.aggregator.calls_of(user_id) == [("follow", symbol), ("set", symbol)])
        assert bff.aggregator.followed_by(user_id) == {symbol}

        await wait_until_subscribed(bff, symbol)
        await bff.redis.publish(symbol, second_stat(symbol, "61837.63", 1723161601000))
        pushed = await next_profile(ws)
    assert pushed["Coins"] == {
        "Quantities": {symbol: "1.5"},
        "Prices": {symbol: "61837.63"},
        "Totals": {symbol: "92756.445"},
        "PriceTimes": {symbol: "2024-08-09T00:00:01.000Z"},
    }
    assert pushed["Total"] == "92756.445"
    assert pushed["PricesAt"] == "2024-08-09T00:00:01.000Z"
    assert Decimal(pushed["Total"]) == Decimal("1.5") * Decimal("61837.63")


async def test_a_second_stat_on_channel_btcusdt_reaches_a_holder_of_btcusdt(bff):
    _, auth = await bff.user()
    await bff.add_coin(auth, "btcusdt", "0.3")
    async with bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth) as ws:
        await next_profile(ws)
        await wait_until_subscribed(bff, "btcusdt")
        # A far-future second, so that no price left by another test is newer.
        await bff.redis.publish("btcusdt", second_stat("btcusdt", "61837.63", 4102444800000))
        pushed = await next_profile(ws)
    assert pushed["Coins"]["Totals"] == {"btcusdt": "18551.289"}


async def test_coins_added_updated_and_removed_over_rest_are_pushed_without_reconnecting(bff):
    symbol = new_symbol()
    _, auth = await bff.user()
    async with bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth) as ws:
        assert (await next_profile(ws))["Coins"]["Quantities"] == {}
        async with bff.http.post(
            f"{bff.url}/v2/coin/symbol", json={"symbol": symbol, "quantity": "4"}, headers=auth
        ) as resp:
            assert resp.status == 201
        assert (await next_profile(ws))["Coins"]["Quantities"] == {symbol: "4"}

        # Now holding it, the socket gets its prices too.
        await wait_until_subscribed(bff, symbol)
        await bff.redis.publish(symbol, second_stat(symbol, "2.5", 1723161602000))
        assert (await next_profile(ws))["Coins"]["Totals"] == {symbol: "10"}

        await bff.update_coin(auth, symbol, "0.4")
        assert (await next_profile(ws))["Coins"]["Totals"] == {symbol: "1"}

        await bff.remove_coin(auth, symbol)
        assert (await next_profile(ws))["Coins"]["Quantities"] == {}


async def test_deleting_the_profile_closes_its_sockets(bff):
    _, auth = await bff.user()
    async with bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth) as ws:
        await next_profile(ws)
        async with bff.http.delete(f"{bff.url}/v2/user/profile", headers=auth) as resp:
            assert resp.status == 204
        message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4404


async def test_a_second_socket_of_the_same_user_keeps_working_after_the_first_closes(bff):
    symbol = new_symbol()
    _, auth = await bff.user()
    await bff.add_coin(auth, symbol)
    first = await bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth)
    second = await bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth)
    await next_profile(first)
    await next_profile(second)
    await first.close()
    await wait_until_subscribed(bff, symbol)
    await bff.redis.publish(symbol, second_stat(symbol, "3", 1723161603000))
    assert (await next_profile(second))["Coins"]["Totals"] == {symbol: "6"}
    await second.close()


async def test_the_socket_refuses_a_missing_or_tampered_token_before_the_upgrade(bff):
    _, auth = await bff.user()
    tampered = {"Authorization": auth["Authorization"][:-6] + "AAAAAA"}
    for headers in ({}, tampered, {"Authorization": "Bearer not-a-token"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=headers)
        assert refused.value.status == 401


async def test_the_socket_refuses_a_browser_origin_that_is_not_allowed(bff):
    _, auth = await bff.user()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await bff.http.ws_connect(
            f"{bff.url}/v2/user/profile/ws", headers={**auth, "Origin": "https://evil.example"}
        )
    assert refused.value.status == 403


# -- failures and lifecycle ------------------------------------------------------------------------------


async def test_a_registration_whose_profile_cannot_be_stored_is_undone_at_auth(own_bff):
    bff = own_bff
    # The profile database fails every insert as if the connection broke (SQLSTATE 08006).
    await execute_sql(
        bff.database_url,
        "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'connection lost' USING ERRCODE = '08006'; END $$",
        "CREATE TRIGGER fail_insert BEFORE INSERT ON profiles FOR EACH ROW EXECUTE FUNCTION fail_insert()",
    )
    name = f"u{uuid.uuid4().hex[:12]}"
    async with bff.http.post(f"{bff.url}/v1/register", json={"name": name, "password": PASSWORD}) as resp:
        assert resp.status == 503
        assert await error_of(resp) == "unavailable"
    async with bff.http.post(f"{bff.url}/v1/login", json={"name": name, "password": PASSWORD}) as resp:
        assert resp.status == 401
    await execute_sql(bff.database_url, "DROP TRIGGER fail_insert ON profiles")
    await bff.sign_up(name)


async def test_login_recreates_a_missing_profile(bff):
    name, user_id = await bff.sign_up()
    await execute_sql(bff.database_url, f"DELETE FROM profiles WHERE id = {user_id}")
    access, _ = await bff.sign_in(name)
    async with bff.http.get(
        f"{bff.url}/v2/user/profile", headers={"Authorization": f"Bearer {access}"}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["Name"] == name


async def test_auth_down_is_service_unavailable(own_bff, own_auth_server):
    bff = own_bff
    name, _ = await bff.sign_up()
    await own_auth_server.stop()
    async with bff.http.post(f"{bff.url}/v1/login", json={"name": name, "password": PASSWORD}) as resp:
        assert resp.status == 503
        assert await error_of(resp) == "auth_unavailable"


async def test_stopping_the_bff_closes_sockets_with_going_away(own_bff):
    bff = own_bff
    _, auth = await bff.user()
    ws = await bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth)
    await next_profile(ws)
    await bff.running.stop()
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert message.data == aiohttp.WSCloseCode.GOING_AWAY


async def test_after_redis_restarts_prices_flow_again_and_rest_answers_503_meanwhile(
    fresh_database, own_auth_server, tmp_path
):
    port = free_port()
    redis_process = ManagedProcess(
        "redis", redis_command(port, tmp_path / "redis", redis_acl_file(tmp_path)), port, tmp_path / "redis.log"
    )
    await asyncio.to_thread(redis_process.start)
    redis_url = redis_user_url(f"redis://127.0.0.1:{port}/0", TESTS_REDIS_USER)
    try:
        async with (
            FakeAggregator() as aggregator,
            serve_bff(
                fresh_database("profile"),
                redis_url,
                own_auth_server.port,
                aggregator,
                write_exchange_info(tmp_path),
            ) as bff,
        ):
            symbol = new_symbol()
            _, auth = await bff.user()
            await bff.add_coin(auth, symbol)
            async with bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth) as ws:
                await next_profile(ws)
                await asyncio.to_thread(redis_process.stop)
                async with bff.http.get(f"{bff.url}/v2/user/profile", headers=auth) as resp:
                    assert resp.status == 503
                async with bff.http.get(f"{bff.url}/healthz") as resp:
                    assert resp.status == 503
                await asyncio.to_thread(redis_process.start)
                await wait_until_subscribed(bff, symbol)
                await bff.redis.publish(symbol, second_stat(symbol, "5", 1723161604000))
                profile = await next_profile(ws)
                while profile["Coins"]["Totals"] == {}:
                    profile = await next_profile(ws)  # the refresh sent after resubscribing
                assert profile["Coins"]["Totals"] == {symbol: "10"}
    finally:
        await asyncio.to_thread(redis_process.stop)
