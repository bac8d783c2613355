"""Prometheus metrics of every service, declared one way.

A service lists its series once, each as a :class:`Declared` made by :func:`counter` or :func:`gauge`: the
name without the service prefix, the help text, and a getter that reads the current value from the service
object. :func:`metrics_registry` turns such a list into a registry of the service's own, read at scrape
time, so the hot path only ever increments a plain integer attribute and metrics cost nothing per frame. The
registry is served at ``GET /metrics`` (Prometheus text format 0.0.4) either as a route of the service's own
HTTP API (:func:`add_metrics_route`) or on a port of its own (:func:`serve_metrics`)::

    METRICS = (
        counter("frames_in", "Frames received from the exchange.", lambda proxy: proxy.counters.frames_in),
        gauge("streams", "Upstream streams with a subscriber.", lambda proxy: len(proxy.fanout.streams)),
    )
    registry = metrics_registry("socket_proxy", METRICS, service)  # socket_proxy_frames_in_total, ...
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from crypto_mesh.service import Lifecycle
from crypto_mesh.servicecreds import bearer_token_middleware, read_tokens
from crypto_mesh.settings import MetricsPortSettings

if TYPE_CHECKING:
    from sqlalchemy.pool import Pool

S = TypeVar("S")

#: Bucket upper bounds (s) of every latency histogram declared here: 1 ms to 10 s.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: What a getter returns: the value of an unlabelled series, or ``{label values: value}`` of a labelled one.
Value = float | Mapping[tuple[str, ...], float]


@dataclass(frozen=True)
class Declared(Generic[S]):
    """One metric family of a service: exposed as ``<prefix>_<name>`` (a counter's samples end in ``_total``),
    with ``help``; ``read(service)`` gives its value at scrape time (a number, or with ``labels`` a mapping of
    label values, in the order of ``labels``, to numbers)."""

    kind: Literal["counter", "gauge"]
    name: str
    help: str
    read: Callable[[S], Value]
    labels: tuple[str, ...] = ()


def counter(name: str, help: str, read: Callable[[S], Value], *, labels: tuple[str, ...] = ()) -> Declared[S]:
    """A counter (a total since start that only grows) named ``<prefix>_<name>``, exposed as ``..._total``."""
    return Declared("counter", name, help, read, labels)


def gauge(name: str, help: str, read: Callable[[S], Value], *, labels: tuple[str, ...] = ()) -> Declared[S]:
    """A gauge (a current size or state) named ``<prefix>_<name>``."""
    return Declared("gauge", name, help, read, labels)


class DeclaredCollector(Collector, Generic[S]):
    """Reads every series of ``declared`` from ``source`` when scraped, in the order declared."""

    def __init__(self, prefix: str, declared: Iterable[Declared[S]], source: S) -> None:
        self._prefix = prefix
        self._declared = tuple(declared)
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for metric in self._declared:
            family_class = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            name = f"{self._prefix}_{metric.name}"
            value = metric.read(self._source)
            if not metric.labels:
                yield family_class(name, metric.help, value=value)
                continue
            family = family_class(name, metric.help, labels=metric.labels)
            for label_values, sample in value.items():
                family.add_metric(label_values, sample)
            yield family


def metrics_registry(
    prefix: str, declared: Iterable[Declared[S]], source: S, *collectors: Collector
) -> CollectorRegistry:
    """A registry of its own (not the process-global one) with the ``declared`` series of ``source`` under
    ``prefix`` and any further ``collectors`` (a histogram, a :class:`CollectorGroup`), so two services started
    in one process (the tests) never collide on metric names."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeclaredCollector(prefix, declared, source))
    for collector in collectors:
        registry.register(collector)
    return registry


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    """Serve ``registry`` at ``GET /metrics`` of ``app`` (Prometheus text format 0.0.4); the app's middlewares
    (a service credential, say) apply to it as to every other route."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)


async def serve_metrics(
    lifecycle: Lifecycle, registry: CollectorRegistry, host: str, port: int, tokens: Iterable[str]
) -> int:
    """Serve ``registry`` at ``GET /metrics`` on a port of its own, ``host:port`` (0: a free port), until
    ``lifecycle`` stops, to callers presenting one of ``tokens`` as ``Authorization: Bearer <token>``
    (:func:`crypto_mesh.servicecreds.bearer_token_middleware`; 401 otherwise); returns the bound port. Raises
    ``OSError`` if the port cannot be bound."""
    app = web.Application(middlewares=[bearer_token_middleware(tokens, realm="metrics")])
    add_metrics_route(app, registry)
    return await lifecycle.serve_http(app, host, port, access_log=None)


async def serve_metrics_port(
    lifecycle: Lifecycle, registry: CollectorRegistry, host: str, settings: MetricsPortSettings
) -> int | None:
    """:func:`serve_metrics` on ``host:<PREFIX>METRICS_PORT`` with the tokens of ``<PREFIX>METRICS_TOKEN_FILE``;
    None (nothing served) when the port is 0. Raises ``OSError`` if the token file cannot be read or the port
    bound, ``ValueError`` if the file holds no token."""
    if not settings.metrics_port or settings.metrics_token_file is None:
        return None
    tokens = read_tokens(settings.metrics_token_file)
    return await serve_metrics(lifecycle, registry, host, settings.metrics_port, tokens)


def pool_gauges(read_pool: Callable[[S], Pool]) -> tuple[Declared[S], ...]:
    """The gauges of a SQLAlchemy connection pool (``read_pool(service)``, e.g. ``engine.sync_engine.pool``
    of an ``AsyncEngine``): ``db_pool_size`` (connections the pool holds open, idle or not) and
    ``db_pool_checked_out`` (connections lent to a transaction now)."""
    return (
        gauge("db_pool_size", "PostgreSQL connections held open by the pool.", lambda s: read_pool(s).size()),
        gauge(
            "db_pool_checked_out",
            "PostgreSQL connections of the pool in use by a transaction now.",
            lambda s: read_pool(s).checkedout(),
        ),
    )


class CollectorGroup:
    """Several collectors that a service registers together (the RED series of its routes or RPCs, its Redis
    client's series): pass the group itself to :func:`metrics_registry` as one of its ``collectors``. Their
    names are still checked against the registry's others (:meth:`describe`)."""

    def __init__(self, *collectors: Collector) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        """The samples of every collector of the group, in order."""
        for collector in self._collectors:
            yield from collector.collect()

    def describe(self) -> Iterator[Metric]:
        """The families of every collector of the group (for the registry's duplicate-name check)."""
        for collector in self._collectors:
            yield from collector.describe()


def latency_histogram(name: str, help: str, labels: tuple[str, ...] = ()) -> Histogram:
    """A histogram of durations in seconds (1 ms to 10 s buckets) not registered anywhere: pass it to
    :func:`metrics_registry` as one of its ``collectors``. ``name`` is the full series name."""
    return Histogram(name, help, labels, buckets=DURATION_BUCKETS, registry=None)


class RedisMetrics(CollectorGroup):
    """The Redis client's series of a service under ``prefix``: ``<prefix>_redis_command_duration_seconds
    {command}`` (round trip of a command, or of a whole pipeline as ``command="PIPELINE"``) and
    ``<prefix>_redis_command_errors_total{command}``. :meth:`instrument` a client to feed them; register the
    group in the service's registry."""

    def __init__(self, prefix: str) -> None:
        self.duration = latency_histogram(
            f"{prefix}_redis_command_duration_seconds", "Redis command round trip (s), by command.", ("command",)
        )
        self.errors = Counter(
            f"{prefix}_redis_command_errors", "Redis commands that failed, by command.", ("command",), registry=None
        )
        super().__init__(self.duration, self.errors)

    def instrument(self, client: Any) -> Any:
        """Time every command of ``client`` (a ``redis.asyncio.Redis``) and of its pipelines; returns it.

        Wraps the client's own ``execute_command`` and ``pipeline`` (instance attributes: other clients are not
        touched). Pub/sub connections are not timed."""
        execute = client.execute_command
        make_pipeline = client.pipeline

        async def execute_command(*args: Any, **options: Any) -> Any:
            return await self._timed(str(args[0]).upper() if args else "?", execute(*args, **options))

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            made = make_pipeline(*args, **kwargs)
            run = made.execute

            async def execute_pipeline(*run_args: Any, **run_kwargs: Any) -> Any:
                return await self._timed("PIPELINE", run(*run_args, **run_kwargs))

            made.execute = execute_pipeline
            return made

        client.execute_command = execute_command
        client.pipeline = pipeline
        return client

    async def _timed(self, command: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        except Exception:
            self.errors.labels(command).inc()
            raise
        finally:
            self.duration.labels(command).observe(time.perf_counter() - started)


def parse_samples(text: str) -> dict[str, float]:
    """Prometheus text exposition → ``{"name{label=value,...}": value}`` of every sample, labels sorted by
    name (``"name"`` alone when a sample has no labels). For tests and benchmarks reading ``/metrics``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
