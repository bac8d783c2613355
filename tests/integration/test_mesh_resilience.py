"""A mesh that survives its parts, under `crypto-mesh up` as the README starts it.

- Each process is killed with ``kill -9`` in turn; within 10 s it runs again (a new pid in ``processes.json``,
  which ``crypto-mesh status`` shows), the BFF answers a login and the user's profile socket gets prices of a
  second after the kill, while ``up`` itself never stopped.
- A graceful stop loses no record of the memory-only embedded broker, even one that a kill -9 emptied just
  before: records written to it just before ``crypto-mesh down`` are each in ClickHouse once after the next
  start, and the stop went producers first, then the ETL once the broker was drained, then the broker.
- A process that keeps crashing is given up on: ``up`` stops the mesh and exits 1 with the reason.

One mesh for the kills and the stop, a second start of the same data directory for the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio
from support.etl import mini_ticker_message
from support.kafka_helpers import produce_records
from support.mesh import CRYPTO_MESH, register_and_login, running_mesh
from support.polling import eventually
from support.recordings import missing_seconds

from crypto_mesh.redisclient import seconds_key
from launcher.control import read_processes
from launcher.mesh import HealthCheck

#: Among the longest modules: scheduled first, so that the workers end together (tests/conftest.py).
pytestmark = pytest.mark.heavy

#: Killed in this order; the BFF's engine, then the embedded broker last, so that the graceful stop below drains
#: a broker that came back empty after a kill -9, into an ETL restarted with it.
KILLED = ["auth", "socket_proxy", "aggregator", "etl", "profile_bff", "exchange", "redis", "kafka"]
#: How long the journey may take to resume after a kill (the issue's promise).
RESUME_S = 10.0
USER = "survivor"
#: Records written to the broker just before the stop, of a symbol no recording has.
DRAIN_SYMBOL = "drainusdt"
DRAIN_RECORDS = 40


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mesh")


@pytest.fixture(scope="module")
def mesh(data_dir):
    with running_mesh(data_dir) as running:
        yield running


@pytest.fixture(scope="module")
async def holder(mesh) -> dict[str, str]:
    """A user holding BTCUSDT, so that the mesh follows it and the user's socket gets its price; its
    ``Authorization`` header (the access token is checked by the BFF itself, auth or not)."""
    state = mesh[0]
    async with aiohttp.ClientSession() as http:
        auth = await register_and_login(http, state["urls"]["bff"], USER)
        async with http.post(
            f"{state['urls']['bff']}/v2/coin/symbol",
            headers=auth,
            json={"symbol": "BTCUSDT", "quantity": "1.5"},
        ) as response:
            assert response.status == 201, await response.text()
    return auth


def price_second(price_time: str) -> float:
    return datetime.fromisoformat(price_time).timestamp()


async def prices_flow(state: dict, auth: dict[str, str], after: float) -> bool:
    """The BFF serves the holder's profile and its socket pushes a BTCUSDT price of a second that began after
    ``after`` (Unix s); raises (a tolerated error) while not."""
    bff = state["urls"]["bff"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=4)) as http:
        async with http.get(f"{bff}/v2/user/profile", headers=auth) as response:
            assert response.status == 200, await response.text()
        async with http.ws_connect(state["urls"]["websocket"], headers=auth) as socket:
            while True:
                message = await socket.receive_json(timeout=3)
                times = message["Coins"]["PriceTimes"]
                if "btcusdt" in times and price_second(times["btcusdt"]) >= after:
                    assert Decimal(message["Coins"]["Quantities"]["btcusdt"]) == Decimal("1.5")
                    return True


#: Kills across which no BTCUSDT second may be missing on Redis: the restarted aggregator (restarted with the
#: broker too) fetches the trades since the last second published from the exchange's history.
CONTINUOUS = ("aggregator", "kafka")


async def seconds_since(state: dict, killed_at: float) -> bool:
    """Whether the recent BTCUSDT seconds on Redis (``seconds:btcusdt{price:btcusdt}``, read as the BFF's
    Redis user) reach 2 s past ``killed_at`` (Unix s) from 3 s before it, with none missing: each second's
    first trade id (its last, ``i``, less its count, ``n``) follows the last id of the second before."""
    data_dir = Path(state["data_dir"])
    password = (data_dir / "secrets" / "redis_bff_password").read_text().strip()
    client = redis.asyncio.from_url(state["urls"]["redis"], username="bff", password=password)
    try:
        raw = await client.lrange(seconds_key("btcusdt"), 0, -1)
    finally:
        await client.aclose()
    stats = [stat for stat in map(orjson.loads, raw) if stat["t"] >= (killed_at - 3) * 1000]
    if not stats or stats[-1]["t"] < (killed_at + 2) * 1000:
        return False
    holes = missing_seconds(stats)
    assert holes == [], f"seconds missing between {holes}"
    return True


async def someone_new_logs_in(state: dict) -> bool:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=4)) as http:
        await register_and_login(http, state["urls"]["bff"], f"new{uuid.uuid4().hex[:12]}")
    return True


#: What a check of the journey may meet while a process restarts.
NOT_YET = (aiohttp.ClientError, asyncio.TimeoutError, AssertionError)


@contextmanager
def logs_kept_on_failure(data_dir: Path, keep: Path) -> Iterator[None]:
    """On a failure inside, copy ``data_dir``'s logs to ``keep`` (the module's later start of the same data
    directory writes them anew) and add the tail of the supervisor's log to the failure."""
    try:
        yield
    except (AssertionError, pytest.fail.Exception) as exc:
        shutil.copytree(data_dir / "logs", keep, dirs_exist_ok=True)
        system = (data_dir / "logs" / "system.log").read_text().splitlines()[-40:]
        pytest.fail(f"{exc}\nthe mesh's logs are kept in {keep}; system.log ends:\n" + "\n".join(system))


