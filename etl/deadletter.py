"""Dead-letter records: what the ETL writes to ``binance.deadletter`` for a record it cannot decode.

Value (JSON, UTF-8)::

    {"topic": "binance.second", "partition": 0, "offset": 41, "timestamp": 1723161256012,
     "key": "YnRjdXNkdA==", "value": "e25vdCBqc29u", "reason": "value is not JSON: ..."}

``key`` and ``value`` are the original bytes in base64 (``null`` when absent), so any record, JSON or not,
is kept byte for byte; ``timestamp`` is the original record's (Unix ms). The record's key is the original
key, and headers ``dlq.topic``, ``dlq.partition``, ``dlq.offset`` and ``dlq.reason`` repeat the origin for
tools that only read headers. Delivery is at least once: a batch redelivered after a crash writes its dead
letters again (same origin, so they are recognisable).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from aiokafka import ConsumerRecord

from crypto_mesh import jsonutil

#: Longest reason kept (characters); the reasons of :class:`etl.records.InvalidRecord` are far shorter.
MAX_REASON_CHARS = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record to write to the dead-letter topic: ``key``, ``value`` and ``headers`` as sent."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def dead_letter(record: ConsumerRecord, reason: str) -> DeadLetter:
    """The dead letter of ``record`` (a consumed record that could not be decoded) for ``reason``."""
    reason = reason[:MAX_REASON_CHARS]
    envelope = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": _b64(record.key),
        "value": _b64(record.value),
        "reason": reason,
    }
    headers = [
        ("dlq.topic", record.topic.encode()),
        ("dlq.partition", str(record.partition).encode()),
        ("dlq.offset", str(record.offset).encode()),
        ("dlq.reason", reason.encode()),
    ]
    return DeadLetter(key=record.key, value=jsonutil.dumps(envelope), headers=headers)
