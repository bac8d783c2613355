"""The auth service over gRPC, against a real PostgreSQL: what the BFF (and an attacker) can observe."""

from __future__ import annotations

import asyncio
import hashlib
import time

import asyncpg
import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from auth import migrations
from auth.server import start
from auth.settings import AuthSettings
from auth.store import LoginBudgetStore, create_engine
from auth.tokens import generate_private_key_pem, load_private_key
from crypto_mesh import jsonutil
from crypto_mesh.grpc_tls import tls_channel
from support.ports import free_port
from crypto_mesh.pki import AUTH, PROFILE_BFF
from crypto_mesh.proto import auth_pb2, auth_pb2_grpc
from crypto_mesh.throttle import Charge, Rate

PASSWORD = "correct horse"
Code = grpc.StatusCode


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "jwt.pem"
    path.write_bytes(generate_private_key_pem())
    return path


def bff_channel(mesh_pki, port: int) -> grpc.aio.Channel:
    """A channel to the auth server on ``port`` as the BFF, its one allowed caller."""
    return tls_channel(f"127.0.0.1:{port}", mesh_pki[PROFILE_BFF].load(), AUTH)


@pytest.fixture
def make_settings(fresh_database, key_file):
    """Factory of settings for a server on a free port with its own empty database and bcrypt cost 4."""

    def make(**overrides) -> AuthSettings:
        values = {
            "port": 0,
            "database_url": fresh_database("auth"),
            "jwt_private_key_file": key_file,
            "bcrypt_cost": 4,
            **overrides,
        }
        return AuthSettings(**values)

    return make


@pytest.fixture
async def settings(make_settings):
    return make_settings()


@pytest.fixture
async def server(settings):
    running = await start(settings)
    yield running
    await running.stop()


@pytest.fixture
async def channel(server, mesh_pki):
    async with bff_channel(mesh_pki, server.port) as channel:
        yield channel


@pytest.fixture
def stub(channel):
    return auth_pb2_grpc.AuthStub(channel)


