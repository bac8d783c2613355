"""``python -m profile_bff`` with ``BFF_WORKERS=2`` as real processes (crypto_mesh/workers.py), against real
auth, PostgreSQL and Redis: two worker processes listen on one port with ``SO_REUSEPORT`` and the kernel
spreads the sockets over both, each worker subscribes to Redis itself and pushes prices to its own sockets,
a worker killed with SIGKILL is started again while the other keeps its sockets, both are members of the
alert evaluator's consumer group (the one partition evaluated by one of them, also after the restart), and
SIGTERM to the supervisor closes every socket with 1001 and stops both workers; a supervisor killed with
SIGKILL leaves no worker behind, and workers never join a port another process listens on. A worker joins the
port only once ready (its database migrated, its Redis subscriber up), so no client meets a 503 from a worker
starting or restarted while the other serves.

Which worker holds a client's socket is read from the kernel (psutil: the worker process whose connection
has the client's address as its peer); which worker is which from the metrics port each one listens on
(``BFF_METRICS_PORT + index``), whose ``bff_ws_connections`` must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import pytest
import redis.asyncio as aioredis
from support.bff import BffClient, new_symbol, next_profile, write_exchange_info, write_second
from support.credentials import service_headers
from support.databases import new_database
from support.fake_aggregator import FakeAggregator
from support.polling import eventually
from support.stacks import NO_RATE_LIMITS, bff_process_environment, serve_auth

from crypto_mesh.kafka import ensure_topics
from crypto_mesh.netutil import port_open
from crypto_mesh.metrics import parse_samples
from support.ports import free_port, free_ports_in_a_row

pytestmark = pytest.mark.heavy

WS = "/v2/user/profile/ws"
WORKERS = 2
#: A refused or reset connection while a worker (re)starts is "not yet".
NOT_YET = (aiohttp.ClientError, OSError, psutil.Error)


@dataclass
class Workers:
    """The supervisor process of a BFF with :data:`WORKERS` workers: its public ``url`` and the metrics
    port of worker 0 (worker ``i`` serves on ``metrics_port + i``)."""

    process: subprocess.Popen
    url: str
    metrics_port: int

    def worker_pid(self, index: int) -> int | None:
        """The pid of the supervisor's child listening on worker ``index``'s metrics port, or None."""
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.Error):
                for connection in child.net_connections(kind="tcp"):
                    listening = connection.status == psutil.CONN_LISTEN
                    if listening and connection.laddr.port == self.metrics_port + index:
                        return child.pid
        return None

    async def samples(self, index: int) -> dict[str, float]:
        """The samples of worker ``index``'s ``/metrics``."""
        url = f"http://127.0.0.1:{self.metrics_port + index}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url, headers=service_headers()) as resp:
            resp.raise_for_status()
            return parse_samples(await resp.text())

    async def sockets_held(self, index: int) -> int:
        """``bff_ws_connections`` of worker ``index``."""
        return int((await self.samples(index))["bff_ws_connections"])

    async def alert_partitions(self) -> list[int]:
        """``bff_alert_partitions`` of each worker: the partitions of the SecondStat topic the consumer group
        gives its alert evaluator now."""
        return [int((await self.samples(index))["bff_alert_partitions"]) for index in range(WORKERS)]

    async def healthy(self) -> bool:
        """``GET /healthz`` on the shared port answers 200."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/healthz") as resp:
            return resp.status == 200

    async def serves_metrics(self, index: int) -> bool:
        """Worker ``index`` answers its ``/metrics``."""
        await self.sockets_held(index)
        return True


def holder_of(ws: aiohttp.ClientWebSocketResponse, pids: dict[int, int]) -> int:
    """The index of the worker (``pids``: index → pid) whose end of the connection is ``ws``'s."""
    client_end = ws.get_extra_info("sockname")[:2]
    for index, pid in pids.items():
        for connection in psutil.Process(pid).net_connections(kind="tcp"):
            if connection.raddr and tuple(connection.raddr) == tuple(client_end):
                return index
    raise AssertionError(f"no worker holds the connection from {client_end}")


