"""The whole mesh, started by the README's command (`crypto-mesh up`), driven as a user drives it.

The replay exchange plays the shipped recording of real Binance trades; every price the BFF pushes must be the
price of the last trade (highest trade id) of its second in that file, computed here independently.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from crypto_mesh.netutil import free_port, port_open

CRYPTO_MESH = str(Path(sys.executable).parent / "crypto-mesh")
READY_TIMEOUT_S = 180


def last_trade_price_per_second(recording: Path) -> dict[tuple[str, int], tuple[int, Decimal]]:
    """(symbol, second start ms) → (trade id, price) of the trade with the highest id whose T is in that second."""
    closes: dict[tuple[str, int], tuple[int, Decimal]] = {}
    with gzip.open(recording, "rt") as lines:
        for line in lines:
            data = json.loads(line)["data"]
            key = (data["s"].lower(), data["T"] // 1000 * 1000)
            if key not in closes or data["t"] > closes[key][0]:
                closes[key] = (data["t"], Decimal(data["p"]))
    return closes


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A running mesh on its embedded defaults; yields (state dict, environment). Stopped with SIGINT (Ctrl-C)."""
    data_dir = tmp_path_factory.mktemp("mesh")
    env = {**os.environ, "MESH_DATA_DIR": str(data_dir), "MESH_BFF_PORT": str(free_port())}
    log_path = data_dir / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([CRYPTO_MESH, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    state_file = data_dir / "mesh.json"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mesh did not become ready:\n{log_path.read_text()[-6000:]}")
        time.sleep(0.5)
    state = json.loads(state_file.read_text())
    yield state, env, process, log_path
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


async def test_a_user_watches_the_portfolio_value_follow_the_recorded_trades(mesh, trade_recording):
    state, _env, _process, _log = mesh
    bff = state["urls"]["bff"]
    credentials = {"name": "alice", "password": "correct horse battery staple"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bff}/v1/register", json=credentials) as response:
            assert response.status == 201, await response.text()
        async with http.post(f"{bff}/v1/login", json=credentials) as response:
            assert response.status == 200
            body = await response.json()
            assert "refresh_token" not in body
            token = body["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        quantities = {"btcusdt": Decimal("1.5"), "ethusdt": Decimal("2.25")}
        for symbol, quantity in quantities.items():
            async with http.post(f"{bff}/v2/coin/symbol", headers=auth,
                                 json={"symbol": symbol.upper(), "quantity": str(quantity)}) as response:
                assert response.status == 201, await response.text()

        async with http.get(state["urls"]["exchange_info"]) as response:
            replay = (await response.json())["recordings"][0]

        updates = []
        async with http.ws_connect(state["urls"]["websocket"], headers=auth) as socket:
            deadline = time.monotonic() + 60
            while len(updates) < 3 and time.monotonic() < deadline:
                message = await socket.receive_json(timeout=30)
                if message["Coins"]["Prices"]:
                    updates.append(message)

    assert len(updates) >= 3, updates
    closes = last_trade_price_per_second(trade_recording)
    first_second = min(second for _symbol, second in closes)
    checked = 0
    for profile in updates:
        coins = profile["Coins"]
        assert {k: Decimal(v) for k, v in coins["Quantities"].items()} == quantities
        total = Decimal(0)
        for symbol, price in coins["Prices"].items():
            second = int(datetime.fromisoformat(coins["PriceTimes"][symbol].replace("Z", "+00:00")).timestamp() * 1000)
            shifted = second - replay["time_shift_ms"]
            loop = (shifted - first_second) // replay["loop_span_ms"]
            recorded_second = shifted - loop * replay["loop_span_ms"]
            assert Decimal(price) == closes[(symbol, recorded_second)][1], (symbol, recorded_second)
            assert Decimal(coins["Totals"][symbol]) == quantities[symbol] * Decimal(price)
            total += Decimal(coins["Totals"][symbol])
            checked += 1
        assert Decimal(profile["Total"]) == total
    assert checked >= 3


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


def test_ctrl_c_stops_every_process_of_the_mesh(mesh):
    state, _env, process, log_path = mesh
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0, log_path.read_text()[-3000:]
    bff_port = int(state["urls"]["bff"].rsplit(":", 1)[1])
    etl_port = int(state["urls"]["etl"].rsplit(":", 1)[1])
    assert not port_open("127.0.0.1", bff_port) and not port_open("127.0.0.1", etl_port)
    assert not (Path(state["data_dir"]) / "mesh.json").exists()
