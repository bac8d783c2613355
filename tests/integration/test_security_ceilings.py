"""The BFF's ceilings (profile_bff/ceilings.py; docs/SECURITY.md, "Abuse ceilings"), over real HTTP and
WebSocket connections against real auth, PostgreSQL and Redis: coins per portfolio, open sockets per user across
replicas, writes and tickets per user, public routes and WebSocket upgrades per address, connections per
address and per process, the header-read timeout, and ``Cache-Control: no-store`` on personal data.

Connections that play an attacker come from 127.0.0.2 (Linux routes all of 127.0.0.0/8 to the loopback), so
that the per-address caps they reach leave the test's own requests from 127.0.0.1 alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import resource
import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from support.credentials import service_token_file
from support.polling import eventually
from support.bff import COIN, PASSWORD, error_body, new_symbol, write_exchange_info
from support.databases import new_database
from support.fake_aggregator import FakeAggregator
from support.stacks import serve_auth, serve_bff

from crypto_mesh import jsonutil
from profile_bff.ceilings import (
    FD_RESERVE,
    ConnectionCounter,
    GuardedProtocol,
    RedisSocketLeases,
    SocketSlots,
    connection_cap,
    guarded_factory,
)
from profile_bff.ratelimit import parse_networks
from profile_bff.settings import BffSettings

WS = "/v2/user/profile/ws"
ATTACKER = "127.0.0.2"
HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bff\r\nX-Slow: "


@pytest.fixture(scope="module")
async def engines(postgres, redis_url, tmp_path_factory):
    """Auth, the fake aggregator, a profile database and the exchangeInfo, shared by this module's BFFs."""
    async with (
        serve_auth(new_database(postgres, "auth"), tmp_path_factory.mktemp("auth")) as auth,
        FakeAggregator() as aggregator,
    ):
        database_url = new_database(postgres, "profile")
        exchange_info = write_exchange_info(tmp_path_factory.mktemp("exchange"))

        def replica(**overrides):
            return serve_bff(database_url, redis_url, auth.port, aggregator, exchange_info, **overrides)

        yield replica


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors():
    """1,000 client sockets and the BFF's 1,000 in one process need more than a soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4096))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def add(bff, auth, symbol: str) -> aiohttp.ClientResponse:
    body = {"symbol": symbol, "quantity": "1"}
    async with bff.http.post(f"{bff.url}{COIN}", json=body, headers=auth) as resp:
        await resp.read()
        return resp


async def assert_429_with_retry_after(response: aiohttp.ClientResponse, code: str = "rate_limited") -> dict:
    assert response.status == 429, await response.text()
    assert int(response.headers["Retry-After"]) >= 1
    error = await error_body(response)
    assert error["code"] == code
    return error


async def raw_connection(port: int, source: str = ATTACKER):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def raw_get(port: int, path: str = "/healthz", source: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """One ``GET`` on a new connection: the status line and the rest (headers and body), up to EOF."""
    reader, writer = await raw_connection(port, source)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bff\r\nConnection: close\r\n\r\n".encode())
        answer = await reader.read()
    finally:
        writer.close()
    status, _, rest = answer.partition(b"\r\n")
    return status, rest


# -- coins per portfolio -------------------------------------------------------------------------------


async def test_a_portfolio_at_its_coin_cap_refuses_one_more_coin_with_409_naming_the_cap(engines):
    async with engines(max_coins_per_user=3) as bff:
        _, auth = await bff.user()
        for _ in range(3):
            assert (await add(bff, auth, new_symbol())).status == 201
        async with bff.http.post(
            f"{bff.url}{COIN}", json={"symbol": new_symbol(), "quantity": "1"}, headers=auth
        ) as resp:
            assert resp.status == 409
            error = await error_body(resp)
        assert error["code"] == "coin_limit_reached"
        assert "at most 3 coins" in error["message"]
        async with bff.http.get(f"{bff.url}/v2/coin/symbols", headers=auth) as resp:
            assert len((await resp.json())["coins"]) == 3
        # A coin already held is still a plain conflict, and removing one makes room.
        async with bff.http.get(f"{bff.url}/v2/coin/symbols", headers=auth) as resp:
            held = (await resp.json())["coins"][0]["symbol"]
        body = {"symbol": held, "quantity": "1"}
        async with bff.http.post(f"{bff.url}{COIN}", json=body, headers=auth) as resp:
            assert resp.status == 409 and (await error_body(resp))["code"] == "coin_already_held"
        async with bff.http.delete(f"{bff.url}{COIN}", params={"symbol": held}, headers=auth) as resp:
            assert resp.status == 204
        assert (await add(bff, auth, new_symbol())).status == 201


async def test_concurrent_adds_never_take_a_portfolio_past_its_cap(engines):
    async with engines(max_coins_per_user=5) as bff:
        _, auth = await bff.user()
        for _ in range(3):
            assert (await add(bff, auth, new_symbol())).status == 201
        answers = await asyncio.gather(*(add(bff, auth, new_symbol()) for _ in range(12)))
        statuses = sorted(resp.status for resp in answers)
        assert statuses == [201, 201] + [409] * 10
        async with bff.http.get(f"{bff.url}/v2/coin/symbols", headers=auth) as resp:
            assert len((await resp.json())["coins"]) == 5


# -- open sockets per user -----------------------------------------------------------------------------


async def test_a_user_at_the_socket_cap_is_refused_one_more_upgrade_with_429_on_every_replica(engines):
    async with engines(max_sockets_per_user=3) as first, engines(max_sockets_per_user=3) as second:
        _, auth = await first.user()
        async with contextlib.AsyncExitStack() as sockets:
            held = [
                await sockets.enter_async_context(bff.http.ws_connect(f"{bff.url}{WS}", headers=auth))
                for bff in (first, first, second)
            ]
            for bff in (first, second):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await bff.http.ws_connect(f"{bff.url}{WS}", headers=auth)
                assert refused.value.status == 429
            async with first.http.get(f"{first.url}{WS}", headers={**auth, **_UPGRADE}) as resp:
                assert resp.status == 429
                error = await error_body(resp)
            assert error["code"] == "too_many_sockets" and "3 profile sockets" in error["message"]
            # Another user is not affected.
            _, other = await second.user()
            async with second.http.ws_connect(f"{second.url}{WS}", headers=other):
                pass
            # Closing one socket frees its slot, on whichever replica it was.
            await held[2].close()

            async def opens() -> bool:
                try:
                    ws = await first.http.ws_connect(f"{first.url}{WS}", headers=auth)
                except aiohttp.WSServerHandshakeError as exc:
                    assert exc.status == 429
                    return False
                await sockets.enter_async_context(ws)
                return True

            await eventually(opens, what="a socket opening once one is closed")


_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def test_a_socket_slot_of_a_replica_that_stopped_renewing_expires_by_itself(redis_url):
    redis = aioredis.Redis.from_url(redis_url)
    try:
        leases = RedisSocketLeases(redis)
        user_id = int(uuid.uuid4().int % 10**12)
        dead = SocketSlots(leases, cap=1, lease_s=1)  # never renews: its process died
        alive = SocketSlots(leases, cap=1, lease_s=1)
        assert await dead.acquire(user_id) is not None
        assert await alive.acquire(user_id) is None
        await eventually(lambda: alive.acquire(user_id), what="the dead replica's lease to expire")
    finally:
        await redis.aclose()


class FakeLeases:
    """Leases in memory, without expiry: what :class:`SocketSlots` asks of its port."""

    def __init__(self) -> None:
        self.slots: dict[int, set[str]] = {}
        self.renewed: list[dict[int, tuple[str, ...]]] = []

    async def acquire(self, user_id: int, slot: str, cap: int, lease_s: int) -> bool:
        held = self.slots.setdefault(user_id, set())
        if len(held) >= cap:
            return False
        held.add(slot)
        return True

    async def renew(self, held, lease_s: int) -> None:
        self.renewed.append({user_id: tuple(sorted(slots)) for user_id, slots in held.items()})

    async def release(self, user_id: int, slot: str) -> None:
        self.slots.get(user_id, set()).discard(slot)


async def test_socket_slots_are_counted_per_user_renewed_while_held_and_freed_on_release():
    leases = FakeLeases()
    slots = SocketSlots(leases, cap=2)
    first, second = await slots.acquire(7), await slots.acquire(7)
    assert first and second and first != second
    assert await slots.acquire(7) is None
    assert await slots.acquire(8) is not None
    await slots.renew()
    assert leases.renewed[-1][7] == tuple(sorted((first, second)))
    await slots.release(7, first)
    assert slots.held(7) == 1
    assert await slots.acquire(7) is not None


# -- rates per user ------------------------------------------------------------------------------------


async def test_writes_beyond_the_per_user_rate_are_429_with_retry_after_and_other_users_still_write(engines):
    async with engines(write_rate_per_user="3/minute") as bff:
        _, auth = await bff.user()
        symbol = new_symbol()
        assert (await add(bff, auth, symbol)).status == 201
        async with bff.http.patch(
            f"{bff.url}{COIN}", json={"symbol": symbol, "quantity": "2"}, headers=auth
        ) as resp:
            assert resp.status == 200
        async with bff.http.delete(f"{bff.url}{COIN}", params={"symbol": symbol}, headers=auth) as resp:
            assert resp.status == 204
        for method, kwargs in (
            ("POST", {"json": {"symbol": symbol, "quantity": "1"}}),
            ("PATCH", {"json": {"symbol": symbol, "quantity": "1"}}),
            ("DELETE", {"params": {"symbol": symbol}}),
        ):
            async with bff.http.request(method, f"{bff.url}{COIN}", headers=auth, **kwargs) as resp:
                await assert_429_with_retry_after(resp)
        async with bff.http.delete(f"{bff.url}/v2/user/profile", headers=auth) as resp:
            await assert_429_with_retry_after(resp)
        # Reads are not writes, and another user has an allowance of its own.
        async with bff.http.get(f"{bff.url}/v2/coin/symbols", headers=auth) as resp:
            assert resp.status == 200
        _, other = await bff.user()
        assert (await add(bff, other, new_symbol())).status == 201


async def test_websocket_tickets_beyond_the_per_user_rate_are_429_with_retry_after(engines):
    async with engines(ws_ticket_rate_per_user="2/minute") as bff:
        _, auth = await bff.user()
        for _ in range(2):
            async with bff.http.post(f"{bff.url}/v2/user/ws-ticket", headers=auth) as resp:
                assert resp.status == 201
        async with bff.http.post(f"{bff.url}/v2/user/ws-ticket", headers=auth) as resp:
            await assert_429_with_retry_after(resp)


# -- rates per address ---------------------------------------------------------------------------------


async def test_public_routes_beyond_the_per_address_rate_are_429_while_health_probes_still_answer(engines):
    async with engines(public_rate_per_address="3/minute") as bff:
        for path in ("/v1/instruments?q=btc", "/openapi.json", "/v1/instruments"):
            async with bff.http.get(f"{bff.url}{path}") as resp:
                assert resp.status == 200
        for path in ("/v1/instruments?q=eth", "/v1/instruments/btcusdt", "/openapi.json"):
            async with bff.http.get(f"{bff.url}{path}") as resp:
                error = await assert_429_with_retry_after(resp)
        assert "this address" in error["message"]
        async with bff.http.get(f"{bff.url}/healthz") as resp:
            assert resp.status == 200
        status, _ = await raw_get(bff.running.port, "/v1/instruments", source=ATTACKER)
        assert status == b"HTTP/1.1 200 OK"  # another address has its own allowance


async def test_websocket_upgrades_beyond_the_per_address_rate_are_429_failed_ones_included(engines):
    async with engines(ws_upgrade_rate_per_address="2/minute") as bff:
        _, auth = await bff.user()
        async with bff.http.get(f"{bff.url}{WS}", headers=_UPGRADE) as resp:
            assert resp.status == 401  # no credentials: still an upgrade attempt
        async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth):
            pass
        async with bff.http.get(f"{bff.url}{WS}", headers={**auth, **_UPGRADE}) as resp:
            await assert_429_with_retry_after(resp)


# -- connections ---------------------------------------------------------------------------------------


def test_the_connection_cap_keeps_descriptors_for_the_process_itself():
    assert connection_cap(16_384, 1024) == 1024 - FD_RESERVE
    assert connection_cap(500, 65_536) == 500
    assert connection_cap(16_384, 100) == 1  # never zero: the process still answers one at a time


def test_connections_are_counted_per_address_and_in_total_and_trusted_proxies_only_in_total():
    counter = ConnectionCounter(max_total=4, max_per_address=2, exempt=parse_networks("10.0.0.0/8"))
    client, proxy = ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("10.1.2.3")
    first, _ = counter.admit(client)
    assert counter.admit(client) == ("192.0.2.7", None)
    assert counter.admit(client) == (None, "address")
    assert counter.admit(proxy) == (None, None)
    assert counter.admit(proxy) == (None, None)
    assert counter.admit(ipaddress.ip_address("198.51.100.1")) == (None, "total")
    counter.release(first)
    assert counter.open_from(client) == 1
    # IPv6 clients are counted per /64.
    v6 = ConnectionCounter(max_total=10, max_per_address=1)
    v6.admit(ipaddress.ip_address("2001:db8::1"))
    assert v6.admit(ipaddress.ip_address("2001:db8::2")) == (None, "address")


async def test_an_address_over_its_connection_cap_is_answered_429_at_once_and_others_are_served(engines):
    async with engines(max_connections_per_address=3) as bff:
        port = bff.running.port
        held = []
        try:
            for _ in range(3):  # kept alive after one answered request each: surely admitted
                reader, writer = await raw_connection(port)
                held.append(writer)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: bff\r\n\r\n")
                assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            reader, writer = await raw_connection(port)
            answer = await reader.read()  # sent nothing: the refusal comes unasked, then EOF
            writer.close()
            status, _, rest = answer.partition(b"\r\n")
            assert status == b"HTTP/1.1 429 Too Many Requests"
            assert b"Retry-After: 1" in rest
            assert jsonutil.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_many_connections"
            status, _ = await raw_get(port)
            assert status == b"HTTP/1.1 200 OK"
        finally:
            for writer in held:
                writer.close()


async def test_a_process_over_its_connection_cap_answers_503_at_once(engines):
    async with engines(max_connections=2, max_connections_per_address=100) as bff:
        await bff.http.close()  # its pooled keep-alive connection would count
        held, refusal = [], None
        try:
            for _ in range(3):
                reader, writer = await raw_connection(bff.running.port, "127.0.0.1")
                held.append(writer)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: bff\r\n\r\n")
                status = await reader.readline()
                if not status.startswith(b"HTTP/1.1 200"):
                    refusal = status + await reader.read()
                    break
        finally:
            for writer in held:
                writer.close()
        # Two admitted at most (the session's connection, just closed, may still count), then refused.
        assert refusal is not None and refusal.startswith(b"HTTP/1.1 503 Service Unavailable")
        assert b"Retry-After: 1" in refusal and b'"too_many_connections"' in refusal

        async def served() -> bool:
            status, _ = await raw_get(bff.running.port)
            return status == b"HTTP/1.1 200 OK"

        await eventually(served, what="a request served once the connections are closed")


async def test_a_thousand_half_sent_requests_do_not_stop_the_bff_and_are_closed_after_the_header_timeout(
    engines,
):
    async with engines(header_timeout_s=3, max_connections_per_address=2000) as bff:
        port = bff.running.port
        connections = [await raw_connection(port) for _ in range(1000)]
        try:
            for _, writer in connections:
                writer.write(HALF_REQUEST)
            # A new connection is served meanwhile.
            status, _ = await raw_get(port)
            assert status == b"HTTP/1.1 200 OK"
            # Every half-sent request is closed by the BFF (408, then EOF). The bound only keeps a broken
            # BFF from hanging the test.
            answers = await asyncio.wait_for(
                asyncio.gather(*(reader.read() for reader, _ in connections)), timeout=120
            )
        finally:
            for _, writer in connections:
                writer.close()
        assert {answer.partition(b"\r\n")[0] for answer in answers} == {b"HTTP/1.1 408 Request Timeout"}


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout_but_an_open_socket_is_not(
    engines,
):
    async with engines(header_timeout_s=1) as bff:
        _, auth = await bff.user()
        async with bff.http.ws_connect(f"{bff.url}{WS}", headers=auth) as ws:
            first = jsonutil.loads((await ws.receive()).data)
            assert first["Coins"]["Quantities"] == {}
            # An idle connection opened after the socket is closed by the timeout: the socket is older.
            reader, writer = await raw_connection(bff.running.port)
            assert (await reader.read()).startswith(b"HTTP/1.1 408")
            writer.close()
            # The socket, open far longer than the timeout, still gets every push.
            symbol = new_symbol()
            assert (await add(bff, auth, symbol)).status == 201
            pushed = jsonutil.loads((await ws.receive()).data)
            assert symbol in pushed["Coins"]["Quantities"]


async def test_a_kept_alive_connection_that_sends_half_of_its_next_request_is_closed_after_the_keepalive_timeout(
    engines,
):
    async with engines(keepalive_timeout_s=1) as bff:
        reader, writer = await raw_connection(bff.running.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bff\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length:"))[15:])
            await reader.readexactly(length)
            writer.write(HALF_REQUEST)
            # The bound only keeps a broken BFF from hanging the test.
            assert await asyncio.wait_for(reader.read(), timeout=60) == b""
        finally:
            writer.close()


# -- Cache-Control -------------------------------------------------------------------------------------


async def test_answers_carrying_personal_data_and_errors_of_authenticated_routes_are_no_store(engines):
    async with engines() as bff:
        name, _ = await bff.sign_up()
        credentials = {"name": name, "password": PASSWORD}
        async with bff.http.post(f"{bff.url}/v1/login", json=credentials) as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            auth = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
        symbol = new_symbol()
        assert (await add(bff, auth, symbol)).status == 201
        personal = [
            ("GET", "/v2/user/profile", auth),
            ("GET", "/v2/coin/symbols", auth),
            ("GET", "/v2/user/history", auth),
            ("POST", "/v2/user/ws-ticket", auth),
            ("GET", "/v2/user/profile", {}),  # 401
            ("GET", "/v2/coin/symbols", {"Authorization": "Bearer forged"}),  # 401
            ("PATCH", f"{COIN}", auth),  # 415
        ]
        for method, path, headers in personal:
            async with bff.http.request(method, f"{bff.url}{path}", headers=headers) as resp:
                assert resp.headers.get("Cache-Control") == "no-store", (method, path, resp.status)
        async with bff.http.post(
            f"{bff.url}{COIN}", json={"symbol": symbol, "quantity": "1"}, headers=auth
        ) as resp:
            assert resp.status == 409 and resp.headers["Cache-Control"] == "no-store"
        # The public catalogue is not personal.
        async with bff.http.get(f"{bff.url}/v1/instruments?q=btc") as resp:
            assert resp.status == 200 and "Cache-Control" not in resp.headers


def test_the_ceilings_have_their_documented_defaults():
    settings = BffSettings(
        database_url="postgresql+asyncpg://unused/x",
        redis_url="redis://unused",
        aggregator_token_file=service_token_file(),
        etl_token_file=service_token_file(),
    )
    assert settings.max_coins_per_user == 200
    assert settings.max_sockets_per_user == 10
    assert (settings.write_rate_per_user.limit, settings.write_rate_per_user.period_s) == (60, 60)
    assert (settings.ws_ticket_rate_per_user.limit, settings.ws_ticket_rate_per_user.period_s) == (30, 60)
    assert (settings.public_rate_per_address.limit, settings.public_rate_per_address.period_s) == (300, 60)
    upgrades = settings.ws_upgrade_rate_per_address
    assert (upgrades.limit, upgrades.period_s) == (60, 60)
    assert settings.header_timeout_s == 10
    assert settings.keepalive_timeout_s == 75
    assert settings.max_connections == 16_384
    assert settings.max_connections_per_address == 256


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name, default=None):
        return ("192.0.2.9", 40000) if name == "peername" else default

    def write(self, data) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class RecordingProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data


@pytest.mark.parametrize(
    ("chunks", "complete"),
    [
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], True),
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r", b"\n"], True),  # the empty line split across reads
        ([b"GET / HTTP/1.1\r", b"\n", b"Host: x\r\n", b"\r\n"], True),
        ([b"\r\n\r\n", b"GET / HTTP/1.1\r\n"], False),  # empty lines before the request line are no head
        ([b"GET / HTTP/1.1\r\nHost: x\r\n"], False),
    ],
)
async def test_the_header_timeout_stops_once_the_request_head_is_complete(chunks, complete):
    inner, transport = RecordingProtocol(), FakeTransport()
    guard = GuardedProtocol(inner, ConnectionCounter(10, 10), header_timeout_s=0.01)
    guard.connection_made(transport)
    for chunk in chunks:
        guard.data_received(chunk)
    assert inner.received == b"".join(chunks)
    # The loop runs timers in order of their time, so the deadline (0.01 s) has fired, unless cancelled,
    # before this later one does, however loaded the machine.
    await asyncio.sleep(0.05)
    assert transport.closed is not complete
    assert transport.written.startswith(b"HTTP/1.1 408") is not complete


def test_the_guard_refuses_and_times_out_connections_on_uvloop_the_loop_of_the_bff_process():
    """``python -m profile_bff`` runs on uvloop, whose transports are not asyncio's: the same guard there."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async def hello(request: web.BaseRequest) -> web.Response:
            return web.Response(text="ok")

        server = web.Server(hello)
        counter = ConnectionCounter(max_total=10, max_per_address=1)
        listening = await asyncio.get_running_loop().create_server(
            guarded_factory(server, counter, header_timeout_s=0.2), "127.0.0.1", 0
        )
        port = listening.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", port)
            assert (await refused_reader.read()).startswith(b"HTTP/1.1 429")
            refused_writer.close()
            writer.close()
            await eventually(lambda: counter.total == 0, what="the first connection counted out")
            slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
            slow_writer.write(HALF_REQUEST)
            assert (await slow_reader.read()).startswith(b"HTTP/1.1 408")
            slow_writer.close()
        finally:
            listening.close()
            await server.shutdown()

    uvloop.run(scenario())
