"""The Kafka clients' authentication settings (crypto_mesh.kafka.KafkaClientSettings) of the aggregator and ETL.

The embedded broker (Tansu 0.6, memory storage) cannot authenticate clients (its users live in its storage and
can only be created by an authenticated client), so the SASL listener itself is compose's Apache Kafka, checked
statically in tests/test_compose_credentials.py; these tests fix what the clients are given.
"""

from __future__ import annotations

import pytest
from support.credentials import service_token_file
from pydantic import ValidationError

from aggregator.settings import AggregatorSettings
from crypto_mesh.secrets import random_token
from etl.settings import EtlSettings

BASE = {
    AggregatorSettings: {
        "api_token_file": service_token_file(), "redis_url": "redis://unused", "kafka_bootstrap_servers": "k:9092"
    },
    EtlSettings: {
        "api_token_file": service_token_file(), "kafka_bootstrap_servers": "k:9092", "clickhouse_url": "chdb:///x"
    },
}


@pytest.mark.parametrize("settings_class", [AggregatorSettings, EtlSettings])
def test_plaintext_is_the_default_and_adds_no_client_option(settings_class):
    assert settings_class(**BASE[settings_class]).kafka_client_options() == {}


@pytest.mark.parametrize("settings_class", [AggregatorSettings, EtlSettings])
@pytest.mark.parametrize("missing", ["kafka_sasl_username", "kafka_sasl_password_file"])
def test_sasl_without_a_user_or_a_password_file_stops_the_service(settings_class, missing, tmp_path):
    values = {
        **BASE[settings_class],
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_username": "etl",
        "kafka_sasl_password_file": service_token_file(),
    }
    del values[missing]
    with pytest.raises(ValidationError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD_FILE"):
        settings_class(**values)


@pytest.mark.parametrize("settings_class", [AggregatorSettings, EtlSettings])
def test_sasl_options_carry_the_password_read_from_its_file_and_the_settings_do_not_show_it(
    settings_class, tmp_path
):
    password = random_token()
    (tmp_path / "password").write_text(password + "\n")
    settings = settings_class(
        **BASE[settings_class],
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="etl",
        kafka_sasl_password_file=tmp_path / "password",
    )
    assert settings.kafka_client_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "etl",
        "sasl_plain_password": password,
    }
    assert password not in repr(settings)


def test_the_redis_urls_are_secrets_that_never_show_in_a_repr():
    password = random_token()
    settings = AggregatorSettings(**{**BASE[AggregatorSettings], "redis_url": f"redis://aggregator:{password}@r:6379/0"})
    assert password not in repr(settings) and password not in str(settings.model_dump())
    assert settings.redis_url.get_secret_value().endswith("@r:6379/0")
