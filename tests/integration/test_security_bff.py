"""What an attacker and a careless client meet at the BFF's auth routes: forged tokens, stolen and replayed
refresh cookies, brute force, hostile names and passwords, malformed requests, key rotation.

Everything runs against the real auth gRPC server, the real BFF on free ports, PostgreSQL and Redis. Each
test starts with empty rate-limit counters: this module's BFFs use a Redis database of their own, emptied
before every test. Cases the issue lists that other modules already cover, so they are not repeated here:
refresh after logout (tests/test_bff_api.py ``test_logout_revokes_the_session_and_clears_the_cookie``),
a 1 MB register body and a form body on login (``test_a_one_megabyte_body_is_too_large``,
``test_a_body_that_is_not_json_is_an_unsupported_media_type``), and the gRPC cases in
tests/test_auth_server.py and tests/test_security_grpc.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import shutil
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis
from support.credentials import redis_acl_file, redis_user_url
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import stacks
from support.bff import PASSWORD, Bff, new_name, refresh_token, with_refresh_cookie
from support.databases import new_database
from support.stacks import serve_auth

from auth.server import start as start_auth
from auth.settings import AuthSettings
from auth.tokens import generate_private_key_pem, load_private_key
from crypto_mesh import jsonutil
from support.ports import free_port
from profile_bff.tokens import DEFAULT_REFETCH_INTERVAL_S

ISSUER, AUDIENCE = "crypto-mesh-auth", "crypto-mesh"


@dataclass
class Stack:
    bff: Bff
    auth_port: int
    key_file: Path
    redis_url: str
    profile_database_url: str


def claims_of(access_token: str) -> dict:
    return jwt.decode(access_token, options={"verify_signature": False})


def serve_bff(redis_url: str, database_url: str, auth_port: int, **overrides):
    """A BFF (:func:`support.stacks.serve_bff`) with its default rate limits, which this module tests, and no
    aggregator: the auth routes never call it. ``overrides``: further settings."""
    return stacks.serve_bff(
        database_url, redis_url, auth_port, f"http://127.0.0.1:{free_port()}", default_limits=True, **overrides
    )


#: Auth's login budgets of the defaults' sizes (10 per name and address, 100 per name, 10 per device), per day:
#: at the defaults (per 15 minutes, per hour) one attempt comes back every 90 s, which a loaded machine may
#: reach in the middle of a test that counts them.
AUTH_SLOW_BUDGETS = {
    "login_rate_per_name_and_address": "10/day",
    "login_rate_per_name": "100/day",
    "login_rate_per_device": "10/day",
}


@pytest.fixture(scope="module")
async def stack(postgres, redis_url, tmp_path_factory):
    """Auth (bcrypt cost 4, its login budgets of the defaults' sizes per day: see AUTH_SLOW_BUDGETS) and a BFF
    with the default rate limits, shared by the module, on the module's own Redis database."""
    key_dir = tmp_path_factory.mktemp("keys")
    profile_database_url = new_database(postgres, "profile")
    async with (
        serve_auth(new_database(postgres, "auth"), key_dir, **AUTH_SLOW_BUDGETS) as auth,
        serve_bff(redis_url, profile_database_url, auth.port) as bff,
    ):
        yield Stack(bff, auth.port, key_dir / "jwt.pem", redis_url, profile_database_url)


@pytest.fixture(scope="module")
async def unlimited(stack):
    """A second BFF of the stack whose limits never trigger, so that every request reaches the handlers."""
    unlimited_rate = "1000000/second"
    async with serve_bff(
        stack.redis_url,
        stack.profile_database_url,
        stack.auth_port,
        login_rate_per_name=unlimited_rate,
        login_rate_per_address=unlimited_rate,
        login_rate_per_name_and_address=unlimited_rate,
        login_rate_per_device=unlimited_rate,
        register_rate_per_name=unlimited_rate,
        register_rate_per_address=unlimited_rate,
    ) as bff:
        yield bff


@pytest.fixture
async def clean(stack):
    """The shared stack with every rate-limit counter at zero."""
    redis = aioredis.Redis.from_url(stack.redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    return stack


@pytest.fixture
async def bff(clean) -> Bff:
    return clean.bff


async def new_user(bff: Bff) -> tuple[str, str, str]:
    """A registered, logged-in user: name, access token, refresh token."""
    name, _ = await bff.sign_up()
    access, token = await bff.sign_in(name)
    return name, access, token


# -- forged access tokens --------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode()


def _hmac_token(claims: dict, secret: bytes, kid: str) -> str:
    """An HS256 JWT keyed with ``secret``, built by hand: PyJWT rightly refuses to HMAC with a public key,
    which is exactly what the key-confusion attack makes a careless verifier do."""
    signing_input = (
        f"{_b64(jsonutil.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}))}.{_b64(jsonutil.dumps(claims))}"
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


async def test_forged_expired_and_foreign_access_tokens_are_401_at_the_bff(clean):
    bff = clean.bff
    _, genuine, _ = await new_user(bff)
    claims, kid = claims_of(genuine), jwt.get_unverified_header(genuine)["kid"]
    key = load_private_key(clean.key_file)
    public = key.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header, payload, signature = genuine.split(".")
    now = int(time.time())

    def signed(**changes) -> str:
        return jwt.encode({**claims, **changes}, key, algorithm="EdDSA", headers={"kid": kid})

    forged = {
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
        "alg none, signature kept": f"{_b64(jsonutil.dumps({'alg': 'none', 'kid': kid}))}.{payload}.{signature}",
        "HS256 keyed with the PEM public key": _hmac_token(claims, public_pem, kid),
        "HS256 keyed with the raw public key": _hmac_token(claims, public_raw, kid),
        "HS256 keyed with the JWK x": _hmac_token(claims, _b64(public_raw).encode(), kid),
        "tampered payload": f"{header}.{_b64(jsonutil.dumps({**claims, 'sub': str(int(claims['sub']) + 1)}))}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}",
        "expired": signed(iat=now - 1000, exp=now - 100),
        "wrong audience": signed(aud="another-service"),
        "wrong issuer": signed(iss="someone-else"),
        "unknown kid": jwt.encode(
            claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "k2"}
        ),
        "another key under the real kid": jwt.encode(
            claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid}
        ),
    }
    for label, token in forged.items():
        status, body = await bff.profile(token)
        assert status == 401, label
        assert body["error"]["code"] == "unauthenticated", label
    assert (await bff.profile(genuine))[0] == 200


# -- refresh cookies -------------------------------------------------------------------------------------


async def test_a_replayed_refresh_cookie_logs_out_the_thief_and_the_legitimate_holder(bff):
    _, _, stolen = await new_user(bff)
    # The user refreshes first; the thief then replays the cookie it copied before.
    status, _, users_cookie = await bff.refresh(stolen)
    assert status == 200
    status, body, cleared = await bff.refresh(stolen)
    assert (status, body["error"]["code"], cleared) == (401, "unauthenticated", "")
    # Reuse revoked the family: the user's own, freshly rotated cookie is dead too.
    assert (await bff.refresh(users_cookie))[0] == 401


async def test_a_refresh_cookie_presented_by_another_user_is_refused_and_its_session_revoked(bff):
    alice, alice_access, alice_cookie = await new_user(bff)
    bob, bob_access, bob_cookie = await new_user(bff)

    # Bob sends Alice's (stolen) cookie with his own access token: refused, and since the cookie is in the
    # wrong hands, Alice's session is revoked; she logs in again. Bob's own session is untouched.
    status, _body, _cookie = await bff.refresh(alice_cookie, Authorization=f"Bearer {bob_access}")
    assert status == 401
    assert (await bff.refresh(alice_cookie))[0] == 401
    status, body, bob_cookie = await bff.refresh(bob_cookie, Authorization=f"Bearer {bob_access}")
    assert status == 200 and claims_of(body["access_token"])["name"] == bob


async def test_a_user_cannot_log_out_another_users_session(bff):
    _alice, _alice_access, alice_cookie = await new_user(bff)
    _bob, bob_access, _bob_cookie = await new_user(bff)
    status, _body, _response = await bff.post(
        "/v1/logout",
        headers={"Cookie": f"__Host-refresh_token={alice_cookie}", "Authorization": f"Bearer {bob_access}"},
    )
    assert status == 403
    assert (await bff.refresh(alice_cookie))[0] == 200


async def test_a_refresh_may_name_its_user_with_an_expired_access_token_but_not_a_forged_one(clean):
    bff = clean.bff
    name, access, cookie = await new_user(bff)
    claims, kid = claims_of(access), jwt.get_unverified_header(access)["kid"]
    now = int(time.time())
    expired = jwt.encode(
        {**claims, "iat": now - 2000, "exp": now - 1000},
        load_private_key(clean.key_file), algorithm="EdDSA", headers={"kid": kid},
    )
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid})

    status, _body, _cookie = await bff.refresh(cookie, Authorization=f"Bearer {forged}")
    assert status == 401, "a token whose signature does not check out proves nothing"
    status, body, _cookie = await bff.refresh(cookie, Authorization=f"Bearer {expired}")
    assert status == 200 and claims_of(body["access_token"])["name"] == name