@pytest.fixture(scope="module")
async def engines(postgres, redis_url, kafka_bootstrap, tmp_path_factory):
    name = uuid.uuid4().hex[:8]
    topic = f"seconds-{name}"
    await ensure_topics(kafka_bootstrap, {topic: 1})
    async with (
        FakeAggregator() as aggregator,
        serve_auth(new_database(postgres, "auth"), tmp_path_factory.mktemp("auth")) as auth,
    ):
        exchange_info = write_exchange_info(tmp_path_factory.mktemp("exchange"))
        database = new_database(postgres, "profile")
        yield {
            **bff_process_environment(database, redis_url, auth.port, aggregator.url, exchange_info, kafka_bootstrap),
            # The alert evaluator: every worker a member of one consumer group of a topic of one partition.
            "BFF_ALERTS_TOPIC": topic,
            "BFF_ALERTS_GROUP_ID": f"bff-alerts-{name}",
            "BFF_KAFKA_SESSION_TIMEOUT_MS": "1500",
        }


@contextlib.asynccontextmanager
async def bff_workers(
    engines: dict[str, str], log_path: Path, healthy: bool = True
) -> AsyncIterator[Workers]:
    """``python -m profile_bff`` with ``BFF_WORKERS=2``, both workers' metrics answering and (``healthy``)
    ``/healthz`` 200; killed (with its workers) if the test leaves it running."""
    port, metrics_port = free_port(), free_ports_in_a_row(WORKERS)
    env = {
        **os.environ,
        **engines,
        **{f"BFF_{name.upper()}": value for name, value in NO_RATE_LIMITS.items()},
        "BFF_PORT": str(port),
        "BFF_WORKERS": str(WORKERS),
        "BFF_METRICS_PORT": str(metrics_port),
        "BFF_MAX_SOCKETS_PER_USER": "100",
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "profile_bff"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    workers = Workers(process, f"http://127.0.0.1:{port}", metrics_port)
    try:
        for index in range(WORKERS):
            await eventually(
                lambda i=index: workers.serves_metrics(i), 60, f"worker {index}'s metrics", tolerate=NOT_YET
            )

        if healthy:
            await eventually(workers.healthy, 30, "the BFF healthy", tolerate=NOT_YET)
        yield workers
    finally:
        if process.poll() is None:
            children = psutil.Process(process.pid).children()
            process.kill()
            process.wait()
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()


async def subscribers(redis, channel: str) -> int:
    return (await redis.pubsub_numsub(channel))[0][1]


async def test_two_workers_share_the_port_each_pushes_prices_a_killed_one_comes_back_and_sigterm_stops_both(
    engines, redis_url, tmp_path
):
    symbol = new_symbol()
    redis = aioredis.Redis.from_url(redis_url)
    async with (
        bff_workers(engines, tmp_path / "bff.log") as workers,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        client = BffClient(workers.url, http)
        # A worker joins the port once ready: whichever the kernel picks answers, never with 503.
        _, auth = await client.user()
        await client.add_coin(auth, symbol, "2")
        pids = {index: workers.worker_pid(index) for index in range(WORKERS)}
        assert None not in pids.values() and len(set(pids.values())) == WORKERS

        # Sockets of one user, opened until each worker holds some: the kernel picks the worker (among those
        # that have joined the port), and every upgrade succeeds.
        sockets: dict[int, list[aiohttp.ClientWebSocketResponse]] = {index: [] for index in range(WORKERS)}

        async def held_by_each(at_least: int = 6) -> bool:
            ws = await http.ws_connect(f"{workers.url}{WS}", headers=auth)
            await next_profile(ws)
            sockets[holder_of(ws, pids)].append(ws)
            return all(sockets.values()) and sum(map(len, sockets.values())) >= at_least

        await eventually(held_by_each, 30, "sockets on each worker", interval_s=0.02)
        for index in range(WORKERS):
            assert await workers.sockets_held(index) == len(sockets[index])

        # Both workers are members of the alert evaluator's group: the one partition is evaluated by one.
        await eventually(
            lambda: _equals(_sorted(workers.alert_partitions()), [0, 1]), 60, "one worker with the partition"
        )

        # Each worker has subscribed to the symbol itself and pushes the price to its own sockets.
        await eventually(
            lambda: _equals(subscribers(redis, symbol), WORKERS), what="both subscribed", interval_s=0.02
        )
        await write_second(redis, symbol, "10", 1723161601000)
        for held in sockets.values():
            for ws in held:
                assert (await next_profile(ws))["Total"] == "20"

        # Worker 0 killed: its sockets are gone, worker 1's keep receiving prices.
        os.kill(pids[0], signal.SIGKILL)
        for ws in sockets[0]:
            closed = await ws.receive(timeout=10)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        await write_second(redis, symbol, "11", 1723161602000)
        for ws in sockets[1]:
            assert (await next_profile(ws))["Total"] == "22"
            assert not ws.closed

        # The supervisor starts worker 0 again; new sockets reach it and it pushes prices too.
        restarted = await eventually(
            lambda: _new_pid(workers.worker_pid(0), pids[0]), 30, "worker 0 started again", tolerate=NOT_YET
        )
        await eventually(lambda: workers.serves_metrics(0), 30, "worker 0's metrics again", tolerate=NOT_YET)
        assert workers.worker_pid(1) == pids[1]
        pids[0] = restarted
        sockets[0] = []
        # Until the restarted worker joins the port (once its dependencies answer) the other takes every new
        # socket: none is refused meanwhile.
        await eventually(
            lambda: held_by_each(at_least=0), 30, "a socket on the restarted worker", interval_s=0.02
        )
        await eventually(
            lambda: _equals(subscribers(redis, symbol), WORKERS), what="both subscribed", interval_s=0.02
        )
        await write_second(redis, symbol, "12", 1723161603000)
        for held in sockets.values():
            for ws in held:
                assert (await next_profile(ws))["Total"] == "24"

        # With worker 0 back in the group, the partition is still evaluated by exactly one of them.
        await eventually(
            lambda: _equals(_sorted(workers.alert_partitions()), [0, 1]), 60, "one worker with the partition"
        )

        # SIGTERM to the supervisor: every socket closed with 1001 (going away), both workers gone, status 0.
        workers.process.send_signal(signal.SIGTERM)
        for held in sockets.values():
            for ws in held:
                closing = await ws.receive(timeout=15)
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001
        assert await asyncio.to_thread(workers.process.wait, 30) == 0
        for pid in pids.values():
            assert not psutil.pid_exists(pid)
    await redis.aclose()


async def test_workers_never_join_a_port_another_process_listens_on(engines, tmp_path):
    # Another process of the same user could share the port with SO_REUSEPORT and take half the connections.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, **engines, "BFF_PORT": str(taken.getsockname()[1]), "BFF_WORKERS": str(WORKERS)}
        log_path = tmp_path / "bff.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "profile_bff"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        assert await asyncio.to_thread(process.wait, 60) == 1
    assert "port_in_use" in log_path.read_text()


async def test_workers_whose_supervisor_is_killed_stop_by_themselves(engines, tmp_path):
    # SIGKILL cannot be forwarded: each worker notices that its parent is gone and stops as on SIGTERM.
    async with bff_workers(engines, tmp_path / "bff.log") as workers:
        pids = [workers.worker_pid(index) for index in range(WORKERS)]
        assert None not in pids
        workers.process.kill()
        workers.process.wait()

        def stopped() -> bool:
            return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                           for pid in pids)

        await eventually(stopped, 30, "both workers stopped", tolerate=(psutil.NoSuchProcess,))
    assert (tmp_path / "bff.log").read_text().count("worker_orphaned") == WORKERS


async def _equals(value, expected) -> bool:
    return await value == expected


async def _sorted(values) -> list:
    return sorted(await values)


def _new_pid(pid: int | None, old: int) -> int | None:
    return pid if pid is not None and pid != old else None




async def test_workers_join_the_port_only_once_their_database_answers(engines, postgres, tmp_path):
    """A worker joins the shared port once ready (its schema migrated, its Redis subscriber up): here the
    profile database does not exist yet, so both serve their metrics but neither listens on the port, where a
    client would otherwise meet 503s; once the database exists, both migrate, join and answer."""
    name = f"profile_{uuid.uuid4().hex[:10]}"
    environment = {**engines, "BFF_DATABASE_URL": postgres.url(name)}
    async with bff_workers(environment, tmp_path / "bff.log", healthy=False) as workers:
        port = int(workers.url.rsplit(":", 1)[1])
        for index in range(WORKERS):
            assert "bff_ws_connections" in await workers.samples(index)
        assert not port_open("127.0.0.1", port)  # neither worker ready: neither joined

        await asyncio.to_thread(postgres.create_database, name)
        await eventually(workers.healthy, 30, "the BFF healthy once its database exists", tolerate=NOT_YET)
        pids = {index: workers.worker_pid(index) for index in range(WORKERS)}
        await eventually(lambda: _listening(pids, port) == set(pids), 30, "both workers on the port")


def _listening(pids: dict[int, int], port: int) -> set[int]:
    """The indices of the workers (``pids``: index → pid) listening on ``port``."""
    return {
        index
        for index, pid in pids.items()
        for connection in psutil.Process(pid).net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }
