"""Mutual TLS for every gRPC server and channel of the mesh, and the check of who is calling.

- :func:`tls_server` builds a ``grpc.aio`` server whose one port speaks TLS only and requires a client
  certificate issued by the mesh CA (``require_client_auth``): a plain-text connection, a TLS connection
  without a certificate, or with a certificate of another CA, fails in the handshake, before any RPC exists.
- :class:`PeerIdentityInterceptor` (installed by :func:`tls_server`) then admits each call only if the
  caller's identity (the SPIFFE ID of its certificate, :mod:`crypto_mesh.pki`) is allowed to call that
  service: ``UNAUTHENTICATED`` when the certificate names no mesh identity, ``PERMISSION_DENIED`` when the
  identity is not allowed; either way before the handler runs. ``grpc.health.v1.Health`` and server
  reflection (:data:`OPEN_TO_THE_MESH`) admit every identity of the mesh (health reveals nothing, reflection
  only the published proto contracts, and readiness watchers, compose health checks and an operator's grpcurl
  need them); every other service admits only the identities its server lists; a service not listed admits
  no one.
- :func:`tls_channel` connects with the caller's certificate and accepts only a server whose certificate
  names the expected identity as a DNS SAN, whatever address the target uses. The same check holds for every
  address of a target naming several replicas (:data:`ROUND_ROBIN`): every replica of a service presents a
  certificate of that service's identity.
- :data:`ROUND_ROBIN` is the channel argument of gRPC's standard client-side load balancing over every address
  a target resolves to; :func:`check_target` refuses a target gRPC could not resolve.
- ``python -m crypto_mesh.grpc_tls TARGET --server-identity NAME --ca-file --cert-file --key-file`` asks a
  server's ``grpc.health.v1.Health`` over mutual TLS and exits 0 if it is SERVING (compose health checks).
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import json
import sys
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from crypto_mesh.logs import get_logger
from crypto_mesh.pki import MeshTls, identity_of_spiffe_id, load_tls

log = get_logger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
#: gRPC server reflection (``grpc.reflection.v1alpha.ServerReflection``), which grpcurl and other tools ask.
REFLECTION_SERVICE = reflection.SERVICE_NAME
#: The services every mesh identity may call on any server of the mesh (never a caller without one).
OPEN_TO_THE_MESH = frozenset({HEALTH_SERVICE, REFLECTION_SERVICE})
#: gRPC's auth-context property holding the peer certificate's SPIFFE ID (set when it has exactly one URI
#: SAN and that URI is a valid SPIFFE ID).
PEER_SPIFFE_ID = "peer_spiffe_id"


#: gRPC's default service config with the ``round_robin`` load-balancing policy (gRPC's service-config JSON,
#: grpc/doc/service_config.md): the channel connects to every address its target resolves to, each call goes to
#: the next ready one, and a call started after one address fails goes to another. A target of one address
#: behaves as without it.
ROUND_ROBIN = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))

#: The schemes of gRPC's name syntax (grpc/doc/naming.md) whose addresses are IP literals, comma-separated.
_IP_LIST_SCHEMES = {"ipv4": ipaddress.IPv4Address, "ipv6": ipaddress.IPv6Address}


def _port(text: str) -> bool:
    return text.isdigit() and 0 < int(text) <= 65535


def check_target(target: str) -> str:
    """``target`` unchanged if it is a gRPC target of one of the forms of gRPC's name syntax
    (grpc/doc/naming.md) the mesh uses: ``host:port`` (resolved through DNS), ``dns:[//authority/]host:port``,
    or a fixed list of replicas ``ipv4:address:port[,address:port…]`` / ``ipv6:[address]:port[,…]``.
    Raises ValueError naming what is wrong (a missing or bad port, an address that is not an IP literal of
    the scheme, an empty entry)."""
    scheme, colon, rest = target.partition(":")
    if colon and scheme in _IP_LIST_SCHEMES:
        for entry in rest.split(","):
            address, _, port = entry.strip().rpartition(":")
            address = address.removeprefix("[").removesuffix("]") if scheme == "ipv6" else address
            try:
                _IP_LIST_SCHEMES[scheme](address)
            except ValueError:
                raise ValueError(f"{entry[:64]!r} of {scheme}: is not an {scheme} address:port") from None
            if not _port(port):
                raise ValueError(f"{entry[:64]!r} of {scheme}: has no port 1-65535")
        return target
    if colon and scheme == "dns":
        rest = rest.removeprefix("//").partition("/")[2] if rest.startswith("//") else rest
    elif colon and scheme in ("unix", "unix-abstract"):
        raise ValueError("the mesh reaches its gRPC servers over TCP, not a Unix socket")
    else:
        rest = target
    host, _, port = rest.rpartition(":")
    if not host or not _port(port) or "," in host or any(char.isspace() for char in rest):
        raise ValueError(
            f"{target[:100]!r} is not host:port, dns:[//authority/]host:port or ipv4:address:port[,address:port]"
        )
    return target


def server_credentials(tls: MeshTls) -> grpc.ServerCredentials:
    """TLS credentials of a server: ``tls``'s certificate and key, and a client certificate issued by one of
    ``tls``'s CAs required of every client."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate_chain)],
        root_certificates=tls.root_certificates,
        require_client_auth=True,
    )


