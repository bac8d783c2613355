"""OpenTelemetry traces of every service, exported with OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

:func:`configure_tracing` is called once per process by :func:`crypto_mesh.runtime.run_service`, before the
service starts. Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` it does nothing at all: no OpenTelemetry module is
imported, no library is patched, so tracing costs nothing when off. With it, the official instrumentations
trace, with W3C Trace Context propagated between the services:

- aiohttp servers (``opentelemetry-instrumentation-aiohttp-server``: a span per request, the incoming
  ``traceparent`` continued) and aiohttp clients (``-aiohttp-client``: the BFF's calls to the aggregator and the
  ETL, ``traceparent`` sent);
- gRPC servers and channels of ``grpc.aio`` (``-grpc``: auth, socket_proxy and their callers; the trace context
  travels in the call's metadata; socket_proxy's market streams only on their callers' side,
  :data:`UNTRACED_SERVER_METHODS`);
- redis-py (``-redis``) and aiokafka (``-aiokafka``: producer spans inject the context into the record's
  headers, consumer spans link to it).

Spans are batched and sent to ``<OTEL_EXPORTER_OTLP_ENDPOINT>/v1/traces`` (OTLP/HTTP protobuf, an OpenTelemetry
Collector, Jaeger or Tempo), with the resource ``service.name=<service>``; the exporter's other standard
variables (``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_TIMEOUT``, ``OTEL_TRACES_SAMPLER``...) apply as
documented by OpenTelemetry. A collector that is down costs dropped spans, never a failed request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: The standard variable that turns tracing on (OpenTelemetry's OTLP exporter specification).
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
#: Seconds an export may take (each batch, and the last one at exit) unless ``OTEL_EXPORTER_OTLP_TIMEOUT`` or
#: ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`` says otherwise (OpenTelemetry's default, 10 s, would hold a stopping
#: service that long when the collector is down: ``crypto-mesh up`` kills a service still running after 5 s).
EXPORT_TIMEOUT_S = 2.0
#: Server-streaming methods whose handlers send with ``context.write()`` (socket_proxy's market streams): the gRPC
#: instrumentation's server interceptor takes every streaming handler for an async generator and would fail them
#: (``'async for' requires an object with __aiter__``). They are not traced on the server side (a span of a stream
#: that lives for hours would say little); their callers' client spans remain.
UNTRACED_SERVER_METHODS = (
    "/crypto.socket.v1.SocketProxy/StreamTrades",
    "/crypto.socket.v1.SocketProxy/StreamMiniTickers",
)


@dataclass
class Tracing:
    """Tracing as configured in this process: the tracer ``provider`` and the ``instrumentors`` applied;
    :meth:`shutdown` sends what is pending and removes the instrumentation."""

    provider: Any
    instrumentors: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        """Flush and stop the exporter, and undo every instrumentation (for the tests: a service process
        simply ends)."""
        for instrumentor in reversed(self.instrumentors):
            instrumentor.uninstrument()
        self.provider.shutdown()


def configure_tracing(service: str, endpoint: str | None = None) -> Tracing | None:
    """Trace this process as ``service`` if ``endpoint`` (default: ``$OTEL_EXPORTER_OTLP_ENDPOINT``, e.g.
    ``http://otel-collector:4318``) is set; None, with nothing imported or patched, if not.

    Must run before the service creates its aiohttp applications, gRPC servers and channels (the
    instrumentations patch their constructors). The provider becomes OpenTelemetry's global one (the first
    call of a process only: later calls keep the first global provider but instrument with their own)."""
    endpoint = endpoint if endpoint is not None else os.environ.get(ENDPOINT_VARIABLE, "")
    if not endpoint:
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer, filters
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    timeout_set = {"OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"} & set(os.environ)
    exporter = OTLPSpanExporter(
        endpoint=endpoint.rstrip("/") + "/v1/traces", timeout=None if timeout_set else EXPORT_TIMEOUT_S
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracing = Tracing(provider)
    for instrumentor in (
        AioHttpServerInstrumentor(),
        AioHttpClientInstrumentor(),
        GrpcAioInstrumentorServer(
            filter_=filters.negate(filters.any_of(*map(filters.full_method_name, UNTRACED_SERVER_METHODS)))
        ),
        GrpcAioInstrumentorClient(),
        RedisInstrumentor(),
        AIOKafkaInstrumentor(),
    ):
        instrumentor.instrument(tracer_provider=provider)
        tracing.instrumentors.append(instrumentor)
    log.info("tracing_on", endpoint=endpoint)
    return tracing
