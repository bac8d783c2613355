"""What every service tells its operator about each request: RED metrics, the request id, access logs.

RED (rate, errors, duration) of every HTTP route and gRPC method, in the service's own registry
(:func:`crypto_mesh.metrics.metrics_registry`), named ``<prefix>_...``:

- HTTP (:func:`observe_http`, an aiohttp middleware): ``<prefix>_http_requests_total{method,route,status}`` and
  ``<prefix>_http_request_duration_seconds{method,route}``. ``route`` is the route's template
  (``/v1/instruments/{symbol}``), never the raw path, so a client cannot grow the series; a request that
  matched no route counts as ``route="unmatched"``.
- gRPC server (:class:`GrpcServerObserver`): ``<prefix>_grpc_server_started_total{grpc_method}``,
  ``<prefix>_grpc_server_handled_total{grpc_method,grpc_code}`` and
  ``<prefix>_grpc_server_handling_seconds{grpc_method}`` (``grpc_method`` is ``/package.Service/Method``).
- gRPC client (:func:`client_observers`): ``<prefix>_grpc_client_started_total{grpc_method}``,
  ``<prefix>_grpc_client_handled_total{grpc_method,grpc_code}`` and
  ``<prefix>_grpc_client_handling_seconds{grpc_method}`` (a stream's duration runs until it ends).

The request id: one ``X-Request-Id`` per request, from the edge (the BFF) to every service it calls. A
service takes the incoming id when it is valid (:func:`valid_request_id`) and its sender is trusted (the
BFF: a trusted proxy; the internal services: every caller, since each is authenticated), else makes one
(:func:`new_request_id`); the id is bound in structlog's context (every log line of the request carries
``request_id=...``), returned in the ``X-Request-Id`` response header, and sent on with every call the request
makes: as the ``X-Request-Id`` header by :func:`request_id_headers`, as the ``x-request-id`` gRPC metadata by
:func:`client_observers`.

Access logs (``<PREFIX>ACCESS_LOG=true``, :class:`crypto_mesh.settings.ServiceSettings`): one
``http_request`` (or ``grpc_request``) event a request, with method, route, path (never the query), status,
duration in ms and peer, through structlog (JSON with ``<PREFIX>LOG_FORMAT=json``).
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc
import structlog
from aiohttp import web
from prometheus_client import Counter

from crypto_mesh.grpc_tls import wrap_handler
from crypto_mesh.logs import get_logger
from crypto_mesh.metrics import CollectorGroup, latency_histogram

log = get_logger(__name__)

#: The HTTP header of the request id (request and response).
REQUEST_ID_HEADER = "X-Request-Id"
#: The gRPC metadata key of the request id (gRPC keys are lower case).
REQUEST_ID_METADATA = "x-request-id"
#: What an incoming request id may look like: 1 to 128 of letters, digits and ``-._:`` (a UUID, a trace id,
#: a proxy's id); anything else (a log-injection attempt, a huge header) is replaced by a new id.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
#: Route label of a request that matched no route (a 404 or 405), so that clients cannot add series.
UNMATCHED = "unmatched"

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_request_id() -> str:
    """A new request id: 32 lowercase hex digits (a random UUID)."""
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> bool:
    """True if ``value`` may be taken as a request id (see :data:`_REQUEST_ID`)."""
    return value is not None and _REQUEST_ID.fullmatch(value) is not None


def current_request_id() -> str | None:
    """The id of the request being served by the running task, or None outside a request."""
    return _request_id.get()


def request_id_headers() -> dict[str, str]:
    """``{"X-Request-Id": <id>}`` of the request being served, for an HTTP call it makes; ``{}`` outside one."""
    request_id = _request_id.get()
    return {REQUEST_ID_HEADER: request_id} if request_id else {}


@asynccontextmanager
async def request_context(request_id: str) -> AsyncIterator[None]:
    """Within: :func:`current_request_id` is ``request_id`` and every structlog line carries it."""
    token = _request_id.set(request_id)
    try:
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            yield
    finally:
        _request_id.reset(token)


class HttpMetrics(CollectorGroup):
    """RED series of an HTTP service under ``prefix`` (see the module docstring); register the group in the
    service's registry."""

    def __init__(self, prefix: str) -> None:
        self.requests = Counter(
            f"{prefix}_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            registry=None,
        )
        self.duration = latency_histogram(
            f"{prefix}_http_request_duration_seconds",
            "Time to answer an HTTP request (s), by method and route template.",
            ("method", "route"),
        )
        super().__init__(self.requests, self.duration)

    def observe(self, method: str, route: str, status: int, duration_s: float) -> None:
        """Count one answered request and its duration (s)."""
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(duration_s)


def route_template(request: web.Request) -> str:
    """The template of the route ``request`` matched (``/v1/instruments/{symbol}``), or :data:`UNMATCHED`."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    if resource is None:
        return UNMATCHED
    return resource.canonical


def observe_http(
    metrics: HttpMetrics,
    *,
    access_log: bool = False,
    trust_request_id: Callable[[web.Request], bool] = lambda _request: True,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware: the request id (taken from ``X-Request-Id`` when valid and
    ``trust_request_id(request)``, else new; bound in structlog's context; returned in the response's
    ``X-Request-Id``), the RED series of ``metrics`` and, with ``access_log``, one
    ``http_request`` log event a request. Put it first in the application's middlewares, so that it sees
    the final status of every answer, refusals included."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get(REQUEST_ID_HEADER)
        request_id = incoming if valid_request_id(incoming) and trust_request_id(request) else new_request_id()
        started = time.perf_counter()
        status = 500
        async with request_context(request_id):
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                status = exc.status
                exc.headers[REQUEST_ID_HEADER] = request_id
                raise
            else:
                status = response.status
                if not response.prepared:
                    response.headers[REQUEST_ID_HEADER] = request_id
                return response
            finally:
                duration_s = time.perf_counter() - started
                route = route_template(request)
                metrics.observe(request.method, route, status, duration_s)
                if access_log:
                    log.info(
                        "http_request",
                        method=request.method,
                        route=route,
                        path=request.path,
                        status=status,
                        duration_ms=round(duration_s * 1000, 3),
                        peer=request.remote,
                    )

    return observe


def detached_task(coroutine: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
    """Run ``coroutine`` as a task that outlives the request that starts it (an upstream connection, a market
    stream), in an empty context: its log lines carry no request id and its spans join no request's trace, where
    ``asyncio.create_task`` would copy both from the request for the task's whole life."""
    return asyncio.get_running_loop().create_task(coroutine, name=name, context=contextvars.Context())


