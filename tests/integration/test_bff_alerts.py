"""The alert rule routes of the BFF (``/v2/user/alerts``) over real HTTP, against real auth, PostgreSQL and
Redis: rules are checked like coins, capped, created once per Idempotency-Key, paused and resumed, deleted,
and every change is in the user's history."""

from __future__ import annotations

import pytest
from support.bff import error_body, new_symbol
from support.stacks import serve_stack

ALERTS = "/v2/user/alerts"


@pytest.fixture(scope="module")
async def bff(postgres, redis_url, tmp_path_factory):
    async with serve_stack(postgres, redis_url, tmp_path_factory, max_alerts_per_user=3) as running:
        yield running


async def create(bff, auth, body, **headers):
    async with bff.http.post(f"{bff.url}{ALERTS}", json=body, headers={**auth, **headers}) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_a_price_rule_is_created_listed_paused_resumed_and_deleted_with_each_change_in_the_history(bff):
    _, auth = await bff.user()
    symbol = new_symbol()
    status, rule, _ = await create(bff, auth, {"kind": "price_above", "symbol": symbol.upper(), "price": "70000.50"})
    assert status == 201, rule
    assert rule | {"id": 0, "created_at": ""} == {
        "id": 0,
        "kind": "price_above",
        "symbol": symbol,
        "price": "70000.5",
        "repeat": "once",
        "cooldown": "0s",
        "webhook_url": None,
        "paused": False,
        "created_at": "",
    }
    async with bff.http.get(f"{bff.url}{ALERTS}", headers=auth) as resp:
        assert (await resp.json())["alerts"] == [rule]
    for paused in (True, True, False):
        async with bff.http.patch(f"{bff.url}{ALERTS}/{rule['id']}", json={"paused": paused}, headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["paused"] is paused
    async with bff.http.delete(f"{bff.url}{ALERTS}/{rule['id']}", headers=auth) as resp:
        assert resp.status == 204
    async with bff.http.delete(f"{bff.url}{ALERTS}/{rule['id']}", headers=auth) as resp:
        assert resp.status == 404 and (await error_body(resp))["code"] == "alert_not_found"
    async with bff.http.get(f"{bff.url}/v2/user/history", headers=auth) as resp:
        items = (await resp.json())["items"]
    assert [(item["operation"], item["alert_id"], item["symbol"]) for item in items] == [
        ("alert_delete", rule["id"], symbol),
        ("alert_resume", rule["id"], symbol),
        ("alert_pause", rule["id"], symbol),
        ("alert_create", rule["id"], symbol),
    ]


async def test_change_percent_and_portfolio_rules_are_answered_in_their_own_terms(bff):
    _, auth = await bff.user()
    status, rule, _ = await create(
        bff, auth, {"kind": "change_percent", "symbol": new_symbol(), "percent": "-5", "window": "60m", "repeat": "every_crossing", "cooldown": "300s"}
    )
    assert status == 201 and (rule["percent"], rule["window"], rule["cooldown"]) == ("-5", "1h", "5m")
    status, rule, _ = await create(
        bff, auth, {"kind": "portfolio_total_below", "total": "100000", "webhook_url": "https://hooks.example/a"}
    )
    assert status == 201 and rule["total"] == "100000" and "symbol" not in rule
    assert len(rule["webhook_secret"]) >= 32
    async with bff.http.get(f"{bff.url}{ALERTS}", headers=auth) as resp:
        assert all("webhook_secret" not in listed for listed in (await resp.json())["alerts"])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"kind": "price_above", "symbol": "zzzzzzusdt", "price": "1"}, "unknown_symbol"),
        ({"kind": "price_above", "symbol": "bccbtc", "price": "1"}, "symbol_not_trading"),
        ({"kind": "price_above", "symbol": "b$", "price": "1"}, "invalid_symbol"),
        ({"kind": "price_above", "symbol": "btcusdt", "price": "0.0000000000000000001"}, "invalid_alert"),
        ({"kind": "price_above", "symbol": "btcusdt", "price": "1.5.5"}, "invalid_alert"),
        ({"kind": "change_percent", "symbol": "btcusdt", "percent": "5", "window": "2d"}, "invalid_alert"),
        ({"kind": "portfolio_total_above"}, "invalid_alert"),
    ],
)
async def test_an_invalid_rule_is_422_with_the_reason(bff, body, code):
    _, auth = await bff.user()
    status, error, _ = await create(bff, auth, body)
    assert status == 422 and error["error"]["code"] == code, error


async def test_rules_per_user_are_capped_and_an_idempotent_create_is_stored_once(bff):
    _, auth = await bff.user()
    body = {"kind": "price_below", "symbol": new_symbol(), "price": "1"}
    first = await create(bff, auth, body, **{"Idempotency-Key": "k1"})
    again = await create(bff, auth, body, **{"Idempotency-Key": "k1"})
    assert first[0] == again[0] == 201 and first[1] == again[1]
    assert again[2]["Idempotent-Replayed"] == "true"
    for _ in range(2):
        assert (await create(bff, auth, body))[0] == 201
    status, error, _ = await create(bff, auth, body)
    assert status == 409 and error["error"]["code"] == "alert_limit_reached"


async def test_another_users_rule_and_an_unknown_firing_are_not_found(bff):
    _, owner = await bff.user()
    _, other = await bff.user()
    _, rule, _ = await create(bff, owner, {"kind": "price_below", "symbol": new_symbol(), "price": "1"})
    async with bff.http.patch(f"{bff.url}{ALERTS}/{rule['id']}", json={"paused": True}, headers=other) as resp:
        assert resp.status == 404
    async with bff.http.post(f"{bff.url}{ALERTS}/events/not-a-uuid/ack", headers=owner) as resp:
        assert resp.status == 404
    async with bff.http.get(f"{bff.url}{ALERTS}/events", headers=owner) as resp:
        assert await resp.json() == {"items": [], "next_cursor": None}