async def test_a_deleted_users_refresh_cookie_does_not_open_the_session_of_a_new_user_of_that_name(bff):
    name, access, cookie = await new_user(bff)
    async with bff.http.delete(
        f"{bff.url}/v2/user/profile", headers={"Authorization": f"Bearer {access}"}
    ) as r:
        assert r.status == 204
    assert (await bff.register(name))[0] == 201
    assert (await bff.refresh(cookie))[0] == 401


# -- enumeration, hostile credentials --------------------------------------------------------------------


async def test_an_unknown_name_and_a_wrong_password_get_the_same_401(bff):
    name, _, _ = await new_user(bff)
    answers = []
    for body in (
        {"name": name, "password": "wrong password"},
        {"name": new_name(), "password": PASSWORD},
        {"name": "no", "password": PASSWORD},  # a name no user can have
        {"name": name, "password": "x" * 10_000},  # a password no hash can match
    ):
        async with bff.http.post(f"{bff.url}/v1/login", json=body) as resp:
            answers.append((resp.status, await resp.read(), "Set-Cookie" in resp.headers))
    assert answers == [(401, answers[0][1], False)] * 4
    assert jsonutil.loads(answers[0][1]) == {
        "error": {"code": "unauthenticated", "message": "invalid name or password"}
    }


