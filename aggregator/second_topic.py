"""Every SecondStat to Kafka topic ``binance.second``, for the analytical path (ETL → ``crypto.price_seconds``).

Record: key = symbol (lowercase, UTF-8); value = the SecondStat JSON of docs/CONTRACTS.md ("Redis") plus
``message_id`` = ``uuid5(NAMESPACE_URL, "binance.second/<symbol>/<t>")``, so a record delivered twice (a
producer retry, an ETL redelivery) is recognisable as the same record::

    {"message_id": "…", "s": "btcusdt", "t": 1723161255000, "p": "61837.63", "o": "61830.00", "h": "61840.10",
     "l": "61829.99", "v": "1.23400000", "q": "76300.12", "n": 42, "vwap": "61831.1", "i": 3735683259}

:class:`SecondProducer` never blocks the real-time path: :meth:`SecondProducer.submit` appends to a bounded
buffer (the oldest record is dropped and counted when it is full, as for mini-tickers), and a background
task connects with backoff and sends.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from aggregator.secondstat import SecondStat
from aggregator.store import KafkaSink
from crypto_mesh import jsonutil
from crypto_mesh.kafka import SECOND_TOPIC
from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: Partitions of ``binance.second`` when the aggregator creates it; the records of a symbol share one.
SECOND_PARTITIONS = 3


def second_message_id(symbol: str, second_ms: int) -> str:
    """``uuid5(NAMESPACE_URL, "binance.second/<symbol>/<second_ms>")``: one id per symbol and second."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{SECOND_TOPIC}/{symbol}/{second_ms}"))


def second_record(stat: SecondStat) -> dict[str, Any]:
    """The ``binance.second`` value of ``stat`` (decimals stay ``Decimal``; encode with
    :func:`crypto_mesh.jsonutil.dumps`)."""
    return {"message_id": second_message_id(stat.symbol, stat.second_ms), **stat.to_json()}


class SecondProducer(KafkaSink[SecondStat]):
    """Every SecondStat to ``topic`` (default ``binance.second``; key = symbol; value :func:`second_record`)
    through a bounded buffer of ``maxsize`` stats that drops the oldest when full (see
    :class:`aggregator.store.KafkaSink`)."""

    def __init__(
        self,
        bootstrap_servers: str,
        enable_idempotence: bool,
        maxsize: int = 10_000,
        topic: str = SECOND_TOPIC,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            enable_idempotence,
            topic=topic,
            partitions=SECOND_PARTITIONS,
            encode=lambda stat: (stat.symbol.encode(), jsonutil.dumps(second_record(stat))),
            maxsize=maxsize,
            client_options=client_options,
        )


def fan_out(*emits):
    """One emit callback that calls each of ``emits`` in turn (each must not block), e.g. the Redis
    publisher's and this producer's ``submit`` for :class:`aggregator.intake.TradeIntake`."""

    def emit(stat: SecondStat) -> None:
        for each in emits:
            each(stat)

    return emit
