"""Mutual TLS on the mesh's gRPC servers (auth, socket_proxy), against the real servers over real connections:
who gets past the handshake, who gets past the identity check, and that a refused call never reaches its
handler. The decision on a caller's identity is also specified on its own, with in-memory auth contexts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from auth.server import SERVICE_NAME as AUTH_SERVICE
from auth.server import start as start_auth
from auth.settings import AuthSettings
from auth.tokens import generate_private_key_pem
from crypto_mesh.grpc_tls import (
    HEALTH_SERVICE,
    REFLECTION_SERVICE,
    caller_identity,
    refusal,
    tls_channel,
    tls_server,
)
from crypto_mesh.pki import (
    AGGREGATOR,
    AUTH,
    EMBEDDED_IDENTITIES,
    HEALTHCHECK,
    PROFILE_BFF,
    SOCKET_PROXY,
    MeshTls,
    ensure_mesh_pki,
    load_tls,
    spiffe_id,
)
from crypto_mesh.proto import auth_pb2, auth_pb2_grpc, socket_pb2, socket_pb2_grpc
from crypto_mesh.secrets import secrets_dir
from socket_proxy.server import SERVICE_NAME as PROXY_SERVICE
from socket_proxy.server import start as start_proxy
from socket_proxy.settings import ProxySettings

Code = grpc.StatusCode
PASSWORD = "correct horse"
#: Bound on a call: a refused one answers at once; this only ends a broken test on a loaded machine.
CALL_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
async def auth_server(postgres, tmp_path_factory):
    """A real auth server (its identity from the session's mesh PKI) on a new database; yields (port,
    database URL)."""
    key_file = tmp_path_factory.mktemp("keys") / "jwt.pem"
    key_file.write_bytes(generate_private_key_pem())
    database = f"auth_mtls_{uuid.uuid4().hex[:10]}"
    postgres.create_database(database)
    running = await start_auth(
        AuthSettings(
            port=0, database_url=postgres.url(database), jwt_private_key_file=key_file, bcrypt_cost=4
        )
    )
    try:
        yield running.port, postgres.url(database, driver="postgresql")
    finally:
        await running.stop()


@pytest.fixture(scope="module")
def foreign_pki(tmp_path_factory):
    """A second, unrelated CA with certificates of every mesh identity: what an attacker can make itself."""
    return ensure_mesh_pki(secrets_dir(tmp_path_factory.mktemp("foreign") / "secrets"), EMBEDDED_IDENTITIES)


async def users_named(database_url: str, name: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval("SELECT count(*) FROM users WHERE name_key = $1", name)
    finally:
        await connection.close()


async def register_over(channel: grpc.aio.Channel, name: str) -> auth_pb2.RegisterResponse:
    stub = auth_pb2_grpc.AuthStub(channel)
    return await stub.Register(auth_pb2.RegisterRequest(name=name, password=PASSWORD), timeout=CALL_TIMEOUT_S)


async def refused_code(call) -> Code:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


def new_name() -> str:
    return f"mallory{uuid.uuid4().hex[:8]}"


def impostor(mesh_pki, foreign_pki, identity: str) -> MeshTls:
    """A caller trusting the real mesh CA that presents a certificate naming ``identity`` issued by a CA of
    its own (:func:`foreign_pki`)."""
    forged = foreign_pki[identity].load()
    return MeshTls(
        root_certificates=mesh_pki[identity].load().root_certificates,
        certificate_chain=forged.certificate_chain,
        private_key=forged.private_key,
        identity=identity,
    )


async def test_the_bff_identity_is_served_by_auth(auth_server, mesh_pki):
    port, database_url = auth_server
    name = new_name()
    async with tls_channel(f"127.0.0.1:{port}", mesh_pki[PROFILE_BFF].load(), AUTH) as channel:
        assert (await register_over(channel, name)).name == name
    assert await users_named(database_url, name) == 1


async def test_a_plain_text_call_is_refused_at_the_handshake_and_creates_nothing(auth_server):
    port, database_url = auth_server
    name = new_name()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await refused_code(register_over(channel, name)) == Code.UNAVAILABLE
    assert await users_named(database_url, name) == 0


async def test_a_tls_call_without_a_client_certificate_is_refused_at_the_handshake(auth_server, mesh_pki):
    port, database_url = auth_server
    name = new_name()
    trusted = mesh_pki[PROFILE_BFF].load().root_certificates
    server_only = grpc.ssl_channel_credentials(root_certificates=trusted)
    options = [("grpc.ssl_target_name_override", AUTH)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", server_only, options=options) as channel:
        assert await refused_code(register_over(channel, name)) == Code.UNAVAILABLE
    assert await users_named(database_url, name) == 0


async def test_a_certificate_of_another_ca_is_refused_at_the_handshake(auth_server, mesh_pki, foreign_pki):
    port, database_url = auth_server
    name = new_name()
    # The caller trusts the real server, and presents a certificate naming the BFF from a CA of its own.
    forged = impostor(mesh_pki, foreign_pki, PROFILE_BFF)
    async with tls_channel(f"127.0.0.1:{port}", forged, AUTH) as channel:
        assert await refused_code(register_over(channel, name)) == Code.UNAVAILABLE
    assert await users_named(database_url, name) == 0


async def test_an_identity_auth_does_not_serve_is_refused_before_the_handler_runs(auth_server, mesh_pki):
    port, database_url = auth_server
    for identity in (AGGREGATOR, HEALTHCHECK, SOCKET_PROXY):
        name = new_name()
        async with tls_channel(f"127.0.0.1:{port}", mesh_pki[identity].load(), AUTH) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await register_over(channel, name)
        assert caught.value.code() == Code.PERMISSION_DENIED, identity
        assert caught.value.details() == f"{identity} may not call {AUTH_SERVICE}"
        assert await users_named(database_url, name) == 0, identity


async def test_health_answers_every_mesh_identity_and_only_over_mutual_tls(auth_server, mesh_pki):
    port, _ = auth_server
    request = health_pb2.HealthCheckRequest(service="")
    for identity in EMBEDDED_IDENTITIES:
        async with tls_channel(f"127.0.0.1:{port}", mesh_pki[identity].load(), AUTH) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, identity
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_TIMEOUT_S)
        assert await refused_code(check) == Code.UNAVAILABLE


async def reflected(channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest):
    """The one answer of the server's reflection service to ``request`` (as grpcurl asks it)."""
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([request]), timeout=CALL_TIMEOUT_S
    )
    return await call.read()