async def test_ten_thousand_character_and_empty_passwords_are_refused_with_a_reason(bff):
    name = new_name()
    for password, says in (("x" * 10_000, "72 bytes"), ("", "required"), ("é" * 37, "72 bytes")):
        status, body = await bff.register(name, password)
        assert status == 422 and says in body["error"]["message"], password[:10]
    assert (await bff.register(name))[0] == 201
    status, body, cookie = await bff.login(name, "")
    assert (status, cookie) == (422, None)


async def test_names_carrying_sql_or_control_characters_are_refused_and_nothing_breaks(bff):
    hostile = [
        "alice'; DROP TABLE users; --",
        "' OR '1'='1",
        'admin"--',
        "robert\x00",
        "bob\r\nSet-Cookie: refresh_token=x",
        "tab\there",
        "\x1b[31mred",
        "ri\u202eght-to-left",
        "zero\u200bwidth",
        "%00%27",
    ]
    for name in hostile:
        status, body = await bff.register(name)
        assert status == 422 and "name" in body["error"]["message"], repr(name)
        status, body, cookie = await bff.login(name)
        answer = (status, body["error"]["message"], cookie)
        assert answer == (401, "invalid name or password", None), repr(name)
    await new_user(bff)  # the users table is still there and working


async def test_a_lone_surrogate_in_a_name_or_password_is_422_not_a_crash(bff):
    headers = {"Content-Type": "application/json"}
    for raw in (
        b'{"name": "ab\\ud800c", "password": "correct horse"}',
        b'{"name": "abc", "password": "\\udfffxxxxxxxx"}',
    ):
        for route in ("/v1/register", "/v1/login"):
            status, body, _ = await bff.post(route, data=raw, headers=headers)
            assert (status, body["error"]["code"]) == (422, "invalid"), (route, raw)


# -- malformed requests on the auth routes ---------------------------------------------------------------


async def test_malformed_json_on_the_auth_routes_is_400(bff):
    headers = {"Content-Type": "application/json"}
    for route in ("/v1/login", "/v1/register"):
        for raw in (b"{", b'{"name": "a", "password": }', b"[]", b'"text"', b"\xff\xfe", b"{" * 50_000, b""):
            status, body, _ = await bff.post(route, data=raw, headers=headers)
            assert (status, body["error"]["code"]) == (400, "malformed_json"), (route, raw[:10])


async def test_wrong_content_types_on_the_auth_routes_are_415(bff):
    credentials = jsonutil.dumps({"name": new_name(), "password": PASSWORD})
    for route in ("/v1/login", "/v1/register"):
        for content_type in ("text/plain", "application/xml", "multipart/form-data; boundary=x", "", "json"):
            headers = {"Content-Type": content_type} if content_type else {}
            status, body, _ = await bff.post(route, data=credentials, headers=headers)
            assert (status, body["error"]["code"]) == (415, "unsupported_media_type"), (route, content_type)


async def test_one_megabyte_bodies_on_the_auth_routes_are_413_chunked_or_not(bff):
    megabyte = b'{"name": "' + b"a" * 1_000_000 + b'", "password": "x"}'

    async def chunks():
        for start in range(0, len(megabyte), 65_536):
            yield megabyte[start : start + 65_536]

    headers = {"Content-Type": "application/json"}
    for route in ("/v1/login", "/v1/register"):
        for data in (megabyte, chunks()):
            status, body, _ = await bff.post(route, data=data, headers=headers)
            assert (status, body["error"]["code"]) == (413, "payload_too_large"), route


# -- rate limits -----------------------------------------------------------------------------------------


