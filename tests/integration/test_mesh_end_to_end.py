"""The whole mesh, started by the README's command (`crypto-mesh up`), driven as a user drives it.

The replay exchange plays the shipped recording of real Binance trades; every price the BFF pushes must be the
price of the last trade (highest trade id) of its second in that file, computed independently
(:func:`support.recordings.recorded_seconds`). A second mesh plays the shipped ``@aggTrade`` recording, as
the README invites, with no other setting.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.mesh import CRYPTO_MESH, register_and_login, running_mesh
from support.polling import eventually
from support.recordings import recorded_second, recorded_seconds

from crypto_mesh.grpc_tls import channel_credentials, health_status
from crypto_mesh.metrics import parse_samples
from crypto_mesh.netutil import port_open
from crypto_mesh.pki import (
    AGGREGATOR,
    AUTH,
    CA_CERT_FILE,
    HEALTHCHECK,
    PROFILE_BFF,
    SOCKET_PROXY,
    leaf_file_names,
    load_tls,
)
from crypto_mesh.proto import auth_pb2, auth_pb2_grpc, socket_pb2, socket_pb2_grpc

#: Among the longest modules: scheduled first, so that the workers end together (tests/conftest.py).
pytestmark = pytest.mark.heavy


def second_of(price_time: str) -> int:
    """A ``PriceTimes`` value (RFC 3339 UTC) as Unix ms."""
    return int(datetime.fromisoformat(price_time.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A running mesh on its embedded defaults (:func:`running_mesh`)."""
    with running_mesh(tmp_path_factory.mktemp("mesh")) as running:
        yield running


async def priced_profiles(http: aiohttp.ClientSession, state: dict, auth: dict, count: int) -> list[dict]:
    """The first ``count`` profiles with prices pushed on the user's WebSocket (waits up to a minute)."""
    updates = []
    async with http.ws_connect(state["urls"]["websocket"], headers=auth) as socket:
        deadline = time.monotonic() + 60
        while len(updates) < count and time.monotonic() < deadline:
            message = await socket.receive_json(timeout=30)
            if message["Coins"]["Prices"]:
                updates.append(message)
    assert len(updates) >= count, updates
    return updates


async def hold_and_watch(
    state: dict, name: str, quantities: dict[str, Decimal], count: int
) -> tuple[dict, list[dict]]:
    """As the README's journey: register ``name``, log in, add ``quantities`` (symbol → quantity) and watch
    the WebSocket until ``count`` profiles with prices arrived. Returns (the replay's timeline, those
    profiles)."""
    bff = state["urls"]["bff"]
    async with aiohttp.ClientSession() as http:
        auth = await register_and_login(http, bff, name)
        for symbol, quantity in quantities.items():
            async with http.post(f"{bff}/v2/coin/symbol", headers=auth,
                                 json={"symbol": symbol.upper(), "quantity": str(quantity)}) as response:
                assert response.status == 201, await response.text()
        async with http.get(state["urls"]["exchange_info"]) as response:
            replay = (await response.json())["recordings"][0]
        return replay, await priced_profiles(http, state, auth, count)


def assert_priced_as_recorded(
    profiles: list[dict], quantities: dict[str, Decimal], replay: dict, recording: Path, streams: set[str]
) -> int:
    """Every price of ``profiles`` is the close of its second in ``recording`` (of its trade stream in
    ``streams``), every total exact; returns how many prices were checked."""
    earliest, expected = recorded_seconds(recording, streams)
    checked = 0
    for profile in profiles:
        coins = profile["Coins"]
        assert {k: Decimal(v) for k, v in coins["Quantities"].items()} == quantities
        total = Decimal(0)
        for symbol, price in coins["Prices"].items():
            _loop, second = recorded_second(second_of(coins["PriceTimes"][symbol]), replay, earliest)
            assert Decimal(price) == expected[(symbol, second)]["p"], (symbol, second)
            assert Decimal(coins["Totals"][symbol]) == quantities[symbol] * Decimal(price)
            total += Decimal(coins["Totals"][symbol])
            checked += 1
        assert Decimal(profile["Total"]) == total
    return checked


