"""Benchmark of one BFF process: WebSocket fan-out to N authenticated clients, and GET /v2/user/profile.

What runs, all on 127.0.0.1 and all started and stopped by this script:

- an embedded PostgreSQL and Redis (as the tests use them) and the real auth server (the BFF fetches its
  JWK Set from it); a small aiohttp stand-in answers the aggregator's follower routes with 200;
- ONE BFF process (``python -m profile_bff``), measured with psutil: resident memory before and after the
  clients connect (→ memory per connection) and CPU time during the price phase (→ CPU %, where 100 % is one
  core); with ``--bff-workers N`` (``BFF_WORKERS``), that BFF is a supervisor and N worker processes sharing
  its port with ``SO_REUSEPORT`` (crypto_mesh/workers.py), and every figure of "the BFF" is the sum over all
  of them (:class:`ProcessTree`), with how the kernel spread the clients over the workers. The per-message
  cost is the BFF's CPU time (user + system, all workers) in the price phase over the profile messages the
  clients received meanwhile, and the price push's p99 is printed beside :data:`FANOUT_P99_GOAL_MS`;
- ``--workers`` client processes holding ``--clients`` WebSocket connections in total. Each client is a
  user of its own holding three coins (``--symbols`` are dealt round-robin, three per user), authenticated
  with an access token signed by auth's key. With the default three symbols every client holds all of them,
  so every price is pushed to every client in one fan-out: the worst case for latency. More symbols spread
  the same message rate over smaller fan-outs (ten symbols: each price reaches 3 in 10 clients);
- a publisher (this process) that, for ``--seconds``, publishes one SecondStat per symbol per second on Redis
  (key ``price:<s>`` set, then channel ``<s>``) on an absolute schedule, so that a saturated machine does not
  lower the offered load (a late round trip is followed by a shorter pause, not a full one); the intended
  and the achieved rate are printed side by side, with how far behind schedule the round trips started. The
  rate is the recorded one, since the shipped recording
  ``btcusdt_ethusdt_trade_2024-08-08.jsonl.gz`` yields 1255 SecondStats in 650 s for 2 symbols, 0.96 per
  symbol per second. ``--publish spread`` (the default) spreads the symbols evenly over the second, as
  symbols whose windows close on their next trade come at different moments (in that recording the two
  symbols' SecondStats of one second close a median 168 ms apart); it is the hard case, since no price
  shares a message with another. ``--publish together`` publishes all symbols of a second in one pipelined
  round trip, as the aggregator does for the windows its clock closes in one tick. Each SecondStat's ``t`` is its publish
  time in Unix ms, so a client computes the latency of each price it receives as its receive time minus
  that price's ``PriceTimes`` entry (both wall clock, same machine; ms resolution). A price counts when its
  ``PriceTimes`` entry differs from the one in the socket's previous message, so a price that waited for
  others (behind a running fan-out, or in a coalescing window if ``BFF_WS_COALESCE_MS`` sets one) is measured
  from its own publish, not the latest one's.

All clients connect from 127.0.0.1, so the per-address ceilings of the BFF (connections and WebSocket upgrades
per address, docs/SECURITY.md "Ceilings") are set above ``--clients`` for the BFF process; a ``BFF_*``
variable in the environment still wins. Each client is a user of its own, so the per-user socket cap (10)
holds as it is.

Clients on the same machine cost the BFF more than remote ones would: over 127.0.0.1 the kernel runs the
receiving side of each message (TCP receive, socket lookup, waking the client process) inside the BFF's
write, which a perf profile of the price phase put at about a fifth of the BFF's CPU; and the clients take
their share of the two CPUs while a fan-out runs.

With ``--alert-users N`` (e.g. 10000) the BFF also runs its alert evaluator, on an embedded Kafka-protocol
broker (Tansu): users 1..N (as many more as there are clients) get the 5 rules each of
``benchmarks/bench_alerts.py`` on the three symbols (``--symbols`` must be those), stored in PostgreSQL before the
price phase; the publisher's prices are then a seeded random walk of ±0.05 % a second from each symbol's start
price (so that rules cross), and each SecondStat is written to Kafka ``binance.second`` (one partition) at the
moment it is published on Redis, as the aggregator does when a second closes. A client measures each alert it
receives (users 1..``--clients`` hold sockets) as its receive time minus the alert's ``second``, which is that
SecondStat's ``t``, its publish time: the latency from a second's close to the alert on the socket, printed
beside the plain price push of the same run (p99 and the ratio of the two p99s), with the SecondStats and rule
evaluations the evaluator did and the firings it stored (its ``/metrics``).

Then, once the sockets are closed, ``--http-seconds`` of ``GET /healthz`` and ``--http-seconds`` of
``GET /v2/user/profile`` on the same BFF process, each from ``--http-concurrency`` concurrent requests, in
``--http-rounds`` alternating rounds (so that a change of the machine's load from other work weighs on both
routes alike): the BFF's CPU time per request of each over all rounds (psutil, user + system) and their ratio.
Prices go on being published, one SecondStat per symbol a second, as they are in production, and with one
BFF worker its ``bff_price_reads_total`` says where the profile reads took their prices from: the
subscription (:meth:`profile_bff.connections.ConnectionManager.latest_prices`) or Redis's keys.
``/healthz`` checks no token and reads no database, so it is the floor of what a request costs the process
(aiohttp, the middlewares, the loop); the goal (issue 18) is a profile at most ``PROFILE_COST_GOAL`` times
that. Its latency is measured where it matters, during the price phase: ``--profile-rate`` ``GET
/v2/user/profile`` a second (by default each client's user once a minute, as docs/CAPACITY.md models them),
sent on an absolute schedule (open loop: a slow answer does not delay the next request), each with the next
user's token; their p50/p99 are printed beside the goal ``PROFILE_P99_GOAL_MS``.

Printed: the conditions (CPU count, load average, parameters), clients connected, the publisher's intended
and achieved rates, latency p50/p99/max over every price received during the price phase, messages and
prices delivered vs. the number of prices a client would get without conflation, BFF memory per connection,
BFF CPU (user and system) and the client processes' CPU, the profile's latency during the price phase, and for
each REST route requests/s, p50/p99 and the BFF's CPU per request, with the ratio.
The whole run stops by itself; the defaults take under three minutes.

    .venv/bin/python benchmarks/bench_bff.py --clients 10000 --workers 2 --seconds 20
    .venv/bin/python benchmarks/bench_bff.py --clients 10000 --bff-workers 2 --seconds 20
    .venv/bin/python benchmarks/bench_bff.py --clients 2000 --alert-users 10000 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import psutil
from aiokafka import AIOKafkaProducer
import redis.asyncio as aioredis
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine
from yarl import URL

from aggregator.secondstat import SecondStat
from auth.server import start as start_auth
from auth.settings import AuthSettings
from auth.tokens import TokenIssuer, generate_private_key_pem, load_private_key
from crypto_mesh import jsonutil
from crypto_mesh.kafka import SECOND_TOPIC, ensure_topics
from crypto_mesh.metrics import parse_samples
from launcher.embedded import EmbeddedPostgres, ManagedProcess, tansu_command
from launcher.mesh import embedded_redis, ensure_mesh_pki
from crypto_mesh.netutil import free_port
from crypto_mesh.pki import AUTH, PROFILE_BFF
from crypto_mesh.secrets import ensure_secret, random_token, secrets_dir
from crypto_mesh.servicecreds import bearer_header, bearer_token_middleware, read_tokens
from profile_bff.alertstore import alert_rules

from bench_alerts import START_MS, SYMBOLS as ALERT_SYMBOLS, make_rules, make_seconds

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SYMBOLS = "btcusdt,ethusdt,dotusdt"
#: Goal (issue 18): BFF CPU per ``GET /v2/user/profile`` at most this many times that of ``GET /healthz``.
PROFILE_COST_GOAL = 3.0
#: Goal (issue 18): p99 of ``GET /v2/user/profile`` (ms) while the sockets receive prices.
PROFILE_P99_GOAL_MS = 50.0
#: Goal (issue 18): p99 of the price push (Redis publish -> client receipt) with 10,000 clients and 2 BFF
#: workers on this machine, the clients on it too (ms).
FANOUT_P99_GOAL_MS = 250.0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- client worker processes ----------------------------------------------------------------------------------


def client_worker(url: str, tokens: list[str], ready, go, stop, results) -> None:
    """Open one socket per token (at most 100 handshakes at a time), report ``ready`` with the number
    connected, then record the latency (ms) of every message whose ``PricesAt`` is set until ``stop``."""
    asyncio.run(_client_main(url, tokens, ready, go, stop, results))


class _Recorder:
    """What one client process measured; ``recording`` mirrors the ``go`` event (polled, not per message).

    ``latencies`` (ms) has one entry per new price received, ``messages`` counts profile messages,
    ``alert_latencies`` (ms) has one entry per alert received (its receipt minus its ``second``)."""

    def __init__(self) -> None:
        self.recording = False
        self.latencies: list[int] = []
        self.alert_latencies: list[int] = []
        self.messages = 0
        self._parsed: dict[str, int] = {}

    def record(self, payload: bytes, seen: dict[str, str]) -> None:
        """Record the prices of ``payload`` whose ``PriceTimes`` differ from ``seen`` (the socket's previous
        message, updated here), or the latency of an alert."""
        message = jsonutil.loads(payload)
        received_ms = time.time_ns() // 1_000_000
        if message.get("type") == "alert":
            if self.recording:
                self.alert_latencies.append(received_ms - message["second"])
            return
        times = message["Coins"]["PriceTimes"]
        new = [stamp for symbol, stamp in times.items() if seen.get(symbol) != stamp]
        seen.update(times)
        if not self.recording or not new:
            return
        self.messages += 1
        for stamp in new:
            sent_ms = self._parsed.get(stamp)
            if sent_ms is None:
                sent_ms = self._parsed[stamp] = round(datetime.fromisoformat(stamp).timestamp() * 1000)
                if len(self._parsed) > 10_000:
                    self._parsed.clear()
            self.latencies.append(received_ms - sent_ms)


class _ProfileSocket(asyncio.Protocol):
    """A minimal RFC 6455 client: one handshake, then server frames parsed in ``data_received`` with no task
    per socket, so that the client processes cost as little CPU as possible next to the BFF they measure.
    Pings are answered (the BFF pings every 20 s); text frames go to the recorder."""

    def __init__(self, request: bytes, recorder: _Recorder) -> None:
        self._request = request
        self._recorder = recorder
        self._buffer = bytearray()
        self._seen: dict[str, str] = {}
        self._upgraded = False
        self.handshake: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.handshake.done():
            self.handshake.set_result(False)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            ok = self._buffer.startswith(b"HTTP/1.1 101")
            del self._buffer[: end + 4]
            self._upgraded = self.open = ok
            self.handshake.set_result(ok)
            if not ok:
                self.transport.close()
                return
        self._frames()

    def _frames(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            if opcode == 0x1:
                self._recorder.record(payload, self._seen)
            elif opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                self.open = False
                self.transport.close()
                return

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        if self.open:
            self._send(0x8, (1000).to_bytes(2, "big"))
        self.transport.close()


async def _client_main(url, tokens, ready, go, stop, results) -> None:
    recorder = _Recorder()
    target = URL(url)
    gate = asyncio.Semaphore(100)
    loop = asyncio.get_running_loop()

    async def open_one(token: str) -> _ProfileSocket | None:
        request = (
            f"GET {target.path_qs} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
        async with gate:
            try:
                _, protocol = await loop.create_connection(
                    lambda: _ProfileSocket(request, recorder), target.host, target.port
                )
                if await asyncio.wait_for(protocol.handshake, 30):
                    return protocol
            except (OSError, TimeoutError):
                pass
            return None

    opened = await asyncio.gather(*(open_one(token) for token in tokens))
    sockets = [protocol for protocol in opened if protocol is not None]
    ready.put((len(sockets), len(tokens) - len(sockets)))
    while not stop.is_set():
        recorder.recording = go.is_set()
        await asyncio.sleep(0.05)
    recorder.recording = False
    results.put(
        (
            recorder.latencies,
            recorder.messages,
            sum(1 for protocol in sockets if protocol.open),
            recorder.alert_latencies,
        )
    )
    for protocol in sockets:
        protocol.close()
    await asyncio.sleep(0.5)


# -- the orchestrator -----------------------------------------------------------------------------------------


async def aggregator_stand_in(token_file: Path) -> tuple[web.AppRunner, str]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"tracked": True})

    app = web.Application(middlewares=[bearer_token_middleware(read_tokens(token_file), realm="aggregator")])
    app.router.add_put("/v1/followers/{follower}", ok)
    app.router.add_put("/v1/symbols/{symbol}/followers/{follower}", ok)
    app.router.add_delete("/v1/symbols/{symbol}/followers/{follower}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@dataclass
class CpuTimes:
    """CPU seconds in user and system mode."""

    user: float
    system: float


@dataclass
class MemoryInfo:
    """Resident memory (bytes)."""

    rss: int


class ProcessTree:
    """The BFF as psutil sees it, supervisor and workers together: :meth:`cpu_times` and :meth:`memory_info`
    add up the process ``pid`` and its descendants alive now (with one worker, the one process)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def processes(self) -> list[psutil.Process]:
        """The supervisor and its workers (or the one BFF process)."""
        return [self.root, *self.root.children(recursive=True)]

    def cpu_times(self) -> CpuTimes:
        times = [process.cpu_times() for process in self.processes()]
        return CpuTimes(sum(t.user for t in times), sum(t.system for t in times))

    def memory_info(self) -> MemoryInfo:
        return MemoryInfo(sum(process.memory_info().rss for process in self.processes()))

    def sockets_per_worker(self, port: int) -> list[int]:
        """Established connections on ``port`` of each process that holds any, largest first: how the kernel
        spread the clients over the workers."""
        counts = []
        for process in self.processes():
            held = sum(
                1
                for connection in process.net_connections(kind="tcp")
                if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
            )
            if held:
                counts.append(held)
        return sorted(counts, reverse=True)

    async def wait_listening(self, port: int, workers: int, timeout_s: float = 60.0) -> None:
        """Wait until ``workers`` worker processes listen on ``port`` (a client that connects earlier can only
        reach the workers already listening)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            listening = 0
            for process in self.root.children():
                try:
                    connections = process.net_connections(kind="tcp")
                except psutil.Error:
                    continue
                listening += any(
                    c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections
                )
            if listening >= workers:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"fewer than {workers} BFF workers listen on {port}")


def start_bff_process(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``python -m profile_bff`` with ``env``, its output in ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "profile_bff"], env=env, cwd=ROOT, stdout=log, stderr=log
        )


def stop_bff_process(process: subprocess.Popen) -> None:
    """SIGTERM (the BFF closes its sockets with 1001), SIGKILL after 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the BFF exited with {process.returncode}")
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the BFF never became healthy")