#: The login budgets of the defaults' proportions, refilling slowly enough that a loaded machine never gives
#: an attempt back in the middle of a test that counts them (100/hour gives one back every 36 s).
SLOW_NAME_BUDGETS = {"login_rate_per_name": "100/day", "login_rate_per_name_and_address": "10/day"}


def assert_rate_limited(status: int, body: dict | None, resp: aiohttp.ClientResponse, period_s: int) -> None:
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= period_s


async def test_brute_force_on_one_name_from_one_address_reaches_429_even_with_the_right_password(clean):
    async with serve_bff(
        clean.redis_url, clean.profile_database_url, clean.auth_port, **SLOW_NAME_BUDGETS
    ) as bff:
        name, _, _ = await new_user(bff)
        for attempt in range(10):  # BFF_LOGIN_RATE_PER_NAME_AND_ADDRESS: 10 (per day here)
            status, _, _ = await bff.login(name, f"guess number {attempt}")
            assert status == 401
        status, body, resp = await bff.post("/v1/login", json={"name": name, "password": PASSWORD})
        assert_rate_limited(status, body, resp, 86400)
        # The same name in another spelling shares the bucket.
        assert (await bff.login(name.upper(), PASSWORD))[0] == 429


@contextlib.asynccontextmanager
async def behind_a_proxy(stack: Stack, **overrides):
    """A BFF of the stack behind a trusted reverse proxy (127.0.0.1): ``X-Forwarded-For`` names the client,
    so one test can speak from many addresses. ``overrides``: further settings."""
    async with serve_bff(
        stack.redis_url, stack.profile_database_url, stack.auth_port, trusted_proxies="127.0.0.1", **overrides
    ) as bff:
        yield bff


def device_cookie(response: aiohttp.ClientResponse) -> str | None:
    cookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        cookie.load(header)
    return cookie["__Host-login_device"].value if "__Host-login_device" in cookie else None


async def login_from(bff: Bff, address: str, name: str, password: str = PASSWORD, device: str | None = None):
    """Status, body and response of a login from client ``address`` (through the trusted proxy)."""
    headers = {"X-Forwarded-For": address}
    if device is not None:
        headers["Cookie"] = f"__Host-login_device={device}"
    return await bff.post("/v1/login", json={"name": name, "password": password}, headers=headers)


async def test_an_attacker_failing_fifty_logins_from_one_address_does_not_lock_the_owner_out(clean):
    async with behind_a_proxy(clean, **SLOW_NAME_BUDGETS) as bff:
        name, _, _ = await new_user(bff)
        statuses = [(await login_from(bff, "203.0.113.66", name, f"guess {n}"))[0] for n in range(50)]
        # The attacker is throttled: 10 guesses, then 429 before any password is checked.
        assert statuses == [401] * 10 + [429] * 40
        status, body, resp = await login_from(bff, "203.0.113.66", name, "guess 51")
        assert_rate_limited(status, body, resp, 86400)
        # The owner, from another address, with no device cookie, logs in.
        status, body, resp = await login_from(bff, "198.51.100.7", name)
        assert status == 200 and claims_of(body["access_token"])["name"] == name
        assert refresh_token(resp) and device_cookie(resp)


async def test_a_distributed_attack_spends_the_name_budget_but_the_owners_device_logs_in(clean):
    async with behind_a_proxy(clean, **SLOW_NAME_BUDGETS) as bff:
        name, _, _ = await new_user(bff)
        _, _, resp = await login_from(bff, "198.51.100.7", name)
        owners_device = device_cookie(resp)
        assert owners_device
        statuses = [(await login_from(bff, f"203.0.113.{n}", name, "a guess"))[0] for n in range(1, 102)]
        # BFF_LOGIN_RATE_PER_NAME: 100 from every address together.
        assert statuses == [401] * 100 + [429]
        # Now nobody without the owner's device cookie gets in, the owner's other devices included ...
        status, body, resp = await login_from(bff, "198.51.100.8", name)
        assert_rate_limited(status, body, resp, 86400)
        # ... but the device the owner logged in with does, from anywhere, and gets a fresh cookie.
        status, body, resp = await login_from(bff, "203.0.113.1", name, device=owners_device)
        assert status == 200 and claims_of(body["access_token"])["name"] == name
        assert device_cookie(resp) and device_cookie(resp) != owners_device
        # Another user's device cookie, or a forged one, counts for nothing.
        mallory, _, _ = await new_user(bff)
        _, _, resp = await login_from(bff, "203.0.113.200", mallory)
        for device in (device_cookie(resp), owners_device[:-2] + "xx", "garbage"):
            assert (await login_from(bff, "203.0.113.200", name, "a guess", device))[0] == 429


