"""Kafka helpers shared by the aggregator, the ETL and the BFF's alert evaluator (aiokafka): topic names, topic creation, and how a client
authenticates to the brokers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, Field, FilePath, ValidationInfo, field_validator

from crypto_mesh.secrets import read_secret

#: Topic of mini-ticker records (key = symbol, value = KafkaMsg JSON).
MINI_TICKER_TOPIC = "binance.miniticker"
#: Topic of every SecondStat the aggregator publishes (key = symbol, value = SecondStat JSON with message_id).
SECOND_TOPIC = "binance.second"
#: Topic of the aggregators' follow notices (key = symbol, value = follower count; compacted), over which the
#: aggregator replicas' consumer group shares the symbols.
FOLLOW_TOPIC = "aggregator.follows"
#: Topic of records the ETL could not decode, each wrapped with its origin and the reason.
DEADLETTER_TOPIC = "binance.deadletter"


#: The SASL users of compose's Kafka broker besides its own (``admin``, inter-broker and health checks).
KAFKA_USERS = ("aggregator", "etl", "bff")


def _jaas_quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def broker_jaas_config(admin_password: str, passwords: Mapping[str, str]) -> str:
    """The broker's JAAS file for SASL/PLAIN (Kafka's ``PlainLoginModule``, KIP-43): the ``KafkaServer``
    section, in which ``username``/``password`` is the broker's own credential (inter-broker, ``admin``) and
    each ``user_<name>="<password>"`` a client it accepts (``admin`` and every user of ``passwords``)."""
    users = {"admin": admin_password, **passwords}
    lines = [
        "KafkaServer {",
        "  org.apache.kafka.common.security.plain.PlainLoginModule required",
        f"  username={_jaas_quoted('admin')}",
        f"  password={_jaas_quoted(admin_password)}",
    ]
    lines += [f"  user_{user}={_jaas_quoted(password)}" for user, password in users.items()]
    lines[-1] += ";"
    lines.append("};")
    return "\n".join(lines) + "\n"


def client_properties(user: str, password: str) -> str:
    """A Kafka command-line tool's ``--command-config`` file that authenticates as ``user`` with SASL/PLAIN
    over ``SASL_PLAINTEXT`` (compose's Kafka health check)."""
    return (
        "security.protocol=SASL_PLAINTEXT\n"
        "sasl.mechanism=PLAIN\n"
        "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
        f"username={_jaas_quoted(user)} password={_jaas_quoted(password)};\n"
    )


class KafkaClientSettings(BaseModel):
    """How a service's Kafka clients authenticate: the ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*`` settings a
    service's settings class takes from this mixin (with its own prefix: ``AGGREGATOR_``, ``ETL_``).

    - ``KAFKA_SECURITY_PROTOCOL`` (``PLAINTEXT``): ``PLAINTEXT`` (no authentication: the embedded broker,
      bound to 127.0.0.1), ``SASL_PLAINTEXT`` (compose's broker) or ``SASL_SSL`` (SASL over TLS, verified
      against the system's CAs).
    - ``KAFKA_SASL_MECHANISM`` (``PLAIN``): ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512`` (RFC 4616, RFC 5802).
    - ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD_FILE``: the client's user and the file holding its password
      (read with :func:`crypto_mesh.secrets.read_secret`); both required with a ``SASL_*`` protocol.
    """

    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    # Validated even when unset, so that a SASL protocol without credentials is refused naming this setting.
    kafka_sasl_password_file: FilePath | None = Field(default=None, validate_default=True)

    @field_validator("kafka_sasl_password_file")
    @classmethod
    def _sasl_needs_credentials(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        protocol = info.data.get("kafka_security_protocol", "PLAINTEXT")
        if protocol != "PLAINTEXT" and not (value and info.data.get("kafka_sasl_username")):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE"
            )
        return value

    def kafka_client_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client (producer, consumer, admin): empty for ``PLAINTEXT``,
        else ``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password`` (read
        from the password file now; ``OSError``/``ValueError`` if it cannot be) and, for ``SASL_SSL``, an
        ``ssl_context``."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {
            "security_protocol": self.kafka_security_protocol,
            "sasl_mechanism": self.kafka_sasl_mechanism,
            "sasl_plain_username": self.kafka_sasl_username,
            "sasl_plain_password": read_secret(self.kafka_sasl_password_file),
        }
        if self.kafka_security_protocol == "SASL_SSL":
            options["ssl_context"] = create_ssl_context()
        return options


def group_consumer(
    bootstrap_servers: str,
    group_id: str,
    session_timeout_ms: int,
    client_options: Mapping[str, Any] | None = None,
    *topics: str,
    **options: Any,
) -> AIOKafkaConsumer:
    """A consumer (not started) of ``topics`` in group ``group_id`` as every consumer of the mesh reads: offsets
    committed by the caller only (after what it made of the records is stored), a new group from the earliest
    record, heartbeats every third of ``session_timeout_ms``; ``client_options`` authenticate it
    (:meth:`KafkaClientSettings.kafka_client_options`), ``options`` are further aiokafka arguments."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        **(client_options or {}),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=session_timeout_ms // 3,
        **options,
    )


async def ensure_topics(
    bootstrap_servers: str,
    topics: dict[str, int],
    replication_factor: int = 1,
    client_options: Mapping[str, Any] | None = None,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create each topic of ``topics`` (name → partition count) that does not exist yet, connecting with
    ``client_options`` (:meth:`KafkaClientSettings.kafka_client_options`); ``configs`` gives topics their
    configuration at creation (name → ``{"cleanup.policy": "compact"}``, Kafka's topic configs).

    Raises ``aiokafka.errors.KafkaError`` if the broker cannot be reached or refuses.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(client_options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                topic_configs=dict((configs or {}).get(name, {})),
            )
            for name, partitions in topics.items()
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created by a concurrent caller
    finally:
        await admin.close()