async def test_a_user_watches_the_portfolio_value_follow_the_recorded_trades(mesh, trade_recording):
    state, _env, _process, _log = mesh
    quantities = {"btcusdt": Decimal("1.5"), "ethusdt": Decimal("2.25")}
    replay, profiles = await hold_and_watch(state, "alice", quantities, 3)
    streams = {"btcusdt@trade", "ethusdt@trade"}
    assert assert_priced_as_recorded(profiles, quantities, replay, trade_recording, streams) >= 3


def test_the_bff_takes_its_symbol_list_from_the_replay_exchange(mesh):
    _state, _env, _process, log_path = mesh
    # The BFF fetches GET /api/v3/exchangeInfo from the replay exchange at start, which serves the shipped
    # snapshot: the list is applied and changes nothing.
    deadline = time.monotonic() + 30
    refreshed: list[str] = []
    while not refreshed and time.monotonic() < deadline:
        refreshed = [line for line in log_path.read_text().splitlines() if "instruments_refreshed" in line]
        time.sleep(0.5)
    assert refreshed, log_path.read_text()[-3000:]
    assert refreshed[0].split()[1] == "profile_bff"
    assert re.search(r"\bsource='?exchange\b", refreshed[0]) and re.search(r"\bsymbols=1695\b", refreshed[0])


async def test_the_readmes_candles_close_at_the_recorded_trades(mesh, trade_recording):
    state, _env, _process, _log = mesh
    bff = state["urls"]["bff"]
    earliest, recorded = recorded_seconds(trade_recording, {"btcusdt@trade"})
    credentials = {"name": "carol", "password": "correct horse battery staple"}
    async with aiohttp.ClientSession() as http:
        # A holder of btcusdt, so that the mesh follows it (as it may already for another test's user).
        async with http.post(f"{bff}/v1/register", json=credentials) as response:
            assert response.status == 201, await response.text()
        async with http.post(f"{bff}/v1/login", json=credentials) as response:
            auth = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
        coin = {"symbol": "btcusdt", "quantity": "1"}
        async with http.post(f"{bff}/v2/coin/symbol", headers=auth, json=coin) as response:
            assert response.status == 201, await response.text()
        async with http.get(state["urls"]["exchange_info"]) as response:
            replay = (await response.json())["recordings"][0]

        async def five_candles() -> list:
            async with http.get(f"{bff}/v1/instruments/btcusdt/candles?interval=1s&limit=60") as response:
                assert response.status == 200, await response.text()
                candles = (await response.json())["candles"]
            return candles if len(candles) >= 5 else []

        candles = await eventually(five_candles, timeout_s=90, interval_s=1)
        url = f"{bff}/v1/instruments/btcusdt/indicators?name=sma&period=2&interval=1s"
        async with http.get(url) as response:
            assert response.status == 200, await response.text()
    for candle in candles:  # a 1-second candle closes at the last trade of its second
        _loop, second = recorded_second(second_of(candle["open_time"]), replay, earliest)
        assert Decimal(candle["close"]) == recorded[("btcusdt", second)]["p"]


