"""Prometheus metrics of the ETL, served at ``GET /metrics`` of its HTTP API (with the ``ETL_API_TOKEN_FILE``
credential, like every route but ``/healthz``).

Series (prefix ``etl_``): the RED series of every route, ``http_requests_total{method,route,status}`` and
``http_request_duration_seconds{method,route}`` (:mod:`crypto_mesh.observe`); the consumer's totals
(:class:`etl.consumer.ConsumerStats`), counters ``rows_inserted_total``, ``records_dead_lettered_total``,
``batches_committed_total``, ``insert_failures_total``, ``deadletter_failures_total``, ``commit_failures_total``
and gauge ``records_held``; ``kafka_consumer_lag{topic,partition}`` (records behind each partition's high
watermark, :meth:`etl.consumer.TickerConsumer.partition_lag`); ``clickhouse_insert_seconds{table}`` (round
trip of each acknowledged insert).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crypto_mesh.metrics import Declared, counter, gauge, metrics_registry
from etl.service import EtlService

METRICS: tuple[Declared[EtlService], ...] = (
    counter("rows_inserted", "Rows inserted into ClickHouse.", lambda s: s.consumer.stats.rows_inserted),
    counter(
        "records_dead_lettered",
        "Undecodable records sent to the dead-letter topic.",
        lambda s: s.consumer.stats.records_dead_lettered,
    ),
    counter("batches_committed", "Batches inserted and committed.", lambda s: s.consumer.stats.batches_committed),
    counter("insert_failures", "Failed ClickHouse insert attempts.", lambda s: s.consumer.stats.insert_failures),
    counter(
        "deadletter_failures", "Failed dead-letter sends.", lambda s: s.consumer.stats.deadletter_failures
    ),
    counter("commit_failures", "Failed offset commits.", lambda s: s.consumer.stats.commit_failures),
    gauge("records_held", "Records taken from Kafka, not yet committed.", lambda s: s.consumer.stats.records_held),
    gauge(
        "kafka_consumer_lag",
        "Records between each partition's high watermark and the consumer's position.",
        lambda s: s.consumer.partition_lag(),
        labels=("topic", "partition"),
    ),
)


def registry_for(service: EtlService) -> CollectorRegistry:
    """A registry of its own with the series of :data:`METRICS`, the RED series of the routes and the insert
    latency."""
    return metrics_registry("etl", METRICS, service, service.http_metrics, service.store.insert_latency)