async def test_a_stolen_device_cookie_buys_its_own_small_budget_and_no_more(clean):
    async with behind_a_proxy(clean, login_rate_per_device="10/day", **SLOW_NAME_BUDGETS) as bff:
        name, _, _ = await new_user(bff)
        _, _, resp = await login_from(bff, "198.51.100.7", name)
        stolen = device_cookie(resp)
        statuses = [(await login_from(bff, "203.0.113.66", name, "a guess", stolen))[0] for _ in range(25)]
        # 10 on the device's budget (BFF_LOGIN_RATE_PER_DEVICE), then 10 as any client from that address.
        assert statuses == [401] * 20 + [429] * 5


async def test_auth_answers_429_with_retry_after_when_its_own_budget_is_spent(clean):
    """Auth keeps its own budgets (in PostgreSQL): a BFF with laxer limits still meets them, as 429."""
    unlimited = "1000000/second"
    async with serve_bff(
        clean.redis_url,
        clean.profile_database_url,
        clean.auth_port,
        login_rate_per_name=unlimited,
        login_rate_per_address=unlimited,
        login_rate_per_name_and_address=unlimited,
    ) as lax:
        name, _, _ = await new_user(lax)
        statuses = [(await lax.login(name, "a guess"))[0] for _ in range(11)]
        assert statuses == [401] * 10 + [429]  # AUTH_LOGIN_RATE_PER_NAME_AND_ADDRESS: 10 (per day here)
        status, body, resp = await lax.post("/v1/login", json={"name": name, "password": PASSWORD})
        assert_rate_limited(status, body, resp, 86400)
        assert "failed logins" in body["error"]["message"]


#: 30 per address as the default, but per hour: at 30/minute one attempt comes back every 2 s, less than 30
#: logins may take on a loaded machine.
SLOW_ADDRESS_BUDGET = "30/hour"


async def test_guessing_across_names_from_one_address_reaches_429(clean):
    async with serve_bff(
        clean.redis_url, clean.profile_database_url, clean.auth_port, login_rate_per_address=SLOW_ADDRESS_BUDGET
    ) as bff:
        for _ in range(30):  # BFF_LOGIN_RATE_PER_ADDRESS
            assert (await bff.login(new_name(), "some guess"))[0] == 401
        status, body, resp = await bff.post("/v1/login", json={"name": new_name(), "password": "x"})
        assert_rate_limited(status, body, resp, 3600)


async def test_successful_logins_do_not_count_against_the_limits(bff):
    name, _, _ = await new_user(bff)
    for _ in range(35):  # more than both login limits
        assert (await bff.login(name))[0] == 200


#: The register budgets of the defaults' sizes (5 per name, 60 per address), per day: at 5/minute one attempt
#: comes back every 12 s, less than a few registrations may take on a loaded machine.
SLOW_REGISTER_BUDGETS = {"register_rate_per_name": "5/day", "register_rate_per_address": "60/day"}


async def test_registering_is_limited_per_name_and_per_address(clean):
    async with serve_bff(
        clean.redis_url, clean.profile_database_url, clean.auth_port, **SLOW_REGISTER_BUDGETS
    ) as bff:
        name = new_name()
        assert (await bff.register(name))[0] == 201
        for _ in range(4):  # BFF_REGISTER_RATE_PER_NAME: 5; probing a taken name costs attempts too
            assert (await bff.register(name.upper()))[0] == 409
        status, body, resp = await bff.post("/v1/register", json={"name": name, "password": PASSWORD})
        assert_rate_limited(status, body, resp, 86400)

        for _ in range(55):  # BFF_REGISTER_RATE_PER_ADDRESS: 60; 5 used above (a refused one costs nothing)
            assert (await bff.register(new_name(), "short"))[0] == 422
        status, body, resp = await bff.post("/v1/register", json={"name": new_name(), "password": PASSWORD})
        assert_rate_limited(status, body, resp, 86400)


async def test_limits_are_shared_by_every_bff_replica(clean, postgres):
    replicas = [
        serve_bff(clean.redis_url, clean.profile_database_url, clean.auth_port, **SLOW_NAME_BUDGETS)
        for _ in range(2)
    ]
    async with replicas[0] as one, replicas[1] as other:
        name, _, _ = await new_user(one)
        for attempt in range(10):
            bff = one if attempt % 2 else other
            assert (await bff.login(name, "a wrong guess"))[0] == 401
        assert (await other.login(name))[0] == 429
        assert (await one.login(name))[0] == 429