@pytest.mark.parametrize("name", KILLED)
async def test_kill_9_of_a_process_is_restarted_and_the_journey_resumes(mesh, holder, name, tmp_path):
    state, _env, process, log_path = mesh
    data_dir = Path(state["data_dir"])
    with logs_kept_on_failure(data_dir, tmp_path / "logs"):
        await kill_and_resume(state, holder, name, process, log_path)


async def kill_and_resume(
    state: dict, holder: dict[str, str], name: str, process: subprocess.Popen, log_path: Path
) -> None:
    """Kill ``name`` with SIGKILL and wait for the journey to resume within :data:`RESUME_S`, then for every
    process to be healthy again."""
    data_dir = Path(state["data_dir"])
    await eventually(
        lambda: prices_flow(state, holder, time.time()),
        timeout_s=30,
        what="prices before the kill",
        tolerate=NOT_YET,
    )
    killed = read_processes(data_dir)[name]["pid"]
    os.kill(killed, signal.SIGKILL)
    killed_at, deadline = time.time(), time.monotonic() + RESUME_S

    def restarted() -> bool:
        entry = read_processes(data_dir).get(name, {})
        return entry.get("pid") not in (None, killed) and "returncode" not in entry

    async def resumed() -> bool:
        return restarted() and await prices_flow(state, holder, killed_at)

    await eventually(
        resumed, timeout_s=RESUME_S, interval_s=0.2, what=f"prices after kill -9 of {name}", tolerate=NOT_YET
    )
    if name in CONTINUOUS:
        await eventually(
            lambda: seconds_since(state, killed_at),
            timeout_s=RESUME_S,
            interval_s=0.2,
            what=f"BTCUSDT's seconds on Redis across the kill -9 of {name}",
        )
    await eventually(
        lambda: someone_new_logs_in(state),
        timeout_s=max(0.0, deadline - time.monotonic()),
        interval_s=0.5,
        what=f"a login after kill -9 of {name}",
        tolerate=NOT_YET,
    )
    assert process.poll() is None, log_path.read_text()[-3000:]
    assert f"{name} exited unexpectedly (rc=-9): restarting it in" in log_path.read_text()
    # Whole again before the next kill: every process healthy (after the broker, its clients restarted too).
    checks = [HealthCheck(**check) for check in state["checks"]]
    await eventually(
        lambda: all(check.ok() for check in checks),
        timeout_s=60,
        interval_s=0.5,
        what="every process healthy",
    )