def channel_credentials(tls: MeshTls) -> grpc.ChannelCredentials:
    """TLS credentials of a client: ``tls``'s CAs to verify the server, its certificate and key to present."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


def _server_name(server_identity: str) -> tuple[str, str]:
    # The server's certificate is checked against the identity it must prove, not the target's host: in the
    # embedded mesh every server is 127.0.0.1, which names no one in particular.
    return ("grpc.ssl_target_name_override", server_identity)


def tls_channel(
    target: str,
    tls: MeshTls,
    server_identity: str,
    options: Sequence[tuple[str, object]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target`` (``host:port``, or any gRPC target: :func:`check_target`) over mutual
    TLS: it presents ``tls``'s certificate and accepts only a server certified by ``tls``'s CAs with
    ``server_identity`` (``auth``, ``socket_proxy``) among its DNS names, whichever address it is reached at
    (so every replica of a balanced target, :data:`ROUND_ROBIN`, is checked alike). ``options`` are other gRPC channel arguments, ``interceptors`` its
    client interceptors (:func:`crypto_mesh.observe.client_observers`). The channel connects
    lazily; a failed handshake surfaces as ``UNAVAILABLE`` on the calls."""
    return grpc.aio.secure_channel(
        target,
        channel_credentials(tls),
        options=[*options, _server_name(server_identity)],
        interceptors=list(interceptors) or None,
    )


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: the status code and its message."""

    code: grpc.StatusCode
    message: str


def caller_identity(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The mesh identity of the peer of a call, from its ``ServicerContext.auth_context()``: the name in the
    ``peer_spiffe_id`` of its certificate, or None when the connection is not TLS or its certificate has no
    SPIFFE ID of the mesh's trust domain."""
    if auth_context.get("transport_security_type") != [b"ssl"]:
        return None
    values = auth_context.get(PEER_SPIFFE_ID) or []
    if len(values) != 1:
        return None
    return identity_of_spiffe_id(values[0].decode("utf-8", errors="replace"))


def refusal(identity: str | None, service: str, callers: Mapping[str, Collection[str]]) -> Refusal | None:
    """Whether the caller ``identity`` (from :func:`caller_identity`) may call ``service`` (full name, e.g.
    ``crypto.auth.v1.Auth``) of a server whose allowed callers are ``callers`` (service → identities): None
    if it may, else the :class:`Refusal`. The services of :data:`OPEN_TO_THE_MESH` (health, reflection) admit
    every mesh identity."""
    if identity is None:
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED, "a client certificate naming a mesh identity is required"
        )
    if service in OPEN_TO_THE_MESH or identity in callers.get(service, ()):
        return None
    return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"{identity} may not call {service}")


