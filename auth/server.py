"""The auth gRPC server: the ``crypto.auth.v1.Auth`` servicer, ``grpc.health.v1.Health``, and start/stop.

Transport only: each handler checks the shape of its request, calls :class:`auth.users.Accounts`, and maps
:mod:`auth.errors` to status codes. Nothing a client sends reaches the catch-all (``INTERNAL``, logged with
its traceback): that is kept for bugs.

:func:`start` builds the service on the mesh's lifecycle (:mod:`crypto_mesh.service`): the password-hashing
threads, the database pool, the gRPC port (health ``NOT_SERVING``), then the maintenance task, which migrates
and turns health ``SERVING``. Stopping undoes it in reverse: the maintenance task ends, health turns
``NOT_SERVING``, calls in flight get :data:`STOP_GRACE_S`, the pool is closed and the hashing threads stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from auth import migrations, passwords
from auth.errors import (
    AlreadyExists,
    AuthError,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from auth.metrics import registry_for
from auth.passwords import PasswordHasher
from auth.service import AuthService
from auth.sessions import SessionPolicy
from auth.settings import AuthSettings
from auth.store import AuthStore, LoginBudgetStore, create_engine
from auth.throttle import LoginLimits, LoginThrottle
from auth.tokens import TokenIssuer, load_private_key, load_public_keys
from auth.users import Accounts, Tokens
from crypto_mesh.grpc_tls import tls_server
from crypto_mesh.logs import get_logger
from crypto_mesh.metrics import serve_metrics_port
from crypto_mesh.observe import GrpcMetrics, GrpcServerObserver
from crypto_mesh.pki import PROFILE_BFF
from crypto_mesh.proto import auth_pb2, auth_pb2_grpc
from crypto_mesh.retry import raise_if_cancelling, retrying
from crypto_mesh.service import Lifecycle, Running, start_service
from crypto_mesh.throttle import parse_address_bucket

log = get_logger(__name__)

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["Auth"].full_name
#: Mesh identities allowed to call ``crypto.auth.v1.Auth``: the BFF is its only client.
CALLERS = frozenset({PROFILE_BFF})
#: Requests are a name, a password or a token: 64 KiB is ample and bounds what a client can make us parse.
MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024
#: Calls beyond this many in flight are refused with RESOURCE_EXHAUSTED instead of queueing without bound
#: (each login or registration holds a bcrypt worker thread for up to a quarter of a second).
MAX_CONCURRENT_RPCS = 256
#: How often the database is pinged to keep the health status true, and expired tokens pruned (s).
HEALTH_PING_INTERVAL_S = 5.0
PRUNE_INTERVAL_S = 3600.0
#: Expired refresh tokens are kept this long after expiry before being deleted.
PRUNE_AFTER = timedelta(days=1)
#: Part of a call's deadline kept for the work after its password check (a database write, signing a token),
#: so that a check admitted against the deadline still leaves time to answer (s).
DEADLINE_RESERVE_S = 0.2
#: Trailing metadata carrying how long a refused client should wait before retrying, in milliseconds (gRFC A6,
#: "client retries": the server's retry pushback).
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: Time given to in-flight calls when stopping (s).
STOP_GRACE_S = 5.0

_STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Overloaded: grpc.StatusCode.UNAVAILABLE,
}


@dataclass(frozen=True)
class _MalformedRequest:
    """Stands in for a request whose bytes did not parse, so that the handler can answer INVALID_ARGUMENT
    (grpc's own handling of a failing deserializer answers UNKNOWN)."""

    message: str


def _lenient_parser(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return _MalformedRequest(f"request is not a valid {message_class.DESCRIPTOR.full_name}: {exc}")

    return parse


def _rpc(handler):
    """Run a handler within its call's deadline (less :data:`DEADLINE_RESERVE_S`) for password checks,
    answering an :class:`AuthError` with its status (``ResourceExhausted`` and ``Overloaded``: with the retry
    pushback in trailing metadata) and anything else with ``INTERNAL``."""

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        if isinstance(request, _MalformedRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        remaining_s = context.time_remaining()
        try:
            with passwords.call_deadline(None if remaining_s is None else remaining_s - DEADLINE_RESERVE_S):
                return await handler(self, request, context)
        except (ResourceExhausted, Overloaded) as exc:
            context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(round(exc.retry_after_s * 1000))),))
            await context.abort(_STATUS[type(exc)], str(exc))
        except AuthError as exc:
            await context.abort(_STATUS[type(exc)], str(exc))
        except Exception:
            log.exception("rpc_failed", method=handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper


def _token_pair(tokens: Tokens) -> auth_pb2.TokenPair:
    return auth_pb2.TokenPair(
        access_token=tokens.access_token,
        access_expires_at=tokens.access_expires_at,
        refresh_token=tokens.refresh_token,
        refresh_expires_at=tokens.refresh_expires_at,
        user_id=tokens.user_id,
        name=tokens.name,
        device_token=tokens.device_token,
        device_expires_at=tokens.device_expires_at,
    )


def _client_address(claimed: str, context: grpc.aio.ServicerContext) -> str:
    """The address bucket a password check is charged to: the one the caller names for its client, else the
    caller's own (its gRPC peer, ``ipv4:a.b.c.d:port``, ``ipv6:[...]:port`` or ``unix:...``)."""
    if claimed:
        bucket = parse_address_bucket(claimed)
        if bucket is None:
            raise InvalidArgument("client_address must be an IP address, an IPv6 /64 network or 'unix'")
        return bucket
    peer = context.peer() or ""
    scheme, _, rest = peer.partition(":")
    if scheme in ("ipv4", "ipv6"):
        host = rest.rsplit(":", 1)[0].strip("[]")
        return parse_address_bucket(host.split("%", 1)[0]) or "unix"
    return "unix"


class AuthServicer(auth_pb2_grpc.AuthServicer):
    """``crypto.auth.v1.Auth`` (proto/auth.proto) over :class:`Accounts`."""

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    @_rpc
    async def Register(self, request: auth_pb2.RegisterRequest, context) -> auth_pb2.RegisterResponse:
        user_id, name = await self._accounts.register(request.name, request.password)
        return auth_pb2.RegisterResponse(user_id=user_id, name=name)

    @_rpc
    async def Login(self, request: auth_pb2.LoginRequest, context) -> auth_pb2.TokenPair:
        address = _client_address(request.client_address, context)
        return _token_pair(
            await self._accounts.login(request.name, request.password, address, request.device_token)
        )

    @_rpc
    async def Refresh(self, request: auth_pb2.RefreshRequest, context) -> auth_pb2.TokenPair:
        return _token_pair(
            await self._accounts.refresh(request.refresh_token, request.expected_user_id or None)
        )

    @_rpc
    async def Logout(self, request: auth_pb2.LogoutRequest, context) -> auth_pb2.LogoutResponse:
        await self._accounts.logout(request.refresh_token, request.expected_user_id or None)
        return auth_pb2.LogoutResponse()

    @_rpc
    async def DeleteUser(self, request: auth_pb2.DeleteUserRequest, context) -> auth_pb2.DeleteUserResponse:
        proof = request.WhichOneof("proof")
        if proof == "access_token":
            user_id = await self._accounts.delete_by_access_token(request.access_token)
        elif proof == "credentials":
            user_id = await self._accounts.delete_by_credentials(
                request.credentials.name, request.credentials.password, _client_address("", context)
            )
        else:
            raise InvalidArgument("a proof is required: access_token or credentials")
        return auth_pb2.DeleteUserResponse(user_id=user_id)

    @_rpc
    async def LogoutAll(self, request: auth_pb2.LogoutAllRequest, context) -> auth_pb2.LogoutAllResponse:
        proof = request.WhichOneof("proof")
        if proof == "access_token":
            user_id, revoked = await self._accounts.logout_all(access_token=request.access_token)
        elif proof == "refresh_token":
            user_id, revoked = await self._accounts.logout_all(refresh_token=request.refresh_token)
        else:
            raise InvalidArgument("a proof is required: access_token or refresh_token")
        return auth_pb2.LogoutAllResponse(user_id=user_id, sessions_revoked=revoked)

    @_rpc
    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context
    ) -> auth_pb2.ChangePasswordResponse:
        user_id, revoked = await self._accounts.change_password(
            request.access_token, request.current_password, request.new_password
        )
        return auth_pb2.ChangePasswordResponse(user_id=user_id, sessions_revoked=revoked)

    @_rpc
    async def GetPublicKeys(
        self, request: auth_pb2.GetPublicKeysRequest, context
    ) -> auth_pb2.GetPublicKeysResponse:
        return auth_pb2.GetPublicKeysResponse(jwks_json=self._accounts.public_keys_json())


def auth_handler(servicer: AuthServicer) -> grpc.GenericRpcHandler:
    """The method handlers of ``servicer`` (what ``add_AuthServicer_to_server`` registers), with request
    parsers that turn undecodable bytes into INVALID_ARGUMENT."""
    service = auth_pb2.DESCRIPTOR.services_by_name["Auth"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_lenient_parser(getattr(auth_pb2, method.input_type.name)),
            response_serializer=lambda message: message.SerializeToString(),
        )
        for method in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


async def start(settings: AuthSettings) -> Running[AuthService]:
    """Start the auth server and return once it serves.

    The gRPC port is bound first (``settings.port`` 0 picks a free one: see ``Running.port``) with health
    ``NOT_SERVING``; then the migrations are applied, retried with backoff while the database is not
    reachable, and health turns ``SERVING``. Cancelling the caller while it waits stops the server.
    The port speaks mutual TLS only (:func:`crypto_mesh.grpc_tls.tls_server`) with the ``settings.tls_*``
    files; ``crypto.auth.v1.Auth`` admits the :data:`CALLERS` identities only. ``await running.stop()``
    reports ``NOT_SERVING``, lets in-flight calls finish (up to :data:`STOP_GRACE_S`), then closes the
    database pool and stops the hashing threads.
    Raises ``OSError``/``ValueError`` if the signing keys or the TLS files cannot be read or used,
    ``RuntimeError`` if the port cannot be bound; nothing is left open then.
    """
    return await start_service("auth", functools.partial(_build, settings))