async def seed_users(database_url: str, count: int, symbols: list[str]) -> None:
    """Users 1..count, each holding three symbols dealt round-robin from ``symbols``, quantity 1.5."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO profiles (id, name) SELECT i, 'bench' || i FROM generate_series(1, :n) i"
                ),
                {"n": count},
            )
            rows = [
                {"u": user_id, "s": symbols[(user_id + k) % len(symbols)]}
                for user_id in range(1, count + 1)
                for k in range(3)
            ]
            await conn.execute(
                sa.text("INSERT INTO coins (user_id, symbol, quantity) VALUES (:u, :s, 1.5)"), rows
            )
    finally:
        await engine.dispose()


async def seed_alert_rules(database_url: str, users: int, symbols: list[str]) -> int:
    """The 5 rules of ``bench_alerts.make_rules`` for users 1..``users``, whose coins are those of
    :func:`seed_users` (1.5 of each of ``symbols``, which are ``bench_alerts.SYMBOLS``); returns how many."""
    holdings = {user: {symbol: Decimal("1.5") for symbol in symbols} for user in range(1, users + 1)}
    rules, _ = make_rules(users, random.Random(20261130), holdings)
    rows = [
        {
            "user_id": rule.user_id,
            "kind": rule.spec.kind,
            "symbol": rule.spec.symbol,
            "threshold": rule.spec.threshold,
            "window_s": rule.spec.window_s,
            "repeat": rule.spec.repeat,
            "cooldown_s": rule.spec.cooldown_s,
            "paused": False,
        }
        for rule in rules
    ]
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.insert(alert_rules), rows)
    finally:
        await engine.dispose()
    return len(rows)


async def bff_metrics(url: str, token_file: Path) -> dict[str, float]:
    """The BFF's ``/metrics`` samples at ``url``."""
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=bearer_header(read_tokens(token_file)[0])) as resp:
            resp.raise_for_status()
            return parse_samples(await resp.text())