def run_sql(env: dict, query: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([CRYPTO_MESH, "sql", query, *options], env=env, capture_output=True, text=True, timeout=60)


def test_market_history_lands_in_clickhouse_and_sql_reads_it(mesh):
    _state, env, _process, _log = mesh
    query = "SELECT symbol, count() AS records FROM crypto.market_tickers GROUP BY symbol ORDER BY symbol"
    deadline = time.monotonic() + 90
    rows: list = []
    while time.monotonic() < deadline:
        result = run_sql(env, query, "--format", "json")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        if {row["symbol"] for row in rows} >= {"btcusdt", "ethusdt"}:
            break
        time.sleep(2)
    assert {row["symbol"] for row in rows} >= {"btcusdt", "ethusdt"}, rows
    assert all(int(row["records"]) > 0 for row in rows)

    table = run_sql(env, query)
    assert table.returncode == 0 and "btcusdt" in table.stdout and "records" in table.stdout

    # Every SecondStat also travels aggregator → Kafka binance.second → ETL → crypto.price_seconds.
    seconds_query = "SELECT symbol, count() AS seconds FROM crypto.price_seconds FINAL GROUP BY symbol"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seconds = {row["symbol"]: int(row["seconds"]) for row in json.loads(
            run_sql(env, seconds_query, "--format", "json").stdout)}
        if seconds.get("btcusdt") and seconds.get("ethusdt"):
            break
        time.sleep(2)
    assert seconds.get("btcusdt") and seconds.get("ethusdt"), seconds


def test_sql_refuses_writes_and_reading_the_mesh_secrets(mesh):
    _state, env, _process, _log = mesh
    result = run_sql(env, "DROP TABLE crypto.market_tickers")
    assert result.returncode == 2
    leak = run_sql(env, "SELECT substring(file('.mesh/secrets/jwt_ed25519.pem'), 1, 40)")
    assert leak.returncode == 2 and "PRIVATE KEY" not in leak.stdout + leak.stderr
    assert run_sql(env, "SELECT count() FROM crypto.market_tickers").returncode == 0


def mesh_channel(target: str, tls, server_identity: str) -> grpc.Channel:
    return grpc.secure_channel(
        target, channel_credentials(tls), options=[("grpc.ssl_target_name_override", server_identity)]
    )


def test_the_mesh_grpc_servers_speak_mutual_tls_only_and_serve_each_its_one_client(mesh):
    state, _env, _process, _log = mesh
    secrets = Path(state["data_dir"]) / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in secrets.iterdir()} == {
        path.name: 0o600 for path in secrets.iterdir()
    }
    tls = {
        identity: load_tls(secrets / CA_CERT_FILE, *(secrets / name for name in leaf_file_names(identity)))
        for identity in (PROFILE_BFF, AGGREGATOR, HEALTHCHECK)
    }
    health = health_pb2.HealthCheckRequest()
    for server in (AUTH, SOCKET_PROXY):
        target = state["urls"][server]
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as plain:
            health_pb2_grpc.HealthStub(channel).Check(health, timeout=10)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        status = health_status(target, tls[HEALTHCHECK], server, timeout_s=30)
        assert status == health_pb2.HealthCheckResponse.SERVING

    register = auth_pb2.RegisterRequest(name=f"eve{os.getpid()}", password="correct horse battery staple")
    with (
        mesh_channel(state["urls"][AUTH], tls[AGGREGATOR], AUTH) as channel,
        pytest.raises(grpc.RpcError) as denied,
    ):
        auth_pb2_grpc.AuthStub(channel).Register(register, timeout=60)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with mesh_channel(state["urls"][AUTH], tls[PROFILE_BFF], AUTH) as channel:
        created = auth_pb2_grpc.AuthStub(channel).Register(register, timeout=60)
    assert created.name == register.name  # the refused call created nothing: the name was still free

    with mesh_channel(state["urls"][SOCKET_PROXY], tls[PROFILE_BFF], SOCKET_PROXY) as channel:
        stream = socket_pb2_grpc.SocketProxyStub(channel).StreamTrades(
            socket_pb2.TradeStreamRequest(symbol="btcusdt"), timeout=30
        )
        with pytest.raises(grpc.RpcError) as denied:
            next(stream)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_price_alert_reaches_the_socket_at_the_recorded_crossing_until_acknowledged(mesh, trade_recording):
    """The README's alert journey: a price_above rule at a price the replay is about to cross upwards fires
    at the close of the recorded second that crossed it; a new socket gets it again until it is
    acknowledged."""
    state, _env, _process, _log = mesh
    bff = state["urls"]["bff"]
    earliest, expected = recorded_seconds(trade_recording, {"btcusdt@trade"})
    async with aiohttp.ClientSession() as http:
        auth = await register_and_login(http, bff, "erin")
        async with http.post(f"{bff}/v2/coin/symbol", headers=auth, json={"symbol": "btcusdt", "quantity": "1"}) as response:
            assert response.status == 201
        [profile] = await priced_profiles(http, state, auth, 1)
        async with http.get(state["urls"]["exchange_info"]) as response:
            replay = (await response.json())["recordings"][0]
        # The price to watch: the close before the first rise of the recording 5 s or more from now (the
        # replay loops), so that the price is sure to cross it upwards soon.
        _loop, now = recorded_second(second_of(profile["Coins"]["PriceTimes"]["btcusdt"]), replay, earliest)
        closes = sorted((second, fields["p"]) for (_, second), fields in expected.items())
        ahead = [close for second, close in closes if second >= now + 5000] + [close for _, close in closes]
        threshold = next(before for before, after in zip(ahead, ahead[1:]) if after > before)
        rule = {"kind": "price_above", "symbol": "btcusdt", "price": str(threshold)}
        async with http.post(f"{bff}/v2/user/alerts", headers=auth, json=rule) as response:
            assert response.status == 201, await response.text()
        async with http.ws_connect(state["urls"]["websocket"], headers=auth) as socket:
            deadline = time.monotonic() + 90
            alert = None
            while alert is None and time.monotonic() < deadline:
                message = await socket.receive_json(timeout=90)
                alert = message if message.get("type") == "alert" else None
        assert alert is not None
        assert Decimal(alert["price"]) > Decimal(rule["price"])
        _loop, second = recorded_second(alert["second"], replay, earliest)
        assert Decimal(alert["price"]) == expected[("btcusdt", second)]["p"]
        async with http.ws_connect(state["urls"]["websocket"], headers=auth) as socket:
            # Sent at connect, with the profile snapshot (a price push may come between them).
            seen = [(await socket.receive_json(timeout=10)).get("alert_id") for _ in range(2)]
            while alert["alert_id"] not in seen and len(seen) < 5:
                seen.append((await socket.receive_json(timeout=10)).get("alert_id"))
        assert alert["alert_id"] in seen
        async with http.post(f"{bff}/v2/user/alerts/events/{alert['alert_id']}/ack", headers=auth) as response:
            assert response.status == 204
        async with http.get(f"{bff}/v2/user/alerts/events?unacked=true", headers=auth) as response:
            assert (await response.json())["items"] == []