async def set_request_id_on_prepare(_request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` hook: the ``X-Request-Id`` header on responses prepared by the handler
    itself (a WebSocket's handshake, a streamed body), which :func:`observe_http` sees only once sent."""
    request_id = _request_id.get()
    if request_id and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = request_id


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


class GrpcMetrics(CollectorGroup):
    """RED series of a gRPC server (``side="server"``) or client (``side="client"``) under ``prefix`` (see
    the module docstring); register the group in the service's registry."""

    def __init__(self, prefix: str, side: str) -> None:
        self.started = Counter(
            f"{prefix}_grpc_{side}_started",
            f"gRPC calls started ({side} side), by method (a stream counts here from its start).",
            ("grpc_method",),
            registry=None,
        )
        self.handled = Counter(
            f"{prefix}_grpc_{side}_handled",
            f"gRPC calls completed ({side} side), by method and status code.",
            ("grpc_method", "grpc_code"),
            registry=None,
        )
        self.duration = latency_histogram(
            f"{prefix}_grpc_{side}_handling_seconds",
            f"Duration of gRPC calls ({side} side, s), by method.",
            ("grpc_method",),
        )
        super().__init__(self.started, self.handled, self.duration)

    def start(self, method: str) -> None:
        """Count one call started."""
        self.started.labels(method).inc()

    def observe(self, method: str, code: grpc.StatusCode, duration_s: float) -> None:
        """Count one completed call with its status ``code`` and duration (s)."""
        self.handled.labels(method, code.name).inc()
        self.duration.labels(method).observe(duration_s)


class GrpcServerObserver(grpc.aio.ServerInterceptor):
    """For every call: the request id of its ``x-request-id`` metadata (when valid; else a new one) bound in
    structlog's context while its handler runs, the RED series of ``metrics`` and, with
    ``access_log``, a ``grpc_request`` log event. Put it before the server's other interceptors, so that
    refused calls are counted and logged with their request id too."""

    def __init__(self, metrics: GrpcMetrics, *, access_log: bool = False) -> None:
        self._metrics = metrics
        self._access_log = access_log

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details.method)
        incoming = dict(handler_call_details.invocation_metadata or ()).get(REQUEST_ID_METADATA)
        request_id = incoming if valid_request_id(incoming) else new_request_id()
        return wrap_handler(handler, lambda context: self._around(method, request_id, context))

    @asynccontextmanager
    async def _around(self, method: str, request_id: str, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        self._metrics.start(method)
        async with request_context(request_id):
            try:
                yield
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            else:
                code = context.code() or grpc.StatusCode.OK
            finally:
                duration_s = time.perf_counter() - started
                self._metrics.observe(method, code, duration_s)
                if self._access_log:
                    log.info(
                        "grpc_request",
                        method=method,
                        code=code.name,
                        duration_ms=round(duration_s * 1000, 3),
                        peer=context.peer(),
                    )


def client_observers(metrics: GrpcMetrics) -> list[grpc.aio.ClientInterceptor]:
    """The client interceptors of a channel (``grpc.aio`` takes one kind of call per interceptor): for every
    unary or server-streaming call, the request id being served (:func:`current_request_id`) sent as
    ``x-request-id`` metadata, and the RED series of ``metrics`` (a stream's duration and code
    once it ends)."""
    return [_UnaryObserver(metrics), _StreamObserver(metrics)]


class _UnaryObserver(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metrics: GrpcMetrics) -> None:
        self._metrics = metrics

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = _method_name(client_call_details.method)
        started = time.perf_counter()
        self._metrics.start(method)
        call = await continuation(_with_request_id(client_call_details), request)
        code = grpc.StatusCode.OK
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            code = exc.code()  # the caller sees it when it awaits the call
        except BaseException:
            # The caller's task cancelled (a timeout, a stop): counted, and the cancellation goes on, so that
            # asyncio.timeout and stops still work through the interceptor.
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._metrics.observe(method, code, time.perf_counter() - started)
        return call


class _StreamObserver(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metrics: GrpcMetrics) -> None:
        self._metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        method = _method_name(client_call_details.method)
        started = time.perf_counter()
        call = await continuation(_with_request_id(client_call_details), request)
        self._metrics.start(method)
        call.add_done_callback(lambda done: self._observe_done(method, done, started))
        return call

    def _observe_done(self, method: str, call: Any, started: float) -> None:
        duration_s = time.perf_counter() - started
        task = asyncio.get_running_loop().create_task(self._observe_code(method, call, duration_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _observe_code(self, method: str, call: Any, duration_s: float) -> None:
        # The call is done: its code() answers at once.
        code = grpc.StatusCode.CANCELLED if call.cancelled() else await call.code()
        self._metrics.observe(method, code, duration_s)


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    request_id = _request_id.get()
    if not request_id:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata[REQUEST_ID_METADATA] = request_id
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )
