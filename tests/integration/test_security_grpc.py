"""Every method of ``crypto.auth.v1.Auth`` called directly, as an attacker holding the BFF's certificate
would, with fields missing, empty and oversized: each answer is a client-error status, never INTERNAL or
UNKNOWN, and the server keeps serving. (A caller without a mesh certificate, or with another identity's, gets
no further than the handshake or the identity check: tests/test_security_mtls.py.)

"Oversized" comes in two sizes: a field far beyond what the domain allows but inside the 64 KiB message limit
(it reaches the handler and must be refused there), and a message over the limit (refused by gRPC itself,
RESOURCE_EXHAUSTED). Entirely empty messages of every method: tests/test_auth_server.py
``test_an_empty_request_is_a_client_error_never_a_server_error``; undecodable bytes:
``test_malformed_or_oversized_requests_are_refused_and_the_server_keeps_serving`` there.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth.server import MAX_RECEIVE_MESSAGE_BYTES, start
from auth.settings import AuthSettings
from auth.tokens import generate_private_key_pem
from crypto_mesh.grpc_tls import tls_channel
from crypto_mesh.pki import AUTH, PROFILE_BFF
from crypto_mesh.proto import auth_pb2, auth_pb2_grpc

Code = grpc.StatusCode
PASSWORD = "correct horse"
#: Inside the message limit, far beyond any name, password or token.
BIG = "x" * 60_000
#: Beyond the message limit.
HUGE = "x" * (MAX_RECEIVE_MESSAGE_BYTES + 1)
CLIENT_ERRORS = {Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED}

Credentials = auth_pb2.Credentials
DeleteUserRequest = auth_pb2.DeleteUserRequest

CASES = [
    # method, request, expected codes
    ("Register", auth_pb2.RegisterRequest(password=PASSWORD), {Code.INVALID_ARGUMENT}),
    ("Register", auth_pb2.RegisterRequest(name="alice"), {Code.INVALID_ARGUMENT}),
    ("Register", auth_pb2.RegisterRequest(name="", password=PASSWORD), {Code.INVALID_ARGUMENT}),
    ("Register", auth_pb2.RegisterRequest(name="alice", password=""), {Code.INVALID_ARGUMENT}),
    ("Register", auth_pb2.RegisterRequest(name=BIG, password=PASSWORD), {Code.INVALID_ARGUMENT}),
    ("Register", auth_pb2.RegisterRequest(name="alice", password=BIG), {Code.INVALID_ARGUMENT}),
    (
        "Register",
        auth_pb2.RegisterRequest(name="\ufdfa" * 20_000, password=PASSWORD),
        {Code.INVALID_ARGUMENT},
    ),
    ("Login", auth_pb2.LoginRequest(password=PASSWORD), {Code.INVALID_ARGUMENT}),
    ("Login", auth_pb2.LoginRequest(name="alice"), {Code.INVALID_ARGUMENT}),
    ("Login", auth_pb2.LoginRequest(name="   ", password=PASSWORD), {Code.INVALID_ARGUMENT}),
    ("Login", auth_pb2.LoginRequest(name=BIG, password=PASSWORD), {Code.UNAUTHENTICATED}),
    ("Login", auth_pb2.LoginRequest(name="alice", password=BIG), {Code.UNAUTHENTICATED}),
    ("Refresh", auth_pb2.RefreshRequest(refresh_token=""), {Code.INVALID_ARGUMENT}),
    ("Refresh", auth_pb2.RefreshRequest(refresh_token=BIG), {Code.INVALID_ARGUMENT}),
    ("Logout", auth_pb2.LogoutRequest(refresh_token=""), {Code.INVALID_ARGUMENT}),
    ("Logout", auth_pb2.LogoutRequest(refresh_token=BIG), {Code.INVALID_ARGUMENT}),
    ("DeleteUser", DeleteUserRequest(access_token=""), {Code.INVALID_ARGUMENT}),
    ("DeleteUser", DeleteUserRequest(access_token=BIG), {Code.UNAUTHENTICATED}),
    ("DeleteUser", DeleteUserRequest(access_token="a.b.c"), {Code.UNAUTHENTICATED}),
    ("DeleteUser", DeleteUserRequest(credentials=Credentials(name="alice")), {Code.INVALID_ARGUMENT}),
    ("DeleteUser", DeleteUserRequest(credentials=Credentials(password=PASSWORD)), {Code.INVALID_ARGUMENT}),
    (
        "DeleteUser",
        DeleteUserRequest(credentials=Credentials(name=BIG, password=PASSWORD)),
        {Code.UNAUTHENTICATED},
    ),
    ("DeleteUser", DeleteUserRequest(credentials=Credentials(name="alice", password=BIG)), CLIENT_ERRORS),
]

OVER_THE_LIMIT = [
    ("Register", auth_pb2.RegisterRequest(name=HUGE, password=PASSWORD)),
    ("Login", auth_pb2.LoginRequest(name="alice", password=HUGE)),
    ("Refresh", auth_pb2.RefreshRequest(refresh_token=HUGE)),
    ("Logout", auth_pb2.LogoutRequest(refresh_token=HUGE)),
    ("DeleteUser", DeleteUserRequest(access_token=HUGE)),
    ("DeleteUser", DeleteUserRequest(credentials=Credentials(name="alice", password=HUGE))),
]


@pytest.fixture(scope="module")
async def channel(postgres, tmp_path_factory, mesh_pki):
    key_file = tmp_path_factory.mktemp("keys") / "jwt.pem"
    key_file.write_bytes(generate_private_key_pem())
    database = f"auth_grpc_{uuid.uuid4().hex[:10]}"
    postgres.create_database(database)
    running = await start(
        AuthSettings(
            port=0, database_url=postgres.url(database), jwt_private_key_file=key_file, bcrypt_cost=4
        )
    )
    try:
        async with tls_channel(f"127.0.0.1:{running.port}", mesh_pki[PROFILE_BFF].load(), AUTH) as channel:
            stub = auth_pb2_grpc.AuthStub(channel)
            await stub.Register(auth_pb2.RegisterRequest(name="alice", password=PASSWORD))
            yield channel
    finally:
        await running.stop()


async def code_of(call) -> Code:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


@pytest.mark.parametrize(("method", "request_message", "expected"), CASES)
async def test_missing_empty_and_oversized_fields_are_client_errors(
    channel, method, request_message, expected
):
    stub = auth_pb2_grpc.AuthStub(channel)
    assert await code_of(getattr(stub, method)(request_message)) in expected


@pytest.mark.parametrize(("method", "request_message"), OVER_THE_LIMIT)
async def test_messages_over_the_limit_are_resource_exhausted(channel, method, request_message):
    stub = auth_pb2_grpc.AuthStub(channel)
    assert await code_of(getattr(stub, method)(request_message)) == Code.RESOURCE_EXHAUSTED


async def test_get_public_keys_ignores_unknown_fields_and_refuses_oversized_messages(channel):
    raw = channel.unary_unary("/crypto.auth.v1.Auth/GetPublicKeys")
    # Field 15, length-delimited, 60 000 bytes: unknown to GetPublicKeysRequest, so skipped by the parser.
    unknown_field = b"\x7a" + bytes([0xE0, 0xD4, 0x03]) + b"x" * 60_000
    answer = auth_pb2.GetPublicKeysResponse.FromString(await raw(unknown_field))
    assert '"kty":"OKP"' in answer.jwks_json
    assert await code_of(raw(unknown_field + b"\x7a\x80\x80\x04" + b"x" * 65_536)) == Code.RESOURCE_EXHAUSTED


async def test_the_server_still_serves_after_every_hostile_call(channel):
    stub = auth_pb2_grpc.AuthStub(channel)
    for method, request_message, _ in CASES:
        await code_of(getattr(stub, method)(request_message))
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await stub.Login(auth_pb2.LoginRequest(name="alice", password=PASSWORD))).name == "alice"
