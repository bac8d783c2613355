"""Benchmark of the auth path at bcrypt cost 12: logins per second, whether the BFF's event loop stalls while
logins hash, and whether an unknown name can be told from a wrong password by timing.

Self-contained: starts an embedded PostgreSQL and a Redis server in a temporary directory, then the auth
service and the BFF as separate processes (``python -m auth``, ``python -m profile_bff``) on free ports of
127.0.0.1, as the mesh runs them. The BFF's rate limits are raised out of the way (the limits are not what
is measured). Runs in well under two minutes and prints its figures and the conditions.

1. Logins per second: ``CONCURRENCY`` clients log in back to back for ``THROUGHPUT_S`` seconds (one refused
   with ``Retry-After`` waits that long first).
2. ``GET /v2/user/profile`` latency (p50/p99/max), first alone, then while 50 logins are always in flight.
   The probes run open loop: one ``GET /v2/user/profile`` and one ``GET /healthz`` are sent every
   ``PROBE_INTERVAL_S`` on a fixed schedule, whether or not the earlier ones have been answered, each on a
   connection of its own (a session apart from the logins', with no pool limit), and each latency is measured
   from the probe's *intended* send time. A stall therefore shows as every probe it delayed, not as one slow
   sample (no coordinated omission). Printed beside the percentiles: how many probes were *late*, answered
   after the next probe of the schedule was due, and how many the benchmark itself sent more than one interval
   behind schedule (its own loop fell behind: the figures then understate nothing, since latency still
   counts from the intended time). Goal: p99 < 50 ms (bcrypt runs in auth's worker threads, and the BFF
   only awaits gRPC, so neither event loop may stall).
   Beside it, the logins themselves: how many were answered within ``QUICK_ANSWER_S`` (100 ms) and the
   percentiles of their time to answer (p50/p90/p99/max), all together and by status. A login refused by
   auth's admission control (503) carries ``Retry-After``; its client waits that long before its next login,
   as a well-behaved client does, and then logs in again (so 50 clients, each with one login in flight or
   waiting out its hint).
3. Enumeration by timing: ``TIMING_ROUNDS`` alternating logins with an unknown name and with a known name and
   a wrong password, sequential, unloaded; medians and the difference of means with its 95 % interval.

Usage: ``.venv/bin/python benchmarks/bench_auth.py``
"""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from auth.tokens import generate_private_key_pem
from launcher.embedded import EmbeddedPostgres, ManagedProcess
from launcher.mesh import (
    AGGREGATOR_TOKEN_FILE,
    ETL_TOKEN_FILE,
    embedded_redis,
    ensure_mesh_pki,
    ensure_service_token,
)
from crypto_mesh.netutil import free_port
from crypto_mesh.pki import AUTH, PROFILE_BFF

from machine import cpu_model

BCRYPT_COST = 12
USERS = 8
CONCURRENCY = 8
THROUGHPUT_S = 10.0
CONCURRENT_LOGINS = 50
LOADED_S = 15.0
PROBE_INTERVAL_S = 0.02
IDLE_PROBES = 200
TIMING_ROUNDS = 20
#: A login answered within this is "at once" (s).
QUICK_ANSWER_S = 0.100
PASSWORD = "correct horse battery staple"
UNLIMITED = "1000000/second"