async def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(clean):
    async def exhaust_and_probe(bff: Bff, spoofed: str, probe: str) -> int:
        for n in range(30):
            headers = {"X-Forwarded-For": f"198.51.100.{n}, {spoofed}"}
            assert (await bff.post("/v1/login", json={"name": new_name(), "password": "x"}, headers=headers))[
                0
            ] == 401
        headers = {"X-Forwarded-For": probe}
        return (await bff.post("/v1/login", json={"name": new_name(), "password": "x"}, headers=headers))[0]

    # Directly exposed: the header is the client's to write, so it moves no one to another bucket.
    async with serve_bff(
        clean.redis_url, clean.profile_database_url, clean.auth_port, login_rate_per_address=SLOW_ADDRESS_BUDGET
    ) as exposed:
        assert await exhaust_and_probe(exposed, "203.0.113.7", "203.0.113.8") == 429

    redis = aioredis.Redis.from_url(clean.redis_url)
    await redis.flushdb()
    await redis.aclose()
    async with serve_bff(
        clean.redis_url,
        clean.profile_database_url,
        clean.auth_port,
        trusted_proxies="127.0.0.1",
        login_rate_per_address=SLOW_ADDRESS_BUDGET,
    ) as proxied:
        # Behind a trusted proxy the client is the rightmost untrusted hop; the spoofed left part is ignored.
        assert await exhaust_and_probe(proxied, "203.0.113.7", "203.0.113.8") == 401
        assert await exhaust_and_probe(proxied, "203.0.113.9", "198.51.100.1, 203.0.113.9") == 429


async def test_the_limits_fail_closed_when_redis_is_down(stack, postgres, tmp_path):
    from launcher.embedded import ManagedProcess, redis_command

    port = free_port()
    process = ManagedProcess(
        "redis", redis_command(port, tmp_path / "redis", redis_acl_file(tmp_path)), port, tmp_path / "redis.log"
    )
    await asyncio.to_thread(process.start)
    try:
        async with serve_bff(
            redis_user_url(f"redis://127.0.0.1:{port}/0", "bff"), stack.profile_database_url, stack.auth_port
        ) as bff:
            name, _, _ = await new_user(bff)
            await asyncio.to_thread(process.stop)
            status, body, cookie = await bff.login(name)
            assert (status, body["error"]["code"], cookie) == (503, "unavailable", None)
    finally:
        await asyncio.to_thread(process.stop)


# -- cross-site requests, logging out everywhere, changing the password ------------------------------------


async def test_refresh_and_logout_refuse_a_request_a_browser_sends_for_another_site(bff):
    _, _, cookie = await new_user(bff)
    own = bff.url  # http://127.0.0.1:<port>, as a browser names this origin
    refused = [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": own},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://evil.127.0.0.1.nip.io"},
        {"Sec-Fetch-Site": "same-site"},
    ]
    for headers in refused:
        for route in ("/v1/refresh", "/v1/logout", "/v1/logout?all=true"):
            status, body, resp = await bff.post(
                route, headers={"Cookie": f"__Host-refresh_token={cookie}", **headers}
            )
            assert (status, body["error"]["code"]) == (403, "cross_site"), (route, headers)
            assert "Set-Cookie" not in resp.headers
    # None of them touched the session: the same-origin page and curl still use it.
    for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": own}, {"Sec-Fetch-Site": "none"}, {}):
        status, _, cookie = await bff.refresh(cookie, **headers)
        assert status == 200, headers


async def test_an_allowed_origin_of_the_same_site_may_use_the_session_cookie(clean):
    async with serve_bff(
        clean.redis_url,
        clean.profile_database_url,
        clean.auth_port,
        allowed_origins="https://app.example",
    ) as bff:
        _, _, cookie = await new_user(bff)
        status, _, cookie = await bff.refresh(cookie, **{"Sec-Fetch-Site": "same-site", "Origin": "https://app.example"})
        assert status == 200
        status, _, _ = await bff.refresh(cookie, **{"Sec-Fetch-Site": "cross-site", "Origin": "https://app.example"})
        assert status == 403, "a cross-site request never carries the SameSite=Strict cookie anyway"


async def test_logout_everywhere_ends_every_session_of_the_user_and_no_one_elses(bff):
    name, access, phone = await new_user(bff)
    _, _, laptop = await bff.login(name)
    _, _, bobs = await new_user(bff)
    status, _, resp = await bff.post("/v1/logout?all=true", headers={"Authorization": f"Bearer {access}"})
    assert status == 204 and refresh_token(resp) == ""
    for cookie in (phone, laptop):
        assert (await bff.refresh(cookie))[0] == 401
    assert (await bff.refresh(bobs))[0] == 200
    # The access token lives on until it expires (at most 15 minutes): it is verified without auth.
    assert (await bff.profile(access))[0] == 200


