"""A login traced through the BFF and auth (crypto_mesh.tracing), exported with OTLP/HTTP to a receiver of this
test: one trace id from the BFF's HTTP span to auth's gRPC span, each a descendant of the one before. And the
BFF's request id: its own, whatever a client that is no trusted proxy sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from support.bff import PASSWORD, new_name
from support.polling import eventually
from support.stacks import serve_stack

from crypto_mesh.grpc_tls import tls_channel
from crypto_mesh.observe import REQUEST_ID_HEADER
from crypto_mesh.pki import AGGREGATOR, SOCKET_PROXY
from crypto_mesh.proto import socket_pb2, socket_pb2_grpc
from crypto_mesh.tracing import configure_tracing
from socket_proxy.server import start as start_proxy
from socket_proxy.settings import ProxySettings

LOGIN_RPC = "crypto.auth.v1.Auth/Login"


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span: ids as hex, name, kind (``Span.SpanKind``) and attributes as strings."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, str]


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[tuple[str, list[ReceivedSpan]]]:
    """An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf) on a free port: (its base URL, the spans
    received so far)."""
    spans: list[ReceivedSpan] = []

    async def traces(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(
                        ReceivedSpan(
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                            span.kind,
                            {a.key: a.value.string_value for a in span.attributes},
                        )
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", spans
    await runner.cleanup()


@pytest.fixture(scope="module")
async def traced(receiver, postgres, redis_url, tmp_path_factory):
    """Auth and a BFF in this process traced to the receiver (instrumented before they start)."""
    url, spans = receiver
    tracing = configure_tracing("mesh-under-test", endpoint=url)
    assert tracing is not None
    try:
        async with serve_stack(postgres, redis_url, tmp_path_factory) as bff:
            yield bff, tracing, spans
    finally:
        await asyncio.to_thread(tracing.shutdown)


def test_tracing_is_off_without_an_endpoint(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert configure_tracing("anything") is None


async def test_a_login_is_one_trace_from_the_bffs_route_to_auths_rpc(traced):
    bff, tracing, spans = traced
    name = new_name()
    status, _ = await bff.register(name)
    assert status == 201
    status, _body, response = await bff.post("/v1/login", json={"name": name, "password": PASSWORD})
    assert status == 200
    assert response.headers[REQUEST_ID_HEADER]

    def login_spans() -> tuple[ReceivedSpan, ReceivedSpan] | None:
        edge = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER and s.attributes.get("http.route") == "/v1/login"]
        rpc = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER and s.name.endswith(LOGIN_RPC)]
        return (edge[-1], rpc[-1]) if edge and rpc else None

    async def exported() -> tuple[ReceivedSpan, ReceivedSpan] | None:
        await asyncio.to_thread(tracing.provider.force_flush)
        return login_spans()

    edge, rpc = await eventually(exported, timeout_s=20, what="the login's spans exported")
    assert rpc.trace_id == edge.trace_id
    by_id = {span.span_id: span for span in spans}
    ancestors = []
    span = rpc
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        ancestors.append(span)
    # auth's server span ← the BFF's gRPC client span ← ... ← the BFF's HTTP server span.
    assert ancestors and ancestors[0].kind == Span.SPAN_KIND_CLIENT and ancestors[0].name.endswith(LOGIN_RPC)
    assert edge in ancestors


async def test_the_bff_answers_its_own_request_id_to_a_client_that_is_no_trusted_proxy(traced):
    bff, _tracing, _spans = traced
    async with bff.http.get(f"{bff.url}/v1/instruments/BTCUSDT", headers={REQUEST_ID_HEADER: "chosen-by-client"}) as response:
        assert response.status == 200
        given = response.headers[REQUEST_ID_HEADER]
    assert given and given != "chosen-by-client"


async def test_socket_proxys_market_streams_flow_while_traced(traced, exchange, mesh_pki):
    assert traced  # the instrumentation is on
    # The gRPC instrumentation's server side takes streaming handlers for async generators; socket_proxy's write
    # with context.write() and must be left out of it (crypto_mesh.tracing.UNTRACED_SERVER_METHODS).
    proxy = await start_proxy(ProxySettings(port=0, exchange_url=exchange.url))
    try:
        async with tls_channel(f"127.0.0.1:{proxy.port}", mesh_pki[AGGREGATOR].load(), SOCKET_PROXY) as channel:
            stub = socket_pb2_grpc.SocketProxyStub(channel)
            tickers = stub.StreamMiniTickers(socket_pb2.MiniTickerStreamRequest())
            trades = stub.StreamTrades(socket_pb2.TradeStreamRequest(symbol="BTCUSDT"))
            for call in (tickers, trades):
                message = await call.read()
                assert message.data, message
                call.cancel()
    finally:
        await proxy.stop()
