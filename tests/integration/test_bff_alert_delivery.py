"""Alert firings end to end in one BFF: SecondStats on a Kafka topic → the evaluator (consumer group) →
PostgreSQL → the user's open socket, the unacknowledged ones again at connect, the events route, and the
acknowledgement that stops the re-sending."""

from __future__ import annotations

import ssl
import time
import uuid

from aiohttp import web

import pytest
from support.bff import new_symbol, next_profile, second_stat
from support.kafka_helpers import produce_records
from support.polling import eventually
from support.stacks import serve_alerting_stack

from crypto_mesh import jsonutil
from support.ports import free_port
from crypto_mesh.pki import AUTH
from profile_bff.webhooks import ALERT_ID_HEADER, SIGNATURE_HEADER, verify_signature

ALERTS = "/v2/user/alerts"
TOPIC = f"alerts-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def bff(postgres, redis_url, tmp_path_factory, kafka_bootstrap, mesh_pki):
    async with serve_alerting_stack(
        postgres,
        redis_url,
        tmp_path_factory,
        kafka_bootstrap,
        TOPIC,
        # The test's webhook receiver listens on 127.0.0.1 with a certificate of the mesh CA.
        webhook_allowed_networks="127.0.0.1/32",
        webhook_ca_file=mesh_pki[AUTH].ca_file,
    ) as running:
        yield running


async def events(bff, auth, **params) -> list[dict]:
    async with bff.http.get(f"{bff.url}{ALERTS}/events", headers=auth, params=params) as resp:
        assert resp.status == 200
        return (await resp.json())["items"]


async def next_alert(ws) -> dict:
    """The next message of the socket that is an alert (profiles, which have no type, are skipped)."""
    while True:
        message = await next_profile(ws, timeout=10)
        if message.get("type") == "alert":
            return message


async def test_a_crossing_fires_once_reaches_the_open_socket_and_is_sent_again_at_connect_until_acknowledged(bff, kafka_bootstrap):
    _, auth = await bff.user()
    symbol = new_symbol()
    async with bff.http.post(
        f"{bff.url}{ALERTS}", json={"kind": "price_above", "symbol": symbol, "price": "100", "repeat": "every_crossing"}, headers=auth
    ) as resp:
        rule = await resp.json()
        assert resp.status == 201, rule
    start = (int(time.time()) + 2) * 1000
    closes = ["99", "101", "102", "99", "100", "103"]  # crossings at seconds 1 and 5
    async with bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth) as ws:
        assert "type" not in await next_profile(ws)

        await eventually(lambda: rule_loaded(bff, rule["id"]), what="the rule loaded by the evaluator")
        await produce_records(
            kafka_bootstrap,
            TOPIC,
            [(symbol.encode(), second_stat(symbol, close, start + 1000 * i)) for i, close in enumerate(closes)],
        )
        live = [await next_alert(ws), await next_alert(ws)]
    assert [(a["rule_id"], a["symbol"], a["price"], a["second"]) for a in live] == [
        (rule["id"], symbol, "101", start + 1000),
        (rule["id"], symbol, "103", start + 5000),
    ]
    assert await events(bff, auth) == [dict(a, fired_at=a["fired_at"]) for a in reversed(live)]
    async with bff.http.post(f"{bff.url}{ALERTS}/events/{live[0]['alert_id']}/ack", headers=auth) as resp:
        assert resp.status == 204
    async with bff.http.ws_connect(f"{bff.url}/v2/user/profile/ws", headers=auth) as ws:
        messages = [await next_profile(ws), await next_profile(ws)]
    [again] = [m for m in messages if m.get("type") == "alert"]
    assert again["alert_id"] == live[1]["alert_id"]
    assert [a["alert_id"] for a in await events(bff, auth, unacked="true")] == [live[1]["alert_id"]]


async def rule_loaded(bff, rule_id: int) -> bool:
    evaluator = bff.running.service.evaluator
    return evaluator.consuming and rule_id in evaluator.loaded_rule_ids



async def test_a_webhook_gets_each_firing_signed_with_its_id_retried_after_a_server_error(bff, kafka_bootstrap, mesh_pki):
    received: list[tuple[str, bool, dict]] = []
    answers = iter([500])  # the first call fails; the retry succeeds
    secret: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        valid = verify_signature(secret[0], request.headers[SIGNATURE_HEADER], body, int(time.time()))
        received.append((request.headers[ALERT_ID_HEADER], valid, jsonutil.loads(body)))
        return web.Response(status=next(answers, 204))

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(mesh_pki[AUTH].cert_file, mesh_pki[AUTH].key_file)
    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        _, auth = await bff.user()
        symbol = new_symbol()
        body = {"kind": "price_below", "symbol": symbol, "price": "50", "webhook_url": f"https://127.0.0.1:{port}/hook"}
        async with bff.http.post(f"{bff.url}{ALERTS}", json=body, headers=auth) as resp:
            rule = await resp.json()
            assert resp.status == 201, rule
        secret.append(rule["webhook_secret"])
        await eventually(lambda: rule_loaded(bff, rule["id"]), what="the rule loaded by the evaluator")
        start = (int(time.time()) + 2) * 1000
        await produce_records(
            kafka_bootstrap,
            TOPIC,
            [(symbol.encode(), second_stat(symbol, close, start + 1000 * i)) for i, close in enumerate(["51", "49"])],
        )
        await eventually(lambda: len(received) == 2, timeout_s=15, what="the webhook called twice")
    finally:
        await runner.cleanup()
    (first_id, first_valid, alert), (second_id, second_valid, again) = received
    assert first_id == second_id == alert["alert_id"] and first_valid and second_valid
    assert alert == again and (alert["rule_id"], alert["price"], alert["second"]) == (rule["id"], "49", start + 1000)