async def test_logout_everywhere_with_the_cookie_alone(bff):
    name, _, phone = await new_user(bff)
    _, _, laptop = await bff.login(name)
    status, _, _ = await bff.post("/v1/logout?all=true", headers=with_refresh_cookie(phone))
    assert status == 204
    assert (await bff.refresh(laptop))[0] == 401
    # The cookie is dead now: it proves no one any more.
    status, body, _ = await bff.post("/v1/logout?all=true", headers=with_refresh_cookie(phone))
    assert (status, body["error"]["code"]) == (401, "unauthenticated")
    status, body, _ = await bff.post("/v1/logout?all=true")
    assert (status, body["error"]["code"]) == (401, "unauthenticated")
    status, body, _ = await bff.post("/v1/logout?all=yes", headers=with_refresh_cookie(laptop))
    assert (status, body["error"]["code"]) == (422, "invalid")


async def change_password(bff: Bff, access: str, current: str, new: str):
    headers = {"Authorization": f"Bearer {access}"}
    body = {"current_password": current, "new_password": new}
    return await bff.post("/v1/password", json=body, headers=headers)


async def test_changing_the_password_ends_every_session_and_the_new_password_logs_in(bff):
    name, access, phone = await new_user(bff)
    _, _, laptop = await bff.login(name)
    status, body, resp = await change_password(bff, access, PASSWORD, "a brand new password")
    assert (status, body) == (204, None) and refresh_token(resp) == ""
    for cookie in (phone, laptop):
        assert (await bff.refresh(cookie))[0] == 401
    assert (await bff.login(name))[0] == 401
    status, body, _ = await bff.login(name, "a brand new password")
    assert status == 200 and claims_of(body["access_token"])["name"] == name


async def test_a_password_change_is_refused_without_the_current_password_or_a_valid_token(bff):
    _name, access, cookie = await new_user(bff)
    cases = [
        (access, "not the password", "a brand new password", 403, "forbidden"),
        (access, PASSWORD, "short", 422, "invalid"),
        (access + "x", PASSWORD, "a brand new password", 401, "unauthenticated"),
    ]
    for token, current, new, status, code in cases:
        got, body, _ = await change_password(bff, token, current, new)
        assert (got, body["error"]["code"]) == (status, code), (current, new)
    status, body, _ = await bff.post("/v1/password", json={"new_password": "x" * 10},
                                     headers={"Authorization": f"Bearer {access}"})
    assert (status, body["error"]["code"]) == (400, "missing_field")
    assert (await bff.refresh(cookie))[0] == 200, "nothing changed"


async def test_guessing_the_current_password_is_throttled_on_the_users_own_budget(bff):
    name, access, _ = await new_user(bff)
    statuses = [
        (await change_password(bff, access, f"guess {n}", "a brand new password"))[0] for n in range(11)
    ]
    assert statuses == [403] * 10 + [429]
    status, body, resp = await change_password(bff, access, PASSWORD, "a brand new password")
    assert_rate_limited(status, body, resp, 86400)
    assert (await bff.login(name))[0] == 200, "the name's login budgets are untouched"


async def test_an_attacker_spending_the_login_budgets_cannot_stop_the_owner_changing_the_password(clean):
    async with behind_a_proxy(clean, **SLOW_NAME_BUDGETS) as bff:
        name, access, _ = await new_user(bff)
        for n in range(101):
            await login_from(bff, f"203.0.113.{n}", name, "a guess")
        assert (await login_from(bff, "198.51.100.9", name))[0] == 429
        status, _, _ = await change_password(bff, access, PASSWORD, "a brand new password")
        assert status == 204


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's journey is written for curl")
async def test_the_readmes_curl_journey_keeps_its_session_on_a_plain_http_mesh(clean, tmp_path):
    """The embedded mesh serves plain HTTP with BFF_COOKIE_SECURE=false: the cookies keep their plain names
    (no prefix is allowed without Secure), and curl's cookie jar carries the session as the README shows."""
    async with serve_bff(
        clean.redis_url, clean.profile_database_url, clean.auth_port, cookie_secure=False
    ) as bff:
        jar, name = tmp_path / "cookies.txt", new_name()

        async def curl(*args: str) -> tuple[int, str]:
            process = await asyncio.create_subprocess_exec(
                "curl", "-s", "-w", "\n%{http_code}", *args, stdout=asyncio.subprocess.PIPE, cwd=tmp_path
            )
            output, _ = await process.communicate()
            body, _, status = output.decode().rpartition("\n")
            return int(status), body

        credentials = json.dumps({"name": name, "password": PASSWORD})
        json_body = ("-H", "Content-Type: application/json", "-d", credentials)
        assert (await curl("-X", "POST", f"{bff.url}/v1/register", *json_body))[0] == 201
        status, body = await curl("-c", "cookies.txt", "-X", "POST", f"{bff.url}/v1/login", *json_body)
        assert status == 200 and json.loads(body)["access_token"]
        stored = jar.read_text()
        assert "\trefresh_token\t" in stored and "\tlogin_device\t" in stored and "__Host-" not in stored
        jar_args = ("-b", "cookies.txt", "-c", "cookies.txt")
        status, body = await curl(*jar_args, "-X", "POST", f"{bff.url}/v1/refresh")
        assert status == 200 and claims_of(json.loads(body)["access_token"])["name"] == name
        status, _ = await curl(*jar_args, "-X", "POST", f"{bff.url}/v1/logout")
        assert status == 204
        assert (await curl("-b", "cookies.txt", "-X", "POST", f"{bff.url}/v1/refresh"))[0] == 401