async def _build(settings: AuthSettings, lifecycle: Lifecycle) -> tuple[int, AuthService]:
    tls = settings.mesh_tls()
    issuer = TokenIssuer(
        load_private_key(settings.jwt_private_key_file),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_s=settings.access_token_ttl_s,
        device_ttl_s=settings.device_token_ttl_s,
        retired_keys=(
            load_public_keys(settings.jwt_retired_public_keys_file)
            if settings.jwt_retired_public_keys_file
            else ()
        ),
    )
    hasher = await asyncio.to_thread(
        functools.partial(
            PasswordHasher,
            settings.bcrypt_cost,
            max_queue_wait_s=settings.hash_queue_max_wait_s,
            workers=settings.hash_workers,
        )
    )
    lifecycle.on_stop_sync(hasher.close)
    engine = create_engine(settings.database_url)
    store = AuthStore(engine)
    lifecycle.on_stop(store.close)
    budgets = LoginBudgetStore(engine)
    accounts = Accounts(
        store,
        hasher,
        issuer,
        sessions=SessionPolicy(settings.refresh_token_ttl_s, settings.session_max_lifetime_s),
        throttle=LoginThrottle(
            budgets,
            LoginLimits(
                per_name_and_address=settings.login_rate_per_name_and_address,
                per_name=settings.login_rate_per_name,
                per_device=settings.login_rate_per_device,
            ),
        ),
    )

    service = AuthService(accounts, hasher, engine, GrpcMetrics("auth", "server"))
    metrics_port = await serve_metrics_port(lifecycle, registry_for(service), settings.host, settings)
    health_servicer = health.aio.HealthServicer()
    server, port = tls_server(
        tls,
        settings.host,
        settings.port,
        {SERVICE_NAME: CALLERS},
        options=[("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES)],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        interceptors=[GrpcServerObserver(service.grpc_metrics, access_log=settings.access_log)],
    )
    server.add_generic_rpc_handlers((auth_handler(AuthServicer(accounts)),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await lifecycle.serve_grpc(server, health_servicer, (SERVICE_NAME,), grace_s=STOP_GRACE_S, serving=False)
    log.info("auth_listening", host=settings.host, port=port, kid=issuer.kid, metrics_port=metrics_port)

    ready = asyncio.get_running_loop().create_future()
    maintenance = lifecycle.task(
        _maintain(settings.database_url, store, budgets, health_servicer, ready), "auth-maintenance"
    )
    await asyncio.wait({ready, maintenance}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        maintenance.result()  # it ended before the service was ready: raise what ended it
        raise RuntimeError("auth maintenance task ended before the service was ready")
    return port, dataclasses.replace(service, metrics_port=metrics_port)


async def _maintain(
    database_url: str,
    store: AuthStore,
    budgets: LoginBudgetStore,
    health_servicer: health.aio.HealthServicer,
    ready: asyncio.Future,
) -> None:
    """Migrate (retrying until the database answers), turn SERVING, then keep health true and prune tokens
    and login budgets back to a full allowance."""
    async for attempt in retrying("auth_migrations_retrying", base_s=0.2, max_s=10.0):
        with attempt:
            await asyncio.to_thread(migrations.upgrade, database_url)
    await _set_health(health_servicer, serving=True)
    ready.set_result(None)
    loop = asyncio.get_running_loop()
    next_prune = loop.time()
    serving = True
    while True:
        await asyncio.sleep(HEALTH_PING_INTERVAL_S)
        try:
            await store.ping()
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_INTERVAL_S
                pruned = await store.delete_expired_refresh_tokens(datetime.now(UTC) - PRUNE_AFTER)
                if pruned:
                    log.info("refresh_tokens_pruned", count=pruned)
                full = await budgets.delete_full()
                if full:
                    log.info("login_budgets_pruned", count=full)
            reachable = True
        except Unavailable as exc:
            raise_if_cancelling()  # a driver may turn a cancellation into its own error
            reachable = False
            if serving:
                log.warning("auth_database_unreachable", error=str(exc.__cause__ or exc))
        except Exception:
            raise_if_cancelling()
            log.exception("auth_maintenance_failed")
            continue
        if reachable != serving:
            serving = reachable
            await _set_health(health_servicer, serving=serving)
            log.info("auth_health_changed", serving=serving)


async def _set_health(health_servicer: health.aio.HealthServicer, *, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, status)