def conditions() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; load average at start {load}\n"
        f"auth and BFF as separate processes; embedded PostgreSQL over a Unix socket; Redis on 127.0.0.1; "
        f"bcrypt cost {BCRYPT_COST}"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def wait_ready(http: aiohttp.ClientSession, url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{url}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the BFF did not become ready")


async def login(
    http: aiohttp.ClientSession, url: str, name: str, password: str = PASSWORD
) -> tuple[int, float]:
    """Status and time to answer (s) of a login, retried after its ``Retry-After`` while auth refuses it as
    overloaded (what is measured is the answer that was not such a refusal)."""
    while True:
        status, elapsed, retry_after = await login_with_hint(http, url, name, password)
        if status != 503 or retry_after is None:
            return status, elapsed
        await asyncio.sleep(retry_after)


async def login_with_hint(
    http: aiohttp.ClientSession, url: str, name: str, password: str = PASSWORD
) -> tuple[int, float, float | None]:
    """Status, time to answer (s) and the ``Retry-After`` hint (s) if the answer had one."""
    began = time.perf_counter()
    async with http.post(f"{url}/v1/login", json={"name": name, "password": password}) as resp:
        await resp.read()
        retry_after = resp.headers.get("Retry-After")
        return (
            resp.status,
            time.perf_counter() - began,
            float(retry_after) if retry_after and retry_after.isdigit() else None,
        )


async def logins_per_second(http: aiohttp.ClientSession, url: str, names: list[str]) -> None:
    done = 0
    failures: Counter[int] = Counter()
    stop_at = time.monotonic() + THROUGHPUT_S

    async def client(name: str) -> None:
        nonlocal done, failures
        while time.monotonic() < stop_at:
            status, _, retry_after = await login_with_hint(http, url, name)
            if status == 200:
                done += 1
            else:
                failures[status] += 1
            if retry_after is not None:
                await asyncio.sleep(min(retry_after, max(0.0, stop_at - time.monotonic())))

    began = time.perf_counter()
    await asyncio.gather(*(client(names[i % len(names)]) for i in range(CONCURRENCY)))
    elapsed = time.perf_counter() - began
    print(f"\n1. logins per second ({CONCURRENCY} concurrent clients, {elapsed:.1f} s)")
    print(f"   {done / elapsed:.2f} logins/s ({done} logins; failures by status: {dict(failures) or 'none'})")


class Probes:
    """Latencies (s) of the probes of one route, each from its intended send time, and how many were sent more
    than one interval behind schedule."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.sent_behind = 0


async def probe(url: str, access: str, count: int | None, until: float | None) -> tuple[Probes, Probes]:
    """``GET /v2/user/profile`` and ``GET /healthz`` (which touches no database: the BFF's event loop alone),
    one of each every ``PROBE_INTERVAL_S`` on a fixed schedule (open loop), ``count`` times or until
    ``until`` (``time.perf_counter()`` s); the two routes' :class:`Probes`. A probe that does not answer 200
    fails the benchmark."""
    headers = {"Authorization": f"Bearer {access}"}
    profile, health = Probes(), Probes()

    async def one(http: aiohttp.ClientSession, path: str, intended: float, probes: Probes) -> None:
        if time.perf_counter() - intended > PROBE_INTERVAL_S:
            probes.sent_behind += 1
        async with http.get(f"{url}{path}", headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, (path, resp.status)
        probes.latencies.append(time.perf_counter() - intended)

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        for k in itertools.count():
            intended = start + k * PROBE_INTERVAL_S
            if (count is not None and k >= count) or (until is not None and intended >= until):
                break
            await asyncio.sleep(max(0.0, intended - time.perf_counter()))
            for path, probes in (("/v2/user/profile", profile), ("/healthz", health)):
                tasks.append(asyncio.create_task(one(http, path, intended, probes)))
        await asyncio.gather(*tasks)
    return profile, health


def describe(probes: Probes) -> str:
    ms = [value * 1000 for value in probes.latencies]
    late = sum(1 for value in probes.latencies if value > PROBE_INTERVAL_S)
    return (
        f"n={len(ms)} p50={percentile(ms, 50):.2f} ms p99={percentile(ms, 99):.2f} ms max={max(ms):.2f} ms; "
        f"late {late} ({late / len(ms):.1%}), sent behind schedule {probes.sent_behind}"
    )


def describe_answers(latencies: list[float]) -> str:
    ms = [value * 1000 for value in latencies]
    return (
        f"n={len(ms)} p50={percentile(ms, 50):.1f} ms p90={percentile(ms, 90):.1f} ms "
        f"p99={percentile(ms, 99):.1f} ms max={max(ms):.1f} ms"
    )


async def profile_latency_under_logins(http: aiohttp.ClientSession, url: str, names: list[str]) -> None:
    while True:
        async with http.post(f"{url}/v1/login", json={"name": names[0], "password": PASSWORD}) as resp:
            status, body = resp.status, await resp.json()
            retry_after = resp.headers.get("Retry-After")
        if status != 503 or retry_after is None:
            break
        await asyncio.sleep(float(retry_after))  # auth still busy with the logins of part 1
    assert status == 200, (status, body)
    access = body["access_token"]
    idle, idle_health = await probe(url, access, IDLE_PROBES, None)

    stop_at = time.monotonic() + LOADED_S
    statuses: Counter[int] = Counter()
    answers: list[tuple[int, float]] = []

    async def client(name: str) -> None:
        while time.monotonic() < stop_at:
            status, elapsed, retry_after = await login_with_hint(http, url, name)
            statuses[status] += 1
            answers.append((status, elapsed))
            if retry_after is not None:
                await asyncio.sleep(min(retry_after, max(0.0, stop_at - time.monotonic())))

    clients = [asyncio.create_task(client(names[i % len(names)])) for i in range(CONCURRENT_LOGINS)]
    await asyncio.sleep(1.0)  # let the 50 logins fill auth's queue before measuring
    loaded, loaded_health = await probe(url, access, None, time.perf_counter() + stop_at - time.monotonic())
    await asyncio.gather(*clients)
    print(
        f"\n2. latency of GET /v2/user/profile (and of GET /healthz), one probe of each every "
        f"{PROBE_INTERVAL_S * 1000:.0f} ms on a fixed schedule, from its intended send time "
        f"(late: answered after the next was due)"
    )
    print(f"   alone:                    profile {describe(idle)}")
    print(f"                             healthz {describe(idle_health)}")
    print(f"   with {CONCURRENT_LOGINS} logins in flight: profile {describe(loaded)}")
    print(
        f"                             healthz {describe(loaded_health)}  (login answers: {dict(statuses)})"
    )
    verdict = "met" if percentile(loaded.latencies, 99) < 0.050 else "NOT met"
    print(f"   goal p99 < 50 ms under load: {verdict}")
    quick = sum(1 for _, elapsed in answers if elapsed <= QUICK_ANSWER_S)
    total = len(answers)
    print(
        f"\n   the {total} logins themselves ({CONCURRENT_LOGINS} clients; a 503 waits out its Retry-After):"
    )
    print(f"   answered within {QUICK_ANSWER_S * 1000:.0f} ms: {quick / total:.1%} ({quick} of {total})")
    print(f"   time to answer, all:  {describe_answers([elapsed for _, elapsed in answers])}")
    for status in sorted(statuses):
        times = [elapsed for answered, elapsed in answers if answered == status]
        print(f"   time to answer, {status}:  {describe_answers(times)}")


async def enumeration_timing(http: aiohttp.ClientSession, url: str, known: str) -> None:
    unknown_s, wrong_s = [], []
    for round_number in range(TIMING_ROUNDS):
        status_unknown, unknown = await login(http, url, f"nobody{round_number:04d}", "wrong password")
        status_wrong, wrong = await login(http, url, known, "wrong password")
        assert status_unknown == status_wrong == 401, (status_unknown, status_wrong)
        unknown_s.append(unknown * 1000)
        wrong_s.append(wrong * 1000)
    difference = statistics.mean(unknown_s) - statistics.mean(wrong_s)
    spread = (
        1.96
        * (statistics.variance(unknown_s) / len(unknown_s) + statistics.variance(wrong_s) / len(wrong_s))
        ** 0.5
    )
    print(f"\n3. login timing, unknown name vs wrong password ({TIMING_ROUNDS} each, alternating, unloaded)")
    print(
        f"   unknown name:   median {statistics.median(unknown_s):.1f} ms, mean {statistics.mean(unknown_s):.1f} ms"
    )
    print(
        f"   wrong password: median {statistics.median(wrong_s):.1f} ms, mean {statistics.mean(wrong_s):.1f} ms"
    )
    print(f"   difference of means: {difference:+.1f} ms ± {spread:.1f} ms (95 %)")


async def register(http: aiohttp.ClientSession, url: str, name: str, timeout_s: float = 60.0) -> None:
    """Register ``name``, retrying while auth still migrates its database (503)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.post(f"{url}/v1/register", json={"name": name, "password": PASSWORD}) as resp:
            if resp.status == 201:
                return
            if resp.status != 503 or time.monotonic() > deadline:
                raise RuntimeError(f"register {name}: {resp.status} {await resp.text()}")
        await asyncio.sleep(0.2)


async def run(url: str) -> None:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENT_LOGINS + 10), cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        await wait_ready(http, url)
        names = [f"bench{i:02d}" for i in range(USERS)]
        await asyncio.gather(*(register(http, url, name) for name in names))
        await logins_per_second(http, url, names)
        await profile_latency_under_logins(http, url, names)
        await enumeration_timing(http, url, names[0])


def main() -> None:
    print(conditions())
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        root = Path(tmp)
        postgres = EmbeddedPostgres(root / "pg")
        redis_port, auth_port, bff_port = free_port(), free_port(), free_port()
        redis_argv, redis_urls = embedded_redis(root, redis_port)
        redis = ManagedProcess("redis", redis_argv, redis_port, root / "redis.log")
        key_file = root / "jwt.pem"
        key_file.write_bytes(generate_private_key_pem())
        tls = ensure_mesh_pki(root)
        processes: list[ManagedProcess] = []
        try:
            postgres.start()
            redis.start()
            auth = ManagedProcess(
                "auth",
                [sys.executable, "-m", "auth"],
                auth_port,
                root / "auth.log",
                env={
                    "AUTH_PORT": str(auth_port),
                    "AUTH_DATABASE_URL": postgres.url("auth"),
                    "AUTH_JWT_PRIVATE_KEY_FILE": str(key_file),
                    "AUTH_BCRYPT_COST": str(BCRYPT_COST),
                    "AUTH_LOG_LEVEL": "WARNING",
                    **tls[AUTH].environment("AUTH_"),
                    **{
                        f"AUTH_{limit}": UNLIMITED
                        for limit in ("LOGIN_RATE_PER_NAME_AND_ADDRESS", "LOGIN_RATE_PER_NAME")
                    },
                },
            )
            processes.append(auth.start())
            bff = ManagedProcess(
                "bff",
                [sys.executable, "-m", "profile_bff"],
                bff_port,
                root / "bff.log",
                env={
                    "BFF_PORT": str(bff_port),
                    "BFF_DATABASE_URL": postgres.url("profile"),
                    "BFF_REDIS_URL": redis_urls["bff"],
                    "BFF_AUTH_TARGET": f"127.0.0.1:{auth_port}",
                    "BFF_AGGREGATOR_URL": f"http://127.0.0.1:{free_port()}",
                    "BFF_AGGREGATOR_TOKEN_FILE": str(ensure_service_token(root, AGGREGATOR_TOKEN_FILE)),
                    "BFF_ETL_URL": f"http://127.0.0.1:{free_port()}",
                    "BFF_ETL_TOKEN_FILE": str(ensure_service_token(root, ETL_TOKEN_FILE)),
                    "BFF_LOG_LEVEL": "WARNING",
                    **tls[PROFILE_BFF].environment("BFF_"),
                    **{
                        f"BFF_{limit}": UNLIMITED
                        for limit in (
                            "LOGIN_RATE_PER_NAME",
                            "LOGIN_RATE_PER_ADDRESS",
                            "LOGIN_RATE_PER_NAME_AND_ADDRESS",
                            "REGISTER_RATE_PER_NAME",
                            "REGISTER_RATE_PER_ADDRESS",
                        )
                    },
                },
            )
            processes.append(bff.start())
            asyncio.run(run(f"http://127.0.0.1:{bff_port}"))
        finally:
            for process in reversed(processes):
                process.stop()
            redis.stop()
            postgres.stop()
    print(f"\ntotal run time {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