# -- key rotation ----------------------------------------------------------------------------------------


async def test_rotating_the_signing_key_logs_nobody_out(postgres, redis_url, tmp_path):
    """Auth restarts with a new key and the old public key in JWT_RETIRED_PUBLIC_KEYS_FILE: a token signed
    before still works at the BFF, and tokens signed after carry the new kid, which the BFF fetches."""
    old_key, new_key, retired = tmp_path / "old.pem", tmp_path / "new.pem", tmp_path / "retired.pem"
    old_key.write_bytes(generate_private_key_pem())
    new_key.write_bytes(generate_private_key_pem())
    retired.write_bytes(
        load_private_key(old_key)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    auth_settings = AuthSettings(
        port=free_port(),
        database_url=new_database(postgres, "auth"),
        jwt_private_key_file=old_key,
        bcrypt_cost=4,
    )
    auth = await start_auth(auth_settings)
    try:
        async with serve_bff(redis_url, new_database(postgres, "profile"), auth_settings.port) as bff:
            _, before, _ = await new_user(bff)
            assert (await bff.profile(before))[0] == 200  # the BFF now caches the old key only
            keys_fetched_at = time.monotonic()

            await auth.stop()
            auth = await start_auth(
                auth_settings.model_copy(
                    update={"jwt_private_key_file": new_key, "jwt_retired_public_keys_file": retired}
                )
            )
            assert (await bff.profile(before))[0] == 200
            # The BFF refetches on an unknown kid at most once per refetch interval since its last fetch.
            await asyncio.sleep(max(0.0, keys_fetched_at + DEFAULT_REFETCH_INTERVAL_S - time.monotonic()))
            _, after, _ = await new_user(bff)
            assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
            assert (await bff.profile(after))[0] == 200
            assert (await bff.profile(before))[0] == 200
    finally:
        await auth.stop()


# -- no input makes a 5xx --------------------------------------------------------------------------------

#: Any text, lone surrogates included: JSON can carry them as "\\ud800" escapes.
_any_text = st.text(st.characters(exclude_categories=()), max_size=80)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text, inner, max_size=4),
    max_leaves=12,
)
_credentials = st.fixed_dictionaries(
    {}, optional={"name": _any_text | _json_values, "password": _any_text | _json_values}
)
# The standard library's encoder, not the project's: it writes what clients may send and orjson refuses
# (integers beyond 64 bits, NaN, lone surrogates as escapes).
_bodies = (
    _credentials.map(lambda value: json.dumps(value).encode())
    | _json_values.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=300)
)
_content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
    ]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_cookies = st.one_of(
    st.just(""),
    _header_text.map(lambda value: f"__Host-refresh_token={value}"),
    st.lists(
        st.tuples(
            st.sampled_from(["__Host-refresh_token", "__Host-login_device", "refresh_token", "x"]),
            _header_text,
        ),
        max_size=3,
    ).map(lambda pairs: "; ".join(f"{k}={v}" for k, v in pairs)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(
        ["/v1/register", "/v1/login", "/v1/refresh", "/v1/logout", "/v1/logout?all=true", "/v1/password"]
    ),
    body=_bodies,
    content_type=_content_types,
    cookie=_cookies,
    extra=st.dictionaries(
        st.sampled_from(
            ["Authorization", "X-Forwarded-For", "Origin", "Sec-Fetch-Site", "Accept", "X-Anything"]
        ),
        _header_text,
        max_size=3,
    ),
)
async def test_no_request_to_the_auth_routes_gets_a_5xx(unlimited, route, body, content_type, cookie, extra):
    headers = {**extra, "Content-Type": content_type}
    if cookie:
        headers["Cookie"] = cookie
    async with unlimited.http.post(f"{unlimited.url}{route}", data=body, headers=headers) as resp:
        assert resp.status < 500, (resp.status, await resp.text())
        if resp.status >= 400:
            error = (await resp.json())["error"]
            assert set(error) == {"code", "message"}