async def rpc_error(call) -> grpc.aio.AioRpcError:
    """The error a call ends with; fails the test if it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def register(stub, name="alice", password=PASSWORD) -> auth_pb2.RegisterResponse:
    return await stub.Register(auth_pb2.RegisterRequest(name=name, password=password))


async def login(stub, name="alice", password=PASSWORD) -> auth_pb2.TokenPair:
    return await stub.Login(auth_pb2.LoginRequest(name=name, password=password))


async def refresh(stub, token: str) -> auth_pb2.TokenPair:
    return await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=token))


async def health_status(channel, service: str = "") -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return response.status


async def test_health_is_serving_once_start_returns(channel):
    assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert await health_status(channel, "crypto.auth.v1.Auth") == health_pb2.HealthCheckResponse.SERVING


async def test_register_login_refresh_logout_delete_round_trip(stub):
    registered = await register(stub, "Alice")
    assert registered.name == "Alice" and registered.user_id > 0

    before = int(time.time())
    pair = await login(stub, "alice")
    after = int(time.time()) + 1
    assert (pair.user_id, pair.name) == (registered.user_id, "Alice")
    # Issued during the call (whole seconds), however long the call took.
    assert before + 900 <= pair.access_expires_at <= after + 900
    assert before + 2_592_000 <= pair.refresh_expires_at <= after + 2_592_000

    rotated = await refresh(stub, pair.refresh_token)
    assert rotated.refresh_token != pair.refresh_token
    assert rotated.access_token != pair.access_token
    assert rotated.user_id == registered.user_id

    logged_out = await stub.Logout(auth_pb2.LogoutRequest(refresh_token=rotated.refresh_token))
    assert logged_out == auth_pb2.LogoutResponse()
    assert (await rpc_error(refresh(stub, rotated.refresh_token))).code() == Code.UNAUTHENTICATED

    deleted = await stub.DeleteUser(auth_pb2.DeleteUserRequest(access_token=rotated.access_token))
    assert deleted.user_id == registered.user_id
    assert (await rpc_error(login(stub, "alice"))).code() == Code.UNAUTHENTICATED


async def test_register_answers_the_normalised_name(stub):
    registered = await register(stub, "  \uff42\uff4f\uff42.smith ")  # full-width "bob"
    assert registered.name == "bob.smith"
    assert (await login(stub, "bob.smith")).user_id == registered.user_id


async def test_a_taken_name_in_any_case_is_already_exists(stub):
    await register(stub, "alice")
    for taken_as in ("alice", "ALICE", "Alice", " alice "):
        error = await rpc_error(register(stub, taken_as, "another password"))
        assert error.code() == Code.ALREADY_EXISTS, taken_as


async def test_an_invalid_name_is_invalid_argument(stub):
    for name in ("", "ab", "a" * 33, "two words", "émile", "semi;colon"):
        error = await rpc_error(register(stub, name))
        assert error.code() == Code.INVALID_ARGUMENT, name
        assert "name" in error.details()


async def test_a_password_outside_the_policy_is_invalid_argument(stub):
    cases = [
        ("é" * 36 + "x", "72 bytes"),  # 37 characters but 73 UTF-8 bytes: bcrypt would silently drop one
        ("x" * 73, "72 bytes"),
        ("1234567", "at least 8"),
        ("", "required"),
    ]
    for password, says in cases:
        error = await rpc_error(register(stub, "alice", password))
        assert error.code() == Code.INVALID_ARGUMENT
        assert says in error.details()


async def test_a_72_byte_password_is_checked_in_full(stub):
    password = "p" * 71 + "1"
    await register(stub, "alice", password)
    assert (await login(stub, "alice", password)).name == "alice"
    error = await rpc_error(login(stub, "alice", "p" * 71 + "2"))
    assert error.code() == Code.UNAUTHENTICATED


async def test_unknown_name_and_wrong_password_are_indistinguishable(stub):
    await register(stub, "alice")
    unknown = await rpc_error(login(stub, "mallory"))
    wrong = await rpc_error(login(stub, "alice", "wrong password"))
    malformed = await rpc_error(login(stub, "no", "wrong password"))
    too_long = await rpc_error(login(stub, "alice", "x" * 100))
    assert {(e.code(), e.details()) for e in (unknown, wrong, malformed, too_long)} == {
        (Code.UNAUTHENTICATED, "invalid name or password")
    }


async def test_refresh_rotates_and_a_reused_token_revokes_the_whole_family(stub):
    await register(stub)
    first = await login(stub)
    second = await refresh(stub, first.refresh_token)

    # An attacker replays the rotated token: refused, and the session is over for everyone.
    assert (await rpc_error(refresh(stub, first.refresh_token))).code() == Code.UNAUTHENTICATED
    assert (await rpc_error(refresh(stub, second.refresh_token))).code() == Code.UNAUTHENTICATED


async def test_reuse_detection_leaves_other_sessions_alone(stub):
    await register(stub)
    laptop, phone = await login(stub), await login(stub)
    await refresh(stub, laptop.refresh_token)
    await rpc_error(refresh(stub, laptop.refresh_token))
    assert (await refresh(stub, phone.refresh_token)).name == "alice"


async def test_concurrent_refreshes_of_one_token_have_at_most_one_winner(stub):
    await register(stub)
    pair = await login(stub)
    attempts = (refresh(stub, pair.refresh_token) for _ in range(5))
    results = await asyncio.gather(*attempts, return_exceptions=True)
    winners = [r for r in results if isinstance(r, auth_pb2.TokenPair)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 4
    assert {e.code() for e in losers} == {Code.UNAUTHENTICATED}
    # The losers were replays of a rotated token, so the family died, the winner's new token with it.
    assert (await rpc_error(refresh(stub, winners[0].refresh_token))).code() == Code.UNAUTHENTICATED


async def test_logout_ends_only_that_session_and_is_idempotent(stub):
    await register(stub)
    laptop, phone = await login(stub), await login(stub)
    for _ in range(2):
        answer = await stub.Logout(auth_pb2.LogoutRequest(refresh_token=laptop.refresh_token))
        assert answer == auth_pb2.LogoutResponse()
    assert (await rpc_error(refresh(stub, laptop.refresh_token))).code() == Code.UNAUTHENTICATED
    assert (await refresh(stub, phone.refresh_token)).name == "alice"


async def test_a_refresh_token_presented_for_another_user_is_refused_and_its_family_revoked(stub):
    alice_id = (await register(stub, "alice")).user_id
    mallory_id = (await register(stub, "mallory")).user_id
    alices = await login(stub, "alice")

    # Mallory holds a stolen copy of Alice's refresh token and presents it as herself.
    stolen = auth_pb2.RefreshRequest(refresh_token=alices.refresh_token, expected_user_id=mallory_id)
    assert (await rpc_error(stub.Refresh(stolen))).code() == Code.UNAUTHENTICATED
    # The token was in the wrong hands, so the session is over: Alice logs in again.
    assert (await rpc_error(refresh(stub, alices.refresh_token))).code() == Code.UNAUTHENTICATED

    again = await login(stub, "alice")
    own = auth_pb2.RefreshRequest(refresh_token=again.refresh_token, expected_user_id=alice_id)
    assert (await stub.Refresh(own)).user_id == alice_id


async def test_a_user_cannot_log_out_another_users_session(stub):
    await register(stub, "alice")
    mallory_id = (await register(stub, "mallory")).user_id
    alices = await login(stub, "alice")
    foreign = auth_pb2.LogoutRequest(refresh_token=alices.refresh_token, expected_user_id=mallory_id)
    assert (await rpc_error(stub.Logout(foreign))).code() == Code.PERMISSION_DENIED
    assert (await refresh(stub, alices.refresh_token)).name == "alice"


async def test_logout_of_an_unknown_token_is_ok(stub):
    await register(stub)
    pair = await login(stub)
    answer = await stub.Logout(auth_pb2.LogoutRequest(refresh_token="never-issued-token"))
    assert answer == auth_pb2.LogoutResponse()
    assert (await refresh(stub, pair.refresh_token)).name == "alice"


async def test_an_unknown_refresh_token_is_unauthenticated(stub):
    error = await rpc_error(refresh(stub, "never-issued-token"))
    assert error.code() == Code.UNAUTHENTICATED


async def test_an_expired_refresh_token_is_unauthenticated(make_settings, mesh_pki):
    running = await start(make_settings(refresh_token_ttl_s=1))
    try:
        async with bff_channel(mesh_pki, running.port) as channel:
            stub = auth_pb2_grpc.AuthStub(channel)
            await register(stub)
            pair = await login(stub)
            await asyncio.sleep(max(0.0, pair.refresh_expires_at - time.time()) + 1.1)
            error = await rpc_error(refresh(stub, pair.refresh_token))
    finally:
        await running.stop()
    assert error.code() == Code.UNAUTHENTICATED


async def test_refresh_tokens_are_stored_only_as_sha256(stub, settings):
    await register(stub)
    pair = await login(stub)
    conn = await asyncpg.connect(settings.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await conn.fetch("SELECT token_hash FROM refresh_tokens")
        stored = [bytes(row["token_hash"]) for row in rows]
        dump = str(await conn.fetch("SELECT * FROM refresh_tokens"))
    finally:
        await conn.close()
    assert stored == [hashlib.sha256(pair.refresh_token.encode()).digest()]
    assert pair.refresh_token not in dump


async def test_access_token_verifies_with_the_published_jwks(stub, settings):
    registered = await register(stub)
    pair = await login(stub)
    jwks = jwt.PyJWKSet.from_json((await stub.GetPublicKeys(auth_pb2.GetPublicKeysRequest())).jwks_json)
    kid = jwt.get_unverified_header(pair.access_token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(
        pair.access_token,
        key,
        algorithms=["EdDSA"],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        options={"require": ["sub", "name", "iat", "exp", "iss", "aud", "jti"]},
    )
    assert claims["sub"] == str(registered.user_id) and claims["name"] == "alice"
    assert claims["exp"] == pair.access_expires_at == claims["iat"] + 900


async def test_delete_user_refuses_forged_access_tokens(stub, settings):
    registered = await register(stub)
    pair = await login(stub)
    header, payload, signature = pair.access_token.split(".")
    claims = jwt.decode(pair.access_token, options={"verify_signature": False})
    kid = jwt.get_unverified_header(pair.access_token)["kid"]
    key = load_private_key(settings.jwt_private_key_file)
    b64 = jwt.utils.base64url_encode
    forged = {
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
        "tampered payload": f"{header}.{b64(jsonutil.dumps({**claims, 'sub': '999'})).decode()}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "expired": jwt.encode(
            {**claims, "iat": claims["iat"] - 2000, "exp": claims["iat"] - 1000},
            key,
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
        "other audience": jwt.encode(
            {**claims, "aud": "other"}, key, algorithm="EdDSA", headers={"kid": kid}
        ),
        "empty": "",
    }
    for label, token in forged.items():
        error = await rpc_error(stub.DeleteUser(auth_pb2.DeleteUserRequest(access_token=token)))
        assert error.code() in (Code.UNAUTHENTICATED, Code.INVALID_ARGUMENT), label
    assert (await login(stub)).user_id == registered.user_id


async def test_delete_user_by_credentials_removes_the_user_and_its_sessions(stub):
    registered = await register(stub)
    pair = await login(stub)
    wrong = auth_pb2.Credentials(name="alice", password="wrong password")
    error = await rpc_error(stub.DeleteUser(auth_pb2.DeleteUserRequest(credentials=wrong)))
    assert error.code() == Code.UNAUTHENTICATED

    right = auth_pb2.Credentials(name="ALICE", password=PASSWORD)
    deleted = await stub.DeleteUser(auth_pb2.DeleteUserRequest(credentials=right))
    assert deleted.user_id == registered.user_id
    assert (await rpc_error(refresh(stub, pair.refresh_token))).code() == Code.UNAUTHENTICATED
    assert (await register(stub)).user_id != registered.user_id  # the name is free again


async def test_deleting_an_already_deleted_user_is_not_found(stub):
    registered = await register(stub)
    pair = await login(stub)
    deleted = await stub.DeleteUser(auth_pb2.DeleteUserRequest(access_token=pair.access_token))
    assert deleted.user_id == registered.user_id
    error = await rpc_error(stub.DeleteUser(auth_pb2.DeleteUserRequest(access_token=pair.access_token)))
    assert error.code() == Code.NOT_FOUND


async def test_an_empty_request_is_a_client_error_never_a_server_error(stub):
    empty_requests = [
        ("Register", auth_pb2.RegisterRequest()),
        ("Login", auth_pb2.LoginRequest()),
        ("Refresh", auth_pb2.RefreshRequest()),
        ("Logout", auth_pb2.LogoutRequest()),
        ("DeleteUser", auth_pb2.DeleteUserRequest()),
        ("DeleteUser", auth_pb2.DeleteUserRequest(credentials=auth_pb2.Credentials())),
        ("LogoutAll", auth_pb2.LogoutAllRequest()),
        ("ChangePassword", auth_pb2.ChangePasswordRequest()),
    ]
    for method, request_message in empty_requests:
        error = await rpc_error(getattr(stub, method)(request_message))
        assert error.code() in (Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED), method
    assert (await stub.GetPublicKeys(auth_pb2.GetPublicKeysRequest())).jwks_json


async def test_malformed_or_oversized_requests_are_refused_and_the_server_keeps_serving(channel, stub):
    raw_login = channel.unary_unary("/crypto.auth.v1.Auth/Login")
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x02\xc3\x28", b"\x0a\xff\xff\xff\xff\x0f"):
        error = await rpc_error(raw_login(garbage))
        assert error.code() == Code.INVALID_ARGUMENT
    error = await rpc_error(login(stub, "x" * 100_000))
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    await register(stub)


async def test_a_database_outage_is_unavailable_not_a_wrong_password(postgres, make_settings, mesh_pki):
    settings = make_settings()
    running = await start(settings)
    try:
        async with bff_channel(mesh_pki, running.port) as channel:
            stub = auth_pb2_grpc.AuthStub(channel)
            await register(stub)
            admin = await asyncpg.connect(postgres.url("postgres", driver="postgresql"))
            try:
                database = make_url(settings.database_url).database
                await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
            finally:
                await admin.close()
            for call in (login(stub), register(stub, "bob"), refresh(stub, "some-token")):
                assert (await rpc_error(call)).code() == Code.UNAVAILABLE
            # The periodic ping notices within one interval (5 s) and health stops claiming SERVING.
            deadline = time.monotonic() + 10
            while await health_status(channel) == health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "health still SERVING with the database gone"
                await asyncio.sleep(0.2)
    finally:
        await running.stop()


async def test_start_waits_for_the_database_and_reports_not_serving_meanwhile(postgres, key_file, mesh_pki):
    database = f"auth_late_{int(time.time() * 1000)}"
    port = free_port()
    settings = AuthSettings(
        port=port, database_url=postgres.url(database), jwt_private_key_file=key_file, bcrypt_cost=4
    )
    starting = asyncio.create_task(start(settings))
    try:
        async with bff_channel(mesh_pki, port) as channel:
            await channel.channel_ready()
            assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not starting.done()
            postgres.create_database(database)
            running = await asyncio.wait_for(starting, timeout=30)
            try:
                assert running.port == port
                assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
                assert (await register(auth_pb2_grpc.AuthStub(channel))).name == "alice"
            finally:
                await running.stop()
    finally:
        starting.cancel()


async def test_tokens_of_a_retired_key_stay_valid_after_rotation(make_settings, tmp_path, key_file, mesh_pki):
    old_settings = make_settings()
    running = await start(old_settings)
    try:
        async with bff_channel(mesh_pki, running.port) as channel:
            stub = auth_pb2_grpc.AuthStub(channel)
            registered = await register(stub)
            old_token = (await login(stub)).access_token
    finally:
        await running.stop()

    from cryptography.hazmat.primitives import serialization

    retired = tmp_path / "retired.pem"
    retired.write_bytes(
        load_private_key(key_file)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    new_key = tmp_path / "new.pem"
    new_key.write_bytes(generate_private_key_pem())
    rotated_settings = old_settings.model_copy(
        update={"jwt_private_key_file": new_key, "jwt_retired_public_keys_file": retired}
    )
    running = await start(rotated_settings)
    try:
        async with bff_channel(mesh_pki, running.port) as channel:
            stub = auth_pb2_grpc.AuthStub(channel)
            jwks = jsonutil.loads((await stub.GetPublicKeys(auth_pb2.GetPublicKeysRequest())).jwks_json)
            new_token = (await login(stub)).access_token
            deleted = await stub.DeleteUser(auth_pb2.DeleteUserRequest(access_token=old_token))
    finally:
        await running.stop()
    kids = [key["kid"] for key in jwks["keys"]]
    assert len(kids) == 2 and kids[0] == jwt.get_unverified_header(new_token)["kid"]
    assert jwt.get_unverified_header(old_token)["kid"] == kids[1]
    assert deleted.user_id == registered.user_id


async def test_raising_the_bcrypt_cost_upgrades_a_hash_at_the_next_login(make_settings, mesh_pki):
    settings = make_settings(bcrypt_cost=4)
    for cost in (4, 5):
        running = await start(settings.model_copy(update={"bcrypt_cost": cost}))
        try:
            async with bff_channel(mesh_pki, running.port) as channel:
                stub = auth_pb2_grpc.AuthStub(channel)
                if cost == 4:
                    assert (await register(stub)).name == "alice"
                assert (await login(stub)).name == "alice"
        finally:
            await running.stop()
    conn = await asyncpg.connect(settings.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE name_key = 'alice'")
    finally:
        await conn.close()
    assert stored.startswith("$2b$05$")


# -- sessions: absolute lifetime, logging out everywhere, changing the password ---------------------------


async def _sql(settings: AuthSettings, query: str, *args):
    conn = await asyncpg.connect(settings.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def test_a_session_older_than_its_absolute_lifetime_cannot_be_refreshed(stub, settings):
    await register(stub)
    old, young = await login(stub), await login(stub)
    # The first session logged in a minute more than 30 days ago (the default absolute lifetime) and was
    # refreshed ever since.
    digest = hashlib.sha256(old.refresh_token.encode()).digest()
    await _sql(
        settings,
        "UPDATE refresh_tokens SET family_started_at = now() - interval '30 days 1 minute' "
        "WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
        digest,
    )
    assert (await rpc_error(refresh(stub, old.refresh_token))).code() == Code.UNAUTHENTICATED
    assert (await refresh(stub, young.refresh_token)).user_id == young.user_id


async def test_a_refreshed_token_never_outlives_its_session(stub, settings):
    await register(stub)
    pair = await login(stub)
    digest = hashlib.sha256(pair.refresh_token.encode()).digest()
    started = (
        await _sql(
            settings,
            "UPDATE refresh_tokens SET family_started_at = now() - interval '29 days' WHERE token_hash = $1 "
            "RETURNING floor(extract(epoch FROM family_started_at))::bigint AS started",
            digest,
        )
    )[0]["started"]
    rotated = await refresh(stub, pair.refresh_token)
    assert rotated.refresh_expires_at == started + 2_592_000
    assert rotated.refresh_expires_at < time.time() + 86_400 + 5


async def test_logout_all_with_an_access_token_ends_every_session_of_that_user_only(stub):
    await register(stub, "alice")
    await register(stub, "bob")
    phone, laptop, bobs = await login(stub, "alice"), await login(stub, "alice"), await login(stub, "bob")
    laptop = await refresh(stub, laptop.refresh_token)
    answer = await stub.LogoutAll(auth_pb2.LogoutAllRequest(access_token=phone.access_token))
    assert (answer.user_id, answer.sessions_revoked) == (phone.user_id, 2)
    for token in (phone.refresh_token, laptop.refresh_token):
        assert (await rpc_error(refresh(stub, token))).code() == Code.UNAUTHENTICATED
    assert (await refresh(stub, bobs.refresh_token)).name == "bob"
    again = await stub.LogoutAll(auth_pb2.LogoutAllRequest(access_token=phone.access_token))
    assert again.sessions_revoked == 0


async def test_logout_all_with_a_refresh_token_needs_a_live_one(stub):
    await register(stub)
    phone, laptop = await login(stub), await login(stub)
    rotated = await refresh(stub, phone.refresh_token)
    error = await rpc_error(stub.LogoutAll(auth_pb2.LogoutAllRequest(refresh_token=phone.refresh_token)))
    assert error.code() == Code.UNAUTHENTICATED, "a rotated token proves nothing any more"
    answer = await stub.LogoutAll(auth_pb2.LogoutAllRequest(refresh_token=rotated.refresh_token))
    assert answer.sessions_revoked == 2
    assert (await rpc_error(refresh(stub, laptop.refresh_token))).code() == Code.UNAUTHENTICATED
    for forged in (
        auth_pb2.LogoutAllRequest(refresh_token="x" * 43),
        auth_pb2.LogoutAllRequest(access_token="x.y.z"),
    ):
        assert (await rpc_error(stub.LogoutAll(forged))).code() == Code.UNAUTHENTICATED


async def change_password(stub, access_token: str, current: str, new: str):
    return await stub.ChangePassword(
        auth_pb2.ChangePasswordRequest(access_token=access_token, current_password=current, new_password=new)
    )


async def test_changing_the_password_ends_every_session_and_only_the_new_one_logs_in(stub):
    await register(stub)
    phone, laptop = await login(stub), await login(stub)
    answer = await change_password(stub, laptop.access_token, PASSWORD, "a brand new password")
    assert (answer.user_id, answer.sessions_revoked) == (laptop.user_id, 2)
    for token in (phone.refresh_token, laptop.refresh_token):
        assert (await rpc_error(refresh(stub, token))).code() == Code.UNAUTHENTICATED
    assert (await rpc_error(login(stub))).code() == Code.UNAUTHENTICATED
    assert (await login(stub, password="a brand new password")).user_id == laptop.user_id


async def test_a_password_change_needs_the_current_password_and_a_valid_new_one(stub):
    await register(stub)
    pair = await login(stub)
    wrong = await rpc_error(
        change_password(stub, pair.access_token, "not the password", "a brand new password")
    )
    assert (wrong.code(), wrong.details()) == (Code.PERMISSION_DENIED, "the current password is wrong")
    short = await rpc_error(change_password(stub, pair.access_token, PASSWORD, "short"))
    assert short.code() == Code.INVALID_ARGUMENT and "at least 8" in short.details()
    forged = await rpc_error(change_password(stub, pair.access_token + "x", PASSWORD, "a brand new password"))
    assert forged.code() == Code.UNAUTHENTICATED
    assert (await refresh(stub, pair.refresh_token)).user_id == pair.user_id, "nothing changed"


# -- auth's own failed-login budgets ---------------------------------------------------------------------


async def login_from(stub, address: str, name="alice", password=PASSWORD, device="") -> auth_pb2.TokenPair:
    return await stub.Login(
        auth_pb2.LoginRequest(name=name, password=password, client_address=address, device_token=device)
    )


async def test_an_attacker_from_one_address_is_throttled_and_the_owner_from_another_logs_in(stub):
    await register(stub)
    codes = []
    for attempt in range(50):
        try:
            await login_from(stub, "203.0.113.66", password=f"guess {attempt}")
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
            if error.code() == Code.RESOURCE_EXHAUSTED:
                retry_after = int(dict(error.trailing_metadata())["grpc-retry-pushback-ms"]) // 1000
                assert 1 <= int(retry_after) <= 900
    # AUTH_LOGIN_RATE_PER_NAME_AND_ADDRESS: 10 per 15 minutes; then refused before any password check.
    assert codes == [Code.UNAUTHENTICATED] * 10 + [Code.RESOURCE_EXHAUSTED] * 40
    assert (await login_from(stub, "198.51.100.7")).name == "alice"
    # Another name from the attacker's address is not affected by the guesses at alice.
    await register(stub, "bob")
    assert (await login_from(stub, "203.0.113.66", name="bob")).name == "bob"


#: The default budgets' proportions, refilling slowly enough that a loaded machine never gives an attempt back
#: in the middle of a test that counts 100 of them (100/hour gives one back every 36 s).
SLOW_NAME_BUDGETS = {"login_rate_per_name": "100/day", "login_rate_per_name_and_address": "10/day"}


@pytest.fixture
async def slow_stub(make_settings, mesh_pki):
    """A stub of a server whose name budgets refill slowly (:data:`SLOW_NAME_BUDGETS`)."""
    running = await start(make_settings(**SLOW_NAME_BUDGETS))
    try:
        async with bff_channel(mesh_pki, running.port) as channel:
            yield auth_pb2_grpc.AuthStub(channel)
    finally:
        await running.stop()


async def test_guesses_from_many_addresses_spend_the_name_budget_but_not_the_owners_device(slow_stub):
    stub = slow_stub
    await register(stub)
    owner = await login_from(stub, "198.51.100.7")
    assert owner.device_token and owner.device_expires_at > time.time()
    refused = 0
    for n in range(101):  # AUTH_LOGIN_RATE_PER_NAME: 100, from every address together
        try:
            await login_from(stub, f"2001:db8:{n}::1", password="a guess")
        except grpc.aio.AioRpcError as error:
            refused += error.code() == Code.RESOURCE_EXHAUSTED
    assert refused == 1
    # Anyone without the owner's device token is refused now, the right password or not ...
    assert (await rpc_error(login_from(stub, "198.51.100.8"))).code() == Code.RESOURCE_EXHAUSTED
    # ... but the owner's device logs in, from anywhere; and its token is another user's nowhere else.
    assert (await login_from(stub, "203.0.113.1", device=owner.device_token)).name == "alice"
    await register(stub, "mallory")
    mallorys = (await login_from(stub, "203.0.113.2", name="mallory")).device_token
    error = await rpc_error(login_from(stub, "203.0.113.2", password="a guess", device=mallorys))
    assert error.code() == Code.RESOURCE_EXHAUSTED
    # An access token is no device token, though signed by the same key.
    error = await rpc_error(login_from(stub, "203.0.113.3", device=owner.access_token))
    assert error.code() == Code.RESOURCE_EXHAUSTED


async def test_changing_the_password_withdraws_the_trust_of_devices_that_logged_in_before(slow_stub):
    stub = slow_stub
    await register(stub)
    thief = await login_from(stub, "203.0.113.9")  # someone who knew the password, then changed by the owner
    await change_password(stub, thief.access_token, PASSWORD, "a brand new password")
    owner = await login_from(stub, "198.51.100.7", password="a brand new password")
    for n in range(100):
        await rpc_error(login_from(stub, f"2001:db8:{n}::1", password="a guess"))
    error = await rpc_error(login_from(stub, "203.0.113.9", password="another guess", device=thief.device_token))
    assert error.code() == Code.RESOURCE_EXHAUSTED
    trusted = await login_from(stub, "198.51.100.7", password="a brand new password", device=owner.device_token)
    assert trusted.user_id == owner.user_id


async def test_wrong_current_passwords_are_throttled_on_the_users_own_budget(stub):
    await register(stub)
    pair = await login(stub)
    codes = []
    for _ in range(11):
        error = await rpc_error(change_password(stub, pair.access_token, "a guess", "new password!"))
        codes.append(error.code())
    assert codes == [Code.PERMISSION_DENIED] * 10 + [Code.RESOURCE_EXHAUSTED]
    assert int(dict((await rpc_error(change_password(stub, pair.access_token, PASSWORD, "new password!")))
                    .trailing_metadata())["grpc-retry-pushback-ms"]) >= 1000
    # The name's login budgets are untouched.
    assert (await login_from(stub, "198.51.100.7")).name == "alice"


async def test_others_spending_the_names_login_budgets_cannot_stop_the_owner_changing_the_password(slow_stub):
    stub = slow_stub
    await register(stub)
    pair = await login(stub)
    for n in range(101):
        await rpc_error(login_from(stub, f"203.0.113.{n}", password="a guess"))
    assert (await rpc_error(login_from(stub, "198.51.100.7"))).code() == Code.RESOURCE_EXHAUSTED
    changed = await change_password(stub, pair.access_token, PASSWORD, "a brand new password")
    assert changed.user_id == pair.user_id


async def test_a_malformed_client_address_is_invalid_argument(stub):
    await register(stub)
    for address in ("10.0.0.0/8", "not an address", "1.2.3.4:80"):
        assert (await rpc_error(login_from(stub, address))).code() == Code.INVALID_ARGUMENT, address


async def test_concurrent_attempts_of_two_replicas_never_get_more_than_the_budget(settings):
    await asyncio.to_thread(migrations.upgrade, settings.database_url)
    engines = [create_engine(settings.database_url) for _ in range(2)]
    replicas = [LoginBudgetStore(engine) for engine in engines]
    try:
        charges = [
            Charge("login:name:concurrent", Rate(5, 3600)),
            Charge("login:name-addr:x", Rate(50, 3600)),
        ]
        waits = await asyncio.gather(*(replicas[n % 2].acquire(charges) for n in range(30)))
        assert sorted(wait == 0 for wait in waits).count(True) == 5
        await replicas[0].refund(charges[:1])
        assert await replicas[1].acquire(charges) == 0
        assert await replicas[0].acquire(charges) > 0
    finally:
        for engine in engines:
            await engine.dispose()


async def test_attempts_charged_while_full_budgets_are_pruned_are_each_charged_once(settings):
    # The pruning (a periodic task of every replica) deletes the rows of full budgets; an attempt that found
    # its budget's row a moment before must still charge that budget, never fail on the row gone.
    await asyncio.to_thread(migrations.upgrade, settings.database_url)
    engines = [create_engine(settings.database_url) for _ in range(2)]
    attempts, pruner = LoginBudgetStore(engines[0]), LoginBudgetStore(engines[1])
    try:
        quick = Rate(1000, 1)  # one attempt spends a millisecond: the row is full, and pruned, soon after
        charges = [Charge("login:name:pruned", quick), Charge("login:name-addr:pruned", quick)]
        for _ in range(300):
            first, _pruned, second = await asyncio.gather(
                attempts.acquire(charges), pruner.delete_full(), attempts.acquire(charges)
            )
            assert (first, second) == (0, 0)
        strict = [Charge("login:name:pruned", Rate(2, 3600))]
        assert [await attempts.acquire(strict) == 0 for _ in range(3)] == [True, True, False]
    finally:
        for engine in engines:
            await engine.dispose()
