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

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from crypto_mesh.service import Lifecycle

S = TypeVar("S")

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
    ``prefix`` and any further ``collectors`` (a histogram, say), so two services started in one process (the
    tests) never collide on metric names."""
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


async def serve_metrics(lifecycle: Lifecycle, registry: CollectorRegistry, host: str, port: int) -> int:
    """Serve ``registry`` at ``GET /metrics`` on a port of its own, ``host:port`` (0: a free port), until
    ``lifecycle`` stops; returns the bound port. Raises ``OSError`` if the port cannot be bound."""
    app = web.Application()
    add_metrics_route(app, registry)
    return await lifecycle.serve_http(app, host, port, access_log=None)


def parse_samples(text: str) -> dict[str, float]:
    """Prometheus text exposition → ``{"name{label=value,...}": value}`` of every sample, labels sorted by
    name (``"name"`` alone when a sample has no labels). For tests and benchmarks reading ``/metrics``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