def ticker(n: int) -> dict:
    """The KafkaMsg of the ``n``-th mini-ticker second of :data:`DRAIN_SYMBOL` (docs/CONTRACTS.md)."""
    event_time = int(time.time() * 1000) - 3_600_000 + n * 1000
    return mini_ticker_message(
        DRAIN_SYMBOL, event_time, Decimal("101.5"), Decimal(100), Decimal(102), Decimal(99)
    )


def crypto_mesh(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CRYPTO_MESH, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def test_a_graceful_stop_drains_the_broker_before_stopping_it(mesh):
    state, env, process, log_path = mesh
    records = [(DRAIN_SYMBOL.encode(), json.dumps(ticker(n)).encode()) for n in range(DRAIN_RECORDS)]
    await produce_records(state["urls"]["kafka"], "binance.miniticker", records)
    stop = await asyncio.to_thread(crypto_mesh, env, "down")
    assert stop.returncode == 0, stop.stderr
    assert process.wait(60) == 0
    system = [line.split("| ", 1)[1] for line in log_path.read_text().splitlines() if " system " in line]
    stopping = system[system.index("SIGTERM received") :]

    def at(prefix: str) -> int:
        return next(i for i, line in enumerate(stopping) if line.startswith(prefix))

    assert (
        at("aggregator stopped")
        < at("the ETL has loaded every record the broker holds")
        < at("sending SIGTERM to etl")
        < at("etl stopped")
        < at("sending SIGTERM to kafka")
    ), stopping


@pytest.fixture(scope="module")
def next_mesh(data_dir, mesh):
    """The mesh of the same data directory started again, after the one above stopped."""
    assert mesh[2].poll() is not None
    with running_mesh(data_dir) as running:
        yield running


def test_the_next_start_has_each_record_once(next_mesh):
    _state, env, _process, _log = next_mesh
    query = (
        f"SELECT count() AS n, uniqExact(message_id) AS ids FROM crypto.market_tickers "
        f"WHERE symbol = '{DRAIN_SYMBOL}'"
    )
    result = crypto_mesh(env, "sql", query, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"n": DRAIN_RECORDS, "ids": DRAIN_RECORDS}]


async def test_a_process_crashing_again_and_again_is_given_up_on_and_the_mesh_stops_saying_why(next_mesh):
    state, _env, process, log_path = next_mesh
    data_dir = Path(state["data_dir"])
    gave_up = "auth exited 5 times within 60s (last rc=-9): giving up on it"
    kills = 0
    while gave_up not in log_path.read_text() and kills < 10:
        entry = await eventually(
            lambda: (
                (e := read_processes(data_dir).get("auth", {})).get("pid") and "returncode" not in e and e
            ),
            timeout_s=30,
            what="auth running",
        )
        killed = entry["pid"]
        os.kill(killed, signal.SIGKILL)
        kills += 1
        # Restarted (a new pid), or given up on (the mesh stops; processes.json goes with it).
        await eventually(
            lambda killed=killed: (
                gave_up in log_path.read_text()
                or read_processes(data_dir).get("auth", {}).get("pid") not in (None, killed)
            ),
            timeout_s=30,
            what="auth restarted or given up on",
        )
    assert await asyncio.to_thread(process.wait, 60) == 1
    assert kills == 5
    output = log_path.read_text()
    assert f"{gave_up}; stopping the mesh" in output
    assert (
        output.rstrip().splitlines()[-1] == f"Error: the mesh stopped: {gave_up} (see `crypto-mesh logs`; "
        "its last lines are above)"
    )
    assert not (data_dir / "mesh.json").exists()