#: Series each service's /metrics must have once the journey ran (docs/OPERATIONS.md lists them all).
EXPECTED_SERIES = {
    "bff_metrics": [
        'bff_http_requests_total{method="POST",route="/v1/login",status="200"}',
        'bff_http_request_duration_seconds_count{method="POST",route="/v2/coin/symbol"}',
        'bff_grpc_client_handled_total{grpc_code="OK",grpc_method="/crypto.auth.v1.Auth/Login"}',
        "bff_redis_command_duration_seconds_count",
        "bff_db_pool_size",
        "bff_db_pool_checked_out",
        "bff_ws_connections",
        "bff_ws_fan_out_seconds_count",
    ],
    "auth_metrics": [
        'auth_grpc_server_handled_total{grpc_code="OK",grpc_method="/crypto.auth.v1.Auth/Login"}',
        'auth_grpc_server_handling_seconds_count{grpc_method="/crypto.auth.v1.Auth/Register"}',
        "auth_db_pool_size",
        'auth_password_checks_total{outcome="completed"}',
    ],
    "socket_proxy_metrics": [
        'socket_proxy_grpc_server_started_total{grpc_method="/crypto.socket.v1.SocketProxy/StreamTrades"}',
        "socket_proxy_frames_in_total",
    ],
    "aggregator_metrics": [
        'aggregator_http_requests_total{method="PUT",route="/v1/followers/{follower}",status="200"}',
        "aggregator_redis_command_duration_seconds_count",
        'aggregator_grpc_client_started_total{grpc_method="/crypto.socket.v1.SocketProxy/StreamTrades"}',
        "aggregator_publish_latency_seconds_count",
    ],
    "etl_metrics": [
        "etl_kafka_consumer_lag",
        "etl_clickhouse_insert_seconds_count",
        "etl_rows_inserted_total",
    ],
    "exchange_metrics": ['replay_http_requests_total{route="websocket",status="101"}', "replay_connections"],
}