async def test_reflection_lists_each_servers_services_to_every_mesh_identity_over_mutual_tls_only(
    auth_server, proxy, mesh_pki, foreign_pki
):
    auth_port, _ = auth_server
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")
    servers = ((auth_port, AUTH, AUTH_SERVICE), (proxy.port, SOCKET_PROXY, PROXY_SERVICE))
    for port, server_identity, service in servers:
        target = f"127.0.0.1:{port}"
        for identity in EMBEDDED_IDENTITIES:
            async with tls_channel(target, mesh_pki[identity].load(), server_identity) as channel:
                listed = await reflected(channel, list_services)
                described = await reflected(channel, reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol=service))
            names = {entry.name for entry in listed.list_services_response.service}
            assert names == {service, HEALTH_SERVICE, REFLECTION_SERVICE}, (server_identity, identity)
            assert described.file_descriptor_response.file_descriptor_proto, (server_identity, identity)
        async with grpc.aio.insecure_channel(target) as channel:
            assert await refused_code(reflected(channel, list_services)) == Code.UNAVAILABLE
        forged = impostor(mesh_pki, foreign_pki, HEALTHCHECK)
        async with tls_channel(target, forged, server_identity) as channel:
            assert await refused_code(reflected(channel, list_services)) == Code.UNAVAILABLE


async def test_a_client_refuses_a_server_that_proves_another_identity(auth_server, proxy, mesh_pki):
    auth_port, _ = auth_server
    request = health_pb2.HealthCheckRequest()
    # The BFF dialling socket_proxy's address believing it is auth, and the aggregator dialling auth's.
    for port, tls, expected in (
        (proxy.port, mesh_pki[PROFILE_BFF].load(), AUTH),
        (auth_port, mesh_pki[AGGREGATOR].load(), SOCKET_PROXY),
    ):
        async with tls_channel(f"127.0.0.1:{port}", tls, expected) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_TIMEOUT_S)
            assert await refused_code(check) == Code.UNAVAILABLE


async def test_a_client_refuses_a_server_certified_by_another_ca(auth_server, mesh_pki, foreign_pki):
    port, _ = auth_server
    bff = mesh_pki[PROFILE_BFF].load()
    trusting_another_ca = MeshTls(
        root_certificates=foreign_pki[PROFILE_BFF].load().root_certificates,
        certificate_chain=bff.certificate_chain,
        private_key=bff.private_key,
        identity=PROFILE_BFF,
    )
    async with tls_channel(f"127.0.0.1:{port}", trusting_another_ca, AUTH) as channel:
        assert await refused_code(register_over(channel, new_name())) == Code.UNAVAILABLE


async def test_socket_proxy_serves_the_aggregator_only_and_a_refused_call_subscribes_nothing(proxy, mesh_pki):
    request = socket_pb2.TradeStreamRequest(symbol="btcusdt", kind=socket_pb2.TRADE_KIND_TRADE)
    for identity in (PROFILE_BFF, AUTH, HEALTHCHECK):
        async with tls_channel(f"127.0.0.1:{proxy.port}", mesh_pki[identity].load(), SOCKET_PROXY) as channel:
            call = socket_pb2_grpc.SocketProxyStub(channel).StreamTrades(request, timeout=CALL_TIMEOUT_S)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
        assert caught.value.code() == Code.PERMISSION_DENIED, identity
        assert proxy.service.fanout.streams == {} and proxy.service.upstream.connections == 0, identity
        async with tls_channel(f"127.0.0.1:{proxy.port}", mesh_pki[identity].load(), SOCKET_PROXY) as channel:
            history = socket_pb2.HistoricalTradesRequest(symbol="btcusdt", from_id=1, limit=1)
            call = socket_pb2_grpc.SocketProxyStub(channel).HistoricalTrades(history, timeout=CALL_TIMEOUT_S)
            assert await refused_code(call) == Code.PERMISSION_DENIED, identity
        assert proxy.service.history.requests == 0, identity
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
        call = socket_pb2_grpc.SocketProxyStub(channel).StreamTrades(request, timeout=CALL_TIMEOUT_S)
        assert await refused_code(call.read()) == Code.UNAVAILABLE
    assert proxy.service.fanout.streams == {} and proxy.service.upstream.connections == 0

    async with tls_channel(f"127.0.0.1:{proxy.port}", mesh_pki[AGGREGATOR].load(), SOCKET_PROXY) as channel:
        call = socket_pb2_grpc.SocketProxyStub(channel).StreamTrades(request)
        frames = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
        assert frames.data
        call.cancel()


