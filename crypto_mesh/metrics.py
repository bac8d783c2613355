"""Prometheus exposition shared by the services: their collectors read plain counters at scrape time, so the
hot path only ever increments an integer attribute."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

#: One metric: (name without the service prefix, help text, current value).
Row = tuple[str, str, float]


def families(prefix: str, counters: Iterable[Row] = (), gauges: Iterable[Row] = ()) -> Iterator[Metric]:
    """``<prefix>_<name>`` counter families (exposed with ``_total``) then gauge families, one per row."""
    for name, doc, value in counters:
        yield CounterMetricFamily(f"{prefix}_{name}", doc, value=value)
    for name, doc, value in gauges:
        yield GaugeMetricFamily(f"{prefix}_{name}", doc, value=value)


def own_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding ``collectors``, so two services started in
    one process (the tests) never collide on metric names."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def parse_samples(text: str) -> dict[str, float]:
    """Prometheus text exposition → ``{"name{label=value,...}": value}`` of every sample, labels sorted by
    name (``"name"`` alone when a sample has no labels). For tests and benchmarks reading ``/metrics``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