async def test_every_service_serves_its_metrics_to_its_scraper_only(mesh):
    state, env, _process, _log = mesh
    await hold_and_watch(state, "mallory", {"btcusdt": Decimal("1")}, 1)
    secrets = Path(env["MESH_DATA_DIR"]) / "secrets"
    tokens = {
        "aggregator_metrics": "aggregator_api_token",
        "etl_metrics": "etl_api_token",
        "exchange_metrics": None,  # the development exchange is open, like its Binance routes
    }
    async with aiohttp.ClientSession() as http:
        for name, expected in EXPECTED_SERIES.items():
            url = state["urls"][name]
            token_file = tokens.get(name, "metrics_token")
            if token_file is not None:
                async with http.get(url) as response:
                    assert response.status == 401, name
                token = (secrets / token_file).read_text().splitlines()[0]
                headers = {"Authorization": f"Bearer {token}"}
            else:
                headers = {}

            async def complete(url=url, headers=headers, expected=expected) -> bool:
                async with http.get(url, headers=headers) as response:
                    assert response.status == 200
                    text = await response.text()
                missing = [want for want in expected if not _has(text, want)]
                assert not missing, missing
                return True

            await eventually(complete, timeout_s=60, interval_s=1, tolerate=AssertionError, what=name)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{state['urls']['bff']}/metrics") as response:
            assert response.status == 404  # never on the public port


def _has(text: str, want: str) -> bool:
    """Whether the exposition ``text`` has the sample ``want`` (``name`` or ``name{label="v",...}``, labels in
    any order, a subset of the sample's)."""
    name, _, labels = want.partition("{")
    wanted = set(re.findall(r'(\w+)="([^"]*)"', labels))
    for key in parse_samples(text):
        sample, _, rest = key.partition("{")
        if sample == name and wanted <= set(tuple(pair.split("=", 1)) for pair in rest.rstrip("}").split(",") if pair):
            return True
    return False


def test_ctrl_c_stops_every_process_of_the_mesh(mesh):
    state, _env, process, log_path = mesh
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0, log_path.read_text()[-3000:]
    bff_port = int(state["urls"]["bff"].rsplit(":", 1)[1])
    etl_port = int(state["urls"]["etl"].rsplit(":", 1)[1])
    assert not port_open("127.0.0.1", bff_port) and not port_open("127.0.0.1", etl_port)
    assert not (Path(state["data_dir"]) / "mesh.json").exists()


@pytest.fixture(scope="module")
def agg_trade_mesh(tmp_path_factory, agg_trade_recording):
    """A mesh replaying the shipped ``@aggTrade`` recording (``MESH_REPLAY_FILE``), with no other setting."""
    with running_mesh(tmp_path_factory.mktemp("mesh"), MESH_REPLAY_FILE=str(agg_trade_recording)) as running:
        yield running


async def test_another_recording_of_aggregate_trades_prices_the_coins_it_has(
    agg_trade_mesh, agg_trade_recording
):
    state, _env, _process, _log = agg_trade_mesh
    quantities = {"dotusdt": Decimal("120")}
    replay, profiles = await hold_and_watch(state, "dot", quantities, 2)
    streams = {"dotusdt@aggTrade"}
    assert assert_priced_as_recorded(profiles, quantities, replay, agg_trade_recording, streams) >= 2

