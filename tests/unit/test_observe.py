"""One request id and the RED series of every route and RPC (crypto_mesh.observe), on an aiohttp app and a gRPC
server of this process: a request's id reaches the gRPC handler it calls, comes back in ``X-Request-Id``, is on
the access log lines of both, and each hop is counted by its route template or method."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import structlog
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest
from support.polling import eventually

from crypto_mesh.metrics import metrics_registry, parse_samples
from crypto_mesh.observe import (
    REQUEST_ID_HEADER,
    GrpcMetrics,
    GrpcServerObserver,
    HttpMetrics,
    client_observers,
    current_request_id,
    detached_task,
    observe_http,
    request_context,
    valid_request_id,
)

METHOD = "/test.Echo/RequestId"


def samples(*metrics) -> dict[str, float]:
    return parse_samples(generate_latest(metrics_registry("test", (), None, *metrics)).decode())


@pytest.mark.parametrize("value", ["0f8e2a", "req-1.2:3_x", "a" * 128])
def test_a_request_id_of_letters_digits_and_separators_is_taken(value):
    assert valid_request_id(value)


@pytest.mark.parametrize("value", [None, "", "a" * 129, "id with spaces", "x\nlevel=error", "ü"])
def test_a_request_id_that_could_forge_a_log_line_or_grow_it_is_replaced(value):
    assert not valid_request_id(value)


@pytest.fixture
async def echo_server():
    """A gRPC server answering ``METHOD`` with the request id its handler sees; yields (port, its metrics)."""

    async def request_id(_request: bytes, _context) -> bytes:
        return (current_request_id() or "").encode()

    async def refuse(_request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    metrics = GrpcMetrics("echo", "server")
    server = grpc.aio.server(interceptors=[GrpcServerObserver(metrics, access_log=True)])
    handlers = {
        "RequestId": grpc.unary_unary_rpc_method_handler(request_id),
        "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port, metrics
    await server.stop(None)


@pytest.fixture
async def edge(echo_server):
    """An aiohttp app whose ``GET /items/{name}`` calls the echo server and answers what it saw; an incoming
    ``X-Request-Id`` is trusted only with ``X-Test-Trusted: yes``. Yields (base URL, HTTP metrics, gRPC client
    metrics, gRPC server metrics)."""
    port, server_metrics = echo_server
    http_metrics, client_metrics = HttpMetrics("edge"), GrpcMetrics("edge", "client")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=client_observers(client_metrics))
    call = channel.unary_unary(METHOD)

    async def item(_request: web.Request) -> web.Response:
        return web.Response(body=await call(b""))

    app = web.Application(
        middlewares=[
            observe_http(
                http_metrics,
                access_log=True,
                trust_request_id=lambda request: request.headers.get("X-Test-Trusted") == "yes",
            )
        ]
    )
    app.router.add_get("/items/{name}", item)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")), http_metrics, client_metrics, server_metrics
    await channel.close()


async def test_one_request_id_goes_from_the_edge_to_the_grpc_handler_and_back(edge):
    base, *_ = edge
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with ClientSession() as http:
            async with http.get(f"{base}/items/a", headers={REQUEST_ID_HEADER: "from-proxy-1", "X-Test-Trusted": "yes"}) as response:
                assert response.status == 200
                assert response.headers[REQUEST_ID_HEADER] == "from-proxy-1"
                assert await response.text() == "from-proxy-1"
    access = {entry["event"]: entry for entry in logs if entry["event"] in {"http_request", "grpc_request"}}
    assert access["http_request"]["request_id"] == "from-proxy-1"
    assert access["http_request"]["route"] == "/items/{name}" and access["http_request"]["status"] == 200
    assert access["grpc_request"]["request_id"] == "from-proxy-1" and access["grpc_request"]["code"] == "OK"


async def test_an_untrusted_or_malformed_request_id_is_replaced_by_a_new_one(edge):
    base, *_ = edge
    async with ClientSession() as http:
        for headers in ({REQUEST_ID_HEADER: "from-client"}, {REQUEST_ID_HEADER: "bad id", "X-Test-Trusted": "yes"}):
            async with http.get(f"{base}/items/a", headers=headers) as response:
                given = response.headers[REQUEST_ID_HEADER]
                assert given != headers[REQUEST_ID_HEADER] and valid_request_id(given)
                assert await response.text() == given


async def test_routes_count_by_template_and_rpcs_by_method_and_code(edge):
    base, http_metrics, client_metrics, server_metrics = edge
    async with ClientSession() as http:
        for path in ("/items/a", "/items/b", "/nowhere/1"):
            async with http.get(f"{base}{path}") as response:
                await response.read()
    # The server's interceptor counts a call once the handler has returned, which may be just after the
    # client has its answer.
    server_counted = f'echo_grpc_server_handled_total{{grpc_code=OK,grpc_method={METHOD}}}'
    await eventually(lambda: samples(server_metrics).get(server_counted) == 2, what="the server's count")
    found = samples(http_metrics, client_metrics, server_metrics)
    assert found['edge_http_requests_total{method=GET,route=/items/{name},status=200}'] == 2
    assert found['edge_http_requests_total{method=GET,route=unmatched,status=404}'] == 1
    assert found['edge_http_request_duration_seconds_count{method=GET,route=/items/{name}}'] == 2
    assert found[f'edge_grpc_client_handled_total{{grpc_code=OK,grpc_method={METHOD}}}'] == 2
    assert found[f'echo_grpc_server_handled_total{{grpc_code=OK,grpc_method={METHOD}}}'] == 2
    assert found[f'echo_grpc_server_handling_seconds_count{{grpc_method={METHOD}}}'] == 2


async def test_a_refused_rpc_counts_as_an_error_by_its_code_on_both_sides(echo_server):
    port, server_metrics = echo_server
    client_metrics = GrpcMetrics("caller", "client")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=client_observers(client_metrics)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary("/test.Echo/Refuse")(b"")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    # The client has the status as soon as the server sends it; the server's interceptor counts it after.
    server_counted = "echo_grpc_server_handled_total{grpc_code=NOT_FOUND,grpc_method=/test.Echo/Refuse}"
    await eventually(lambda: samples(server_metrics).get(server_counted) == 1, what="the server's count")
    found = samples(client_metrics, server_metrics)
    assert found["caller_grpc_client_handled_total{grpc_code=NOT_FOUND,grpc_method=/test.Echo/Refuse}"] == 1
    assert found["echo_grpc_server_handled_total{grpc_code=NOT_FOUND,grpc_method=/test.Echo/Refuse}"] == 1


async def test_a_task_that_outlives_its_request_carries_no_request_id():
    async def request_id_seen() -> str | None:
        await asyncio.sleep(0)
        return current_request_id()

    async with request_context("the-request"):
        inherited = asyncio.create_task(request_id_seen())
        detached = detached_task(request_id_seen())
    assert await inherited == "the-request"
    assert await detached is None