async def run_probe(*args: str) -> tuple[int, str]:
    """``python -m crypto_mesh.grpc_tls ARGS`` (the compose health check) in a child process; returns its exit
    status and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crypto_mesh.grpc_tls", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    return process.returncode, stderr.decode()


def probe_arguments(port: int, server_identity: str, files) -> list[str]:
    return [
        f"127.0.0.1:{port}", "--server-identity", server_identity, "--ca-file", str(files.ca_file),
        "--cert-file", str(files.cert_file), "--key-file", str(files.key_file),
    ]


async def test_the_health_probe_exits_0_for_a_serving_server_and_1_when_refused(proxy, mesh_pki, foreign_pki):
    status, _ = await run_probe(*probe_arguments(proxy.port, SOCKET_PROXY, mesh_pki[SOCKET_PROXY]))
    assert status == 0
    status, stderr = await run_probe(*probe_arguments(proxy.port, SOCKET_PROXY, foreign_pki[SOCKET_PROXY]))
    assert status == 1 and "UNAVAILABLE" in stderr
    status, stderr = await run_probe(*probe_arguments(proxy.port, AUTH, mesh_pki[SOCKET_PROXY]))
    assert status == 1 and "UNAVAILABLE" in stderr


async def test_the_health_probe_exits_2_naming_a_tls_file_it_cannot_use(proxy, mesh_pki, tmp_path):
    files = mesh_pki[SOCKET_PROXY]
    arguments = probe_arguments(proxy.port, SOCKET_PROXY, files)
    arguments[arguments.index("--key-file") + 1] = str(mesh_pki[AGGREGATOR].key_file)
    status, stderr = await run_probe(*arguments)
    assert status == 2 and str(mesh_pki[AGGREGATOR].key_file) in stderr and "PRIVATE KEY" not in stderr


def tls_context(identity: str | None) -> dict[str, list[bytes]]:
    """The ``auth_context()`` gRPC gives a handler of a TLS connection whose client certificate has
    ``identity`` (a SPIFFE ID, or None for a certificate with no URI SAN)."""
    context = {"transport_security_type": [b"ssl"], "x509_common_name": [b"someone"]}
    if identity is not None:
        context["peer_spiffe_id"] = [identity.encode()]
    return context


CALLERS = {AUTH_SERVICE: frozenset({PROFILE_BFF})}


@pytest.mark.parametrize(
    ("auth_context", "service", "expected"),
    [
        (tls_context(spiffe_id(PROFILE_BFF)), AUTH_SERVICE, None),
        (tls_context(spiffe_id(AGGREGATOR)), AUTH_SERVICE, Code.PERMISSION_DENIED),
        (tls_context(spiffe_id(PROFILE_BFF)), "crypto.socket.v1.SocketProxy", Code.PERMISSION_DENIED),
        (tls_context(spiffe_id(AGGREGATOR)), HEALTH_SERVICE, None),
        (tls_context(spiffe_id(HEALTHCHECK)), HEALTH_SERVICE, None),
        (tls_context(spiffe_id(HEALTHCHECK)), REFLECTION_SERVICE, None),
        (tls_context(spiffe_id(AGGREGATOR)), REFLECTION_SERVICE, None),
        (tls_context("spiffe://elsewhere/healthcheck"), REFLECTION_SERVICE, Code.UNAUTHENTICATED),
        (tls_context(None), REFLECTION_SERVICE, Code.UNAUTHENTICATED),
        ({"transport_security_type": [b"insecure"]}, REFLECTION_SERVICE, Code.UNAUTHENTICATED),
        (tls_context("spiffe://elsewhere/profile_bff"), AUTH_SERVICE, Code.UNAUTHENTICATED),
        (tls_context("spiffe://elsewhere/profile_bff"), HEALTH_SERVICE, Code.UNAUTHENTICATED),
        (tls_context("spiffe://crypto-mesh/a/profile_bff"), AUTH_SERVICE, Code.UNAUTHENTICATED),
        (tls_context("spiffe://crypto-mesh/"), AUTH_SERVICE, Code.UNAUTHENTICATED),
        (tls_context(None), AUTH_SERVICE, Code.UNAUTHENTICATED),
        ({"transport_security_type": [b"insecure"]}, HEALTH_SERVICE, Code.UNAUTHENTICATED),
        ({}, AUTH_SERVICE, Code.UNAUTHENTICATED),
    ],
)
def test_a_caller_is_admitted_only_with_a_mesh_identity_allowed_for_the_service(
    auth_context, service, expected
):
    refused = refusal(caller_identity(auth_context), service, CALLERS)
    assert (refused.code if refused else None) == expected


async def test_during_a_ca_rotation_parties_trusting_both_cas_talk_across_them(tmp_path):
    old = ensure_mesh_pki(secrets_dir(tmp_path / "old"), [AUTH, PROFILE_BFF])
    new = ensure_mesh_pki(secrets_dir(tmp_path / "new"), [AUTH, PROFILE_BFF])
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(old[AUTH].ca_file.read_bytes() + new[AUTH].ca_file.read_bytes())
    server_tls = load_tls(bundle, old[AUTH].cert_file, old[AUTH].key_file)
    server, port = tls_server(server_tls, "127.0.0.1", 0, {})
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await server.start()
    request = health_pb2.HealthCheckRequest()
    try:
        # A client already on the new CA's certificate, still trusting the old CA: served.
        client_tls = load_tls(bundle, new[PROFILE_BFF].cert_file, new[PROFILE_BFF].key_file)
        async with tls_channel(f"127.0.0.1:{port}", client_tls, AUTH) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # The same client trusting the new CA alone refuses the server still on the old one.
        new_only = new[PROFILE_BFF].load()
        async with tls_channel(f"127.0.0.1:{port}", new_only, AUTH) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_TIMEOUT_S)
            assert await refused_code(check) == Code.UNAVAILABLE
    finally:
        await server.stop(None)


async def test_a_server_without_usable_tls_files_does_not_start(exchange, mesh_pki, tmp_path):
    environment = {
        **os.environ,
        "PROXY_PORT": "0",
        "PROXY_TLS_CERT_FILE": str(tmp_path / "missing.crt"),
        "PROXY_TLS_KEY_FILE": str(tmp_path / "missing.key"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "socket_proxy", env=environment, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "PROXY_TLS_CERT_FILE" in stderr.decode() and "PROXY_TLS_KEY_FILE" in stderr.decode()

    mismatched = ProxySettings(port=0, exchange_url=exchange.url, tls_key_file=mesh_pki[AGGREGATOR].key_file)
    with pytest.raises(ValueError, match="is not the private key of the certificate"):
        await start_proxy(mismatched)