async def price_reads(url: str, token_file: Path) -> dict[str, float]:
    """``bff_price_reads_total`` by source (``subscription``, ``redis``) from the BFF's ``/metrics``."""
    samples = await bff_metrics(url, token_file)
    return {
        source: samples[f"bff_price_reads_total{{source={source}}}"] for source in ("subscription", "redis")
    }


async def wait_evaluating(url: str, token_file: Path, rules: int, timeout_s: float = 60.0) -> None:
    """Wait until the BFF's alert evaluator holds the SecondStat partition and has loaded ``rules`` rules."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            samples = await bff_metrics(url, token_file)
            if samples["bff_alert_partitions"] == 1 and samples["bff_alert_rules"] == rules:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the alert evaluator never held the partition with every rule loaded")


@dataclass
class Published:
    """What :func:`publish_prices` did: SecondStats published, over how long (s: the seconds the schedule
    covers, or longer if the last round trip ended after them), and how far behind its schedule each round
    trip started (s, one entry per round trip)."""

    count: int = 0
    seconds: float = 0.0
    behind: list[float] = field(default_factory=list)


async def publish_prices(
    redis_url: str, symbols: list[str], seconds: float, together: bool, kafka: AIOKafkaProducer | None = None
) -> Published:
    """One SecondStat per symbol per second for ``seconds``, each in a pipelined round trip of its own spread
    evenly over the second or (``together``) all of a second in one pipelined round trip at its start, as the
    aggregator publishes the windows its clock closes in one tick.

    The round trips keep an absolute schedule (slot ``k`` of a second at ``start + second + k / slots``): a
    round trip that starts late is not followed by a longer pause, so a saturated machine does not lower the
    offered load; how far behind each one started is recorded, and a slot that is a whole second behind is
    still sent (it is not skipped), so the count published is the rate the schedule asked for unless the
    publisher could not keep up at all.

    With ``kafka``, each SecondStat is also written to ``binance.second`` just before it is published on
    Redis, and the prices are ``bench_alerts.make_seconds``'s random walk (else a price rising by 1 a second)."""
    redis = aioredis.Redis.from_url(redis_url)
    out = Published()
    numbered = list(enumerate(symbols))
    batches = [numbered] if together else [[pair] for pair in numbered]
    walk = {
        (symbol, (second - START_MS) // 1000): price
        for symbol, second, price in (make_seconds(int(seconds) + 2, random.Random(20261201)) if kafka else [])
    }
    try:
        start = time.monotonic()
        ticks = max(1, round(seconds))
        for tick in range(ticks):
            for slot, batch in enumerate(batches):
                intended = start + tick + slot / len(batches)
                await asyncio.sleep(max(0.0, intended - time.monotonic()))
                out.behind.append(time.monotonic() - intended)
                now_ms = time.time_ns() // 1_000_000
                async with redis.pipeline(transaction=False) as pipe:
                    for index, symbol in batch:
                        price = walk[(symbol, tick)] if kafka else Decimal(f"{60000 + tick}.{index}")
                        stat = jsonutil.dumps(
                            SecondStat(
                                symbol, now_ms, price, price, price, price, Decimal(1), price, 1, tick
                            ).to_json()
                        )
                        if kafka is not None:
                            await kafka.send(SECOND_TOPIC, key=symbol.encode(), value=stat)
                        pipe.set(f"price:{symbol}", stat)
                        pipe.publish(symbol, stat)
                    await pipe.execute()
                out.count += len(batch)
        out.seconds = max(float(ticks), time.monotonic() - start)
    finally:
        await redis.aclose()
    return out


@dataclass
class RestLoad:
    """What :func:`rest_load` measured: requests answered, their latencies (ms, sorted), answers other than
    200, the seconds the load ran, and the BFF process's CPU time (user + system, s) over them."""

    requests: int
    latencies: list[float]
    errors: int
    seconds: float
    cpu_s: float

    def __add__(self, other: RestLoad) -> RestLoad:
        """Two loads of the same route as one (their requests, latencies, errors, seconds and CPU summed)."""
        return RestLoad(
            self.requests + other.requests,
            sorted(self.latencies + other.latencies),
            self.errors + other.errors,
            self.seconds + other.seconds,
            self.cpu_s + other.cpu_s,
        )

    @property
    def cpu_ms_per_request(self) -> float:
        """BFF CPU time per request answered, ms (one core's ms)."""
        return 1000 * self.cpu_s / max(self.requests, 1)

    def describe(self) -> str:
        """One line: requests/s, p50, p99, non-200 answers, BFF CPU per request and as % of one core."""
        return (
            f"{self.requests / self.seconds:.0f} requests/s, p50 {percentile(self.latencies, 0.5):.1f} ms, "
            f"p99 {percentile(self.latencies, 0.99):.1f} ms, non-200: {self.errors}; BFF CPU "
            f"{self.cpu_ms_per_request:.3f} ms per request "
            f"({100 * self.cpu_s / self.seconds:.0f} % of one core)"
        )


async def profile_probe(url: str, tokens: list[str], rate: float, seconds: float) -> RestLoad:
    """``GET /v2/user/profile`` ``rate`` times a second for ``seconds`` on an absolute schedule (open loop: each
    request is sent at its time, however long the ones before it take), with the tokens of the users in turn;
    the latency of each (ms, sorted) and the answers other than 200. Its ``cpu_s`` is 0: the BFF's CPU then is
    the price phase's."""
    latencies: list[float] = []
    errors = 0
    count = max(1, round(rate * seconds)) if rate > 0 else 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(index: int) -> None:
            nonlocal errors
            started = time.perf_counter()
            headers = {"Authorization": f"Bearer {tokens[index % len(tokens)]}"}
            try:
                async with http.get(f"{url}/v2/user/profile", headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)

        start = time.monotonic()
        requests = []
        for index in range(count):
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            requests.append(asyncio.create_task(one(index)))
        await asyncio.gather(*requests)
        elapsed = time.monotonic() - start
    return RestLoad(len(latencies), sorted(latencies), errors, elapsed, 0.0)


async def rest_load(
    url: str, path: str, tokens: list[str], concurrency: int, seconds: float, bff: psutil.Process
) -> RestLoad:
    """``concurrency`` closed-loop clients calling ``GET path`` for ``seconds``, each request with the access
    token of the next user in turn, over kept-alive connections; measures the BFF's CPU time (``bff``) over
    the same span. A closed loop is right here: what is measured is the BFF's cost per request while it is
    kept busy, not a latency under a set rate."""
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def loop(worker: int) -> None:
            nonlocal errors
            n = worker
            while time.monotonic() < deadline:
                token = tokens[n % len(tokens)]
                n += concurrency
                started = time.perf_counter()
                async with http.get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        cpu_before = bff.cpu_times()
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
        cpu_after = bff.cpu_times()
    cpu_s = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return RestLoad(len(latencies), sorted(latencies), errors, elapsed, cpu_s)


async def main(args: argparse.Namespace) -> None:
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if len(symbols) < 3:
        raise SystemExit("--symbols needs at least three symbols (each client holds three)")
    if args.alert_users and args.bff_workers > 1:
        raise SystemExit("--alert-users reads one BFF's /metrics: run it with --bff-workers 1")
    if args.alert_users and symbols != list(ALERT_SYMBOLS):
        raise SystemExit(f"--alert-users needs --symbols {','.join(ALERT_SYMBOLS)} (the rules' symbols)")
    work = Path(tempfile.mkdtemp(prefix="bench-bff-"))
    postgres = EmbeddedPostgres(work / "pg")
    redis_port = free_port()
    redis_argv, redis_urls = embedded_redis(work, redis_port)
    redis_process = ManagedProcess(
        "redis", redis_argv, redis_port, work / "redis.log"
    )
    await asyncio.to_thread(postgres.start)
    await asyncio.to_thread(redis_process.start)
    kafka_process = kafka = None
    alert_env: dict[str, str] = {}
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    if args.alert_users:
        kafka_port = free_port()
        kafka_process = ManagedProcess("tansu", tansu_command(kafka_port), kafka_port, work / "tansu.log")
        await asyncio.to_thread(kafka_process.start)
        bootstrap = f"127.0.0.1:{kafka_port}"
        await ensure_topics(bootstrap, {SECOND_TOPIC: 1})
        kafka = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks=1)
        await kafka.start()
        alert_env = {"BFF_KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    # The BFF reads as its Redis user; the prices are published as the aggregator's.
    redis_url = redis_urls["aggregator"]
    key_file = work / "jwt.pem"
    key_file.write_bytes(generate_private_key_pem())
    tls = ensure_mesh_pki(work)
    auth = await start_auth(
        AuthSettings(
            port=0,
            database_url=postgres.url("auth"),
            jwt_private_key_file=key_file,
            bcrypt_cost=4,
            **tls[AUTH].settings(),
        )
    )
    issuer = TokenIssuer(
        load_private_key(key_file), issuer="crypto-mesh-auth", audience="crypto-mesh", ttl_s=3600
    )
    aggregator_token = ensure_secret(secrets_dir(work / "secrets") / "aggregator_api_token", random_token)
    aggregator_runner, aggregator_url = await aggregator_stand_in(aggregator_token)
    bff_port = free_port()
    env = {
        **os.environ,
        "BFF_PORT": str(bff_port),
        "BFF_DATABASE_URL": postgres.url("profile"),
        "BFF_REDIS_URL": redis_urls["bff"],
        "BFF_AUTH_TARGET": f"127.0.0.1:{auth.port}",
        "BFF_AGGREGATOR_URL": aggregator_url,
        "BFF_AGGREGATOR_TOKEN_FILE": str(aggregator_token),
        # No ETL here: the candle routes are not measured by this benchmark.
        "BFF_ETL_URL": f"http://127.0.0.1:{free_port()}",
        "BFF_ETL_TOKEN_FILE": str(aggregator_token),
        "BFF_LOG_LEVEL": "WARNING",
        # Every client connects from 127.0.0.1: the per-address ceilings (256 connections, 60 upgrades a
        # minute by default) are lifted to let one address stand for the whole crowd.
        "BFF_MAX_CONNECTIONS_PER_ADDRESS": str(args.clients + 1000),
        "BFF_WS_UPGRADE_RATE_PER_ADDRESS": f"{args.clients * 10}/minute",
        "BFF_METRICS_TOKEN_FILE": str(aggregator_token),
        **alert_env,
        # Where the profile reads take their prices (bff_price_reads_total): one worker's /metrics.
        **({"BFF_METRICS_PORT": str(metrics_port)} if args.bff_workers == 1 else {}),
        "BFF_WORKERS": str(args.bff_workers),
        **tls[PROFILE_BFF].environment("BFF_"),
        **{key: value for key, value in os.environ.items() if key.startswith("BFF_")},
    }
    bff = await asyncio.to_thread(start_bff_process, env, work / "bff.log")
    url = f"http://127.0.0.1:{bff_port}"
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    go, stop = context.Event(), context.Event()
    workers = []
    try:
        await wait_healthy(url, bff)
        if args.bff_workers > 1:
            await ProcessTree(bff.pid).wait_listening(bff_port, args.bff_workers)
        await seed_users(postgres.url("profile"), max(args.clients, args.alert_users), symbols)
        rule_count = 0
        if args.alert_users:
            rule_count = await seed_alert_rules(postgres.url("profile"), args.alert_users, symbols)
            await wait_evaluating(metrics_url, aggregator_token, rule_count)
            evaluator_before = await bff_metrics(metrics_url, aggregator_token)
        now = int(time.time())
        tokens = [issuer.issue(user_id, f"bench{user_id}", now)[0] for user_id in range(1, args.clients + 1)]
        bff_process = ProcessTree(bff.pid)
        rss_before = bff_process.memory_info().rss

        share = -(-len(tokens) // args.workers)
        connect_started = time.monotonic()
        for index in range(args.workers):
            chunk = tokens[index * share : (index + 1) * share]
            process = context.Process(
                target=client_worker, args=(f"{url}/v2/user/profile/ws", chunk, ready, go, stop, results)
            )
            process.start()
            workers.append(process)
        connected = failed = 0
        for _ in workers:
            count, failures = await asyncio.to_thread(ready.get, True, args.connect_timeout)
            connected += count
            failed += failures
        connect_s = time.monotonic() - connect_started
        await asyncio.sleep(1.0)
        rss_after = bff_process.memory_info().rss
        spread = bff_process.sockets_per_worker(bff_port)

        cpu_before = bff_process.cpu_times()
        client_processes = [psutil.Process(process.pid) for process in workers]
        clients_before = [process.cpu_times() for process in client_processes]
        go.set()
        await asyncio.sleep(0.5)  # the clients poll ``go`` every 50 ms
        started = time.monotonic()
        rate = args.clients / 60 if args.profile_rate is None else args.profile_rate
        publishing, probe = await asyncio.gather(
            publish_prices(redis_url, symbols, args.seconds, args.publish == "together", kafka),
            profile_probe(url, tokens, rate, args.seconds),
        )
        published = publishing.count
        await asyncio.sleep(1.0)  # the last messages in flight
        if args.alert_users:
            evaluator_after = await bff_metrics(metrics_url, aggregator_token)
        elapsed = time.monotonic() - started
        cpu_after = bff_process.cpu_times()
        clients_after = [process.cpu_times() for process in client_processes]
        stop.set()
        latencies: list[int] = []
        alert_latencies: list[int] = []
        messages = still_open = 0
        for _ in workers:
            values, received, open_at_end, alert_values = await asyncio.to_thread(results.get, True, 60)
            latencies.extend(values)
            messages += received
            still_open += open_at_end
            alert_latencies.extend(alert_values)
        latencies.sort()
        alert_latencies.sort()
        # The REST phase starts once every client socket is closed and the BFF has released them.
        for process in workers:
            await asyncio.to_thread(process.join, 60)
        await asyncio.sleep(2.0)
        cpu_s = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        clients_cpu_s = sum(
            (after.user - before.user) + (after.system - before.system)
            for before, after in zip(clients_before, clients_after, strict=True)
        )

        # The same process, one route after the other, under the same load: /healthz (no token checked, no
        # database, no Redis) is the floor of what any route costs. Prices keep coming meanwhile.
        rest: dict[str, RestLoad] = {}
        reads_before = await price_reads(metrics_url, aggregator_token) if args.bff_workers == 1 else {}
        prices_meanwhile = asyncio.create_task(
            publish_prices(redis_url, symbols, 2 * args.http_seconds + 10, args.publish == "together")
        )
        try:
            for _ in range(args.http_rounds):
                for path in ("/healthz", "/v2/user/profile"):
                    seconds = args.http_seconds / args.http_rounds
                    load = await rest_load(url, path, tokens, args.http_concurrency, seconds, bff_process)
                    rest[path] = rest[path] + load if path in rest else load
        finally:
            prices_meanwhile.cancel()
            await asyncio.gather(prices_meanwhile, return_exceptions=True)
        reads_after = await price_reads(metrics_url, aggregator_token) if args.bff_workers == 1 else {}

        # Without conflation each client would get one message per price change of each of its 3 coins.
        expected = published * 3 / len(symbols) * connected
        print(
            "== bench_bff: one BFF process =="
            if args.bff_workers == 1
            else f"== bench_bff: one BFF, {args.bff_workers} worker processes on one port (BFF_WORKERS) =="
        )
        print(
            f"machine: {os.cpu_count()} CPUs, load average before run {args.load_before}, "
            f"python {sys.version.split()[0]}, ulimit -n {args.nofile}"
        )
        print(
            f"parameters: clients={args.clients} workers={args.workers} symbols={len(symbols)} "
            f"(each client holds 3), rate=1 SecondStat/symbol/s, publish={args.publish}, "
            f"seconds={args.seconds}, BFF_WS_COALESCE_MS={env.get('BFF_WS_COALESCE_MS', 'default')}"
        )
        print(
            f"clients held: {connected} connected ({failed} failed) in {connect_s:.1f} s; "
            f"{still_open} still open after the price phase"
        )
        if args.bff_workers > 1:
            print(f"sockets per BFF worker (the kernel's SO_REUSEPORT spread): {spread}")
        print(
            f"memory: BFF RSS {rss_before / 2**20:.1f} MiB idle -> {rss_after / 2**20:.1f} MiB with clients = "
            f"{(rss_after - rss_before) / max(connected, 1) / 1024:.1f} KiB per connection"
        )
        behind = sorted(publishing.behind)
        print(
            f"publisher: {len(symbols)} SecondStats/s intended, {published / publishing.seconds:.2f}/s "
            f"achieved ({published} in {publishing.seconds:.1f} s, absolute schedule); round trips started "
            f"behind schedule p50 {1000 * percentile(behind, 0.5):.1f} ms, "
            f"p99 {1000 * percentile(behind, 0.99):.1f} ms, "
            f"max {1000 * behind[-1]:.1f} ms"
        )
        print(
            f"prices published: {published} over {elapsed:.1f} s; messages received: {messages}, carrying "
            f"{len(latencies)} new prices ({100 * len(latencies) / max(expected, 1):.1f} % of every held price "
            f"change; the rest conflated)"
        )
        print(
            f"latency Redis publish -> client receipt, per price (ms): p50 {percentile(latencies, 0.5):.0f}, "
            f"p99 {percentile(latencies, 0.99):.0f}, max {latencies[-1] if latencies else float('nan')}"
        )
        if args.alert_users:
            evaluated = evaluator_after["bff_alert_records_total"] - evaluator_before["bff_alert_records_total"]
            fired = evaluator_after["bff_alert_firings_total"] - evaluator_before["bff_alert_firings_total"]
            per_stat = rule_count / len(symbols) * 4 / 5 + args.alert_users  # symbol rules + portfolios
            price_p99, alert_p99 = percentile(latencies, 0.99), percentile(alert_latencies, 0.99)
            print(
                f"alert evaluator: {rule_count} rules of {args.alert_users} users; {evaluated:.0f} of {published} "
                f"SecondStats evaluated = {evaluated * per_stat / elapsed:,.0f} rule evaluations/s; "
                f"{fired:.0f} firings stored"
            )
            print(
                f"latency SecondStat published (Kafka + Redis) -> alert on the socket (ms), over "
                f"{len(alert_latencies)} alerts received: p50 {percentile(alert_latencies, 0.5):.0f}, "
                f"p99 {alert_p99:.0f}, max {alert_latencies[-1] if alert_latencies else float('nan')}"
            )
            print(
                f"alert p99 / price push p99, same run: {alert_p99:.0f} / {price_p99:.0f} ms = "
                f"{alert_p99 / max(price_p99, 1):.1f}x"
            )
        print(
            f"BFF CPU during the price phase: {100 * cpu_s / elapsed:.0f} % of one core "
            f"(user {100 * (cpu_after.user - cpu_before.user) / elapsed:.0f} %, system "
            f"{100 * (cpu_after.system - cpu_before.system) / elapsed:.0f} %); client processes together: "
            f"{100 * clients_cpu_s / elapsed:.0f} %"
        )
        if probe.requests or probe.errors:
            probe_p99 = percentile(probe.latencies, 0.99)
            print(
                f"GET /v2/user/profile during the price phase, {rate:.1f} requests/s open loop: "
                f"{probe.requests} answered, p50 {percentile(probe.latencies, 0.5):.1f} ms, p99 {probe_p99:.1f} ms, "
                f"max {probe.latencies[-1] if probe.latencies else float('nan'):.1f} ms, non-200: {probe.errors} "
                f"(goal p99 < {PROFILE_P99_GOAL_MS:g} ms): {'met' if probe_p99 < PROFILE_P99_GOAL_MS else 'NOT met'}"
            )
        print(
            f"per-message cost: {1e6 * cpu_s / max(messages, 1):.1f} µs of BFF CPU (user + system, "
            f"{args.bff_workers} worker{'s' if args.bff_workers > 1 else ''}) per profile message delivered "
            f"({messages} messages, {cpu_s:.2f} CPU s); load average now "
            f"{' '.join(f'{value:.2f}' for value in os.getloadavg())}"
        )
        price_p99 = percentile(latencies, 0.99)
        plural = "s" if args.bff_workers > 1 else ""
        print(
            f"price push p99 {price_p99:.0f} ms with {connected} clients and {args.bff_workers} BFF "
            f"worker{plural} (goal < {FANOUT_P99_GOAL_MS:g} ms at 10,000 clients and 2 workers): "
            f"{'met' if price_p99 < FANOUT_P99_GOAL_MS else 'NOT met'}"
        )
        print(
            f"REST, concurrency {args.http_concurrency}, {args.http_seconds} s per route, "
            f"one route at a time, in {args.http_rounds} alternating rounds:"
        )
        for path, load in rest.items():
            print(f"  GET {path}: {load.describe()}")
        if reads_after:
            sources = ", ".join(
                f"{reads_after[source] - reads_before[source]:.0f} {where}"
                for source, where in (("subscription", "from the subscription"), ("redis", "from Redis's keys"))
            )
            print(f"  prices of the REST phase's profile reads (bff_price_reads_total): {sources}")
        ratio = rest["/v2/user/profile"].cpu_ms_per_request / rest["/healthz"].cpu_ms_per_request
        print(
            f"GET /v2/user/profile costs {ratio:.1f} x GET /healthz in BFF CPU per request "
            f"(goal <= {PROFILE_COST_GOAL:g} x): {'met' if ratio <= PROFILE_COST_GOAL else 'NOT met'}"
        )
        if latencies:
            print(f"(mean latency {statistics.fmean(latencies):.0f} ms over {len(latencies)} prices)")
    finally:
        stop.set()
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        await asyncio.to_thread(stop_bff_process, bff)
        if kafka is not None:
            await kafka.stop()
        if kafka_process is not None:
            await asyncio.to_thread(kafka_process.stop)
        await aggregator_runner.cleanup()
        await auth.stop()
        await asyncio.to_thread(redis_process.stop)
        await asyncio.to_thread(postgres.stop)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000, help="WebSocket clients in total (default 2000)")
    parser.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
    parser.add_argument(
        "--bff-workers",
        type=int,
        default=1,
        help="BFF worker processes on the one port (BFF_WORKERS; default 1: one BFF process)",
    )
    parser.add_argument(
        "--symbols", default=DEFAULT_SYMBOLS, help=f"symbols priced (default {DEFAULT_SYMBOLS})"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the price phase (default 20)")
    parser.add_argument(
        "--publish",
        choices=("spread", "together"),
        default="spread",
        help="the symbols of a second spread evenly over it (default), or published back to back",
    )
    parser.add_argument(
        "--http-seconds", type=float, default=10.0, help="length of the REST phase (default 10)"
    )
    parser.add_argument(
        "--http-concurrency", type=int, default=50, help="concurrent REST requests (default 50)"
    )
    parser.add_argument(
        "--http-rounds",
        type=int,
        default=2,
        help="alternating rounds of the two routes, --http-seconds per route split among them (default 2)",
    )
    parser.add_argument(
        "--profile-rate",
        type=float,
        default=None,
        help="GET /v2/user/profile per second during the price phase (default: clients / 60; 0: none)",
    )
    parser.add_argument(
        "--alert-users",
        type=int,
        default=0,
        help="users with 5 alert rules each, evaluated by the BFF's evaluator on Kafka (default 0: no alerts)",
    )
    parser.add_argument("--connect-timeout", type=float, default=90.0, help="bound on the connect phase (s)")
    args = parser.parse_args()
    args.load_before = " ".join(f"{value:.2f}" for value in os.getloadavg())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, args.clients + 1000))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    args.nofile = wanted
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