class PeerIdentityInterceptor(grpc.aio.ServerInterceptor):
    """Admits a call only if :func:`refusal` finds nothing against its caller; otherwise aborts it with the
    refusal's status before the handler runs, and logs ``grpc_caller_refused``.

    ``callers`` maps a service's full name to the identities allowed to call it. Handlers must be ``async``
    (coroutine functions or async generators), as every handler of a ``grpc.aio`` server of the mesh is.
    """

    def __init__(self, callers: Mapping[str, Collection[str]]) -> None:
        self._callers = {service: frozenset(identities) for service, identities in callers.items()}

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        service = method.lstrip("/").split("/", 1)[0]

        @asynccontextmanager
        async def admit(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            identity = caller_identity(context.auth_context())
            refused = refusal(identity, service, self._callers)
            if refused is not None:
                log.warning("grpc_caller_refused", caller=identity, method=method, peer=context.peer(),
                            code=refused.code.name)
                await context.abort(refused.code, refused.message)
            yield

        return wrap_handler(handler, admit)


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    around: Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[None]],
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour run inside ``async with around(context)`` (which may abort the call
    before it runs, or see how it ended), keeping its kind (the aio server tells a coroutine handler from an
    async-generator one by inspecting the function). For the server interceptors of the mesh."""
    if handler.request_streaming and handler.response_streaming:
        behaviour, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behaviour, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behaviour, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behaviour, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler

    if inspect.isasyncgenfunction(behaviour):

        async def wrapped(request, context):
            async with around(context):
                async for response in behaviour(request, context):
                    yield response

    elif inspect.iscoroutinefunction(behaviour):

        async def wrapped(request, context):
            async with around(context):
                return await behaviour(request, context)

    else:
        raise TypeError(f"mesh gRPC handlers must be async: {behaviour!r}")
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def tls_server(
    tls: MeshTls,
    host: str,
    port: int,
    callers: Mapping[str, Collection[str]],
    *,
    options: Sequence[tuple[str, object]] = (),
    maximum_concurrent_rpcs: int | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server bound (not started) to ``host:port`` over mutual TLS with ``tls``, whose calls
    pass :class:`PeerIdentityInterceptor` with ``callers`` (service full name → allowed identities).

    ``port`` 0 picks a free port; returns the server and the bound port. ``options`` and
    ``maximum_concurrent_rpcs`` are ``grpc.aio.server``'s; ``interceptors`` run before the identity check
    (:class:`crypto_mesh.observe.GrpcServerObserver`, which counts refused calls too). Raises ``RuntimeError`` if the port cannot be
    bound.
    """
    server = grpc.aio.server(
        interceptors=[*interceptors, PeerIdentityInterceptor(callers)],
        options=list(options),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_secure_port(address, server_credentials(tls))
    if bound == 0:
        raise RuntimeError(f"cannot bind {address}")
    return server, bound


def health_status(
    target: str, tls: MeshTls, server_identity: str, service: str = "", timeout_s: float = 2.0
) -> int:
    """The ``grpc.health.v1`` status (``HealthCheckResponse.ServingStatus``) of ``service`` (``""``: the whole
    server) at ``target``, asked over mutual TLS as :func:`tls_channel` connects. Blocking. Raises
    ``grpc.RpcError`` if the server cannot be reached, refuses the handshake or does not answer within
    ``timeout_s`` seconds."""
    credentials = channel_credentials(tls)
    with grpc.secure_channel(target, credentials, options=[_server_name(server_identity)]) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
        return reply.status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crypto_mesh.grpc_tls``: the health probe of compose.yaml. Exit status 0 when SERVING, 1
    when not serving or unreachable, 2 for bad arguments or TLS files; the reason goes to stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m crypto_mesh.grpc_tls",
        description="Ask a mesh gRPC server's grpc.health.v1.Health over mutual TLS; exit 0 if SERVING.",
    )
    parser.add_argument("target", help="host:port of the server")
    parser.add_argument("--server-identity", required=True, help="identity the server must prove (auth, ...)")
    parser.add_argument("--ca-file", type=Path, required=True, help="PEM CA certificate(s) of the mesh")
    parser.add_argument("--cert-file", type=Path, required=True, help="PEM certificate to present")
    parser.add_argument("--key-file", type=Path, required=True, help="its PEM private key")
    parser.add_argument("--service", default="", help="service to ask about (default: the whole server)")
    parser.add_argument("--timeout-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    try:
        tls = load_tls(args.ca_file, args.cert_file, args.key_file)
    except (OSError, ValueError) as error:
        print(f"cannot use the TLS files: {error}", file=sys.stderr)
        return 2
    try:
        status = health_status(args.target, tls, args.server_identity, args.service, args.timeout_s)
    except grpc.RpcError as error:
        print(f"{args.target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    if status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{args.target}: {name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
