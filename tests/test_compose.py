"""compose.yaml is a valid Compose file for the production stack, and publishes nothing but the BFF."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from compose_spec import PyCompose

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"auth", "profile_bff", "socket_proxy", "aggregator", "etl"}
BACKING = {"postgres-auth", "postgres-profile", "redis", "kafka", "clickhouse"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_file_validates_against_the_compose_specification_schema(compose):
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.schema.json").read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft201909Validator(schema).iter_errors(compose)]
    assert errors == []


def test_compose_file_parses_with_a_strict_compose_spec_implementation():
    parsed = PyCompose.from_yaml((ROOT / "compose.yaml").read_text())
    assert set(parsed.service_names()) == SERVICES | BACKING


def test_only_the_bff_publishes_a_port(compose):
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"profile_bff"}


def test_every_container_has_a_healthcheck_and_services_wait_for_healthy_dependencies(compose):
    for name, service in compose["services"].items():
        assert "test" in service.get("healthcheck", {}), name
        for dependency in service.get("depends_on", {}).values():
            assert dependency == {"condition": "service_healthy"}, name


def test_each_service_runs_its_own_package(compose):
    for name in SERVICES:
        assert compose["services"][name]["command"] == ["python", "-m", name]


def test_kafka_runs_in_kraft_mode_without_zookeeper(compose):
    kafka = compose["services"]["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert not any("zookeeper" in name for name in compose["services"])


def test_no_secret_is_written_in_the_compose_file(compose):
    text = (ROOT / "compose.yaml").read_text().lower()
    assert "postgres_password:" not in text and "clickhouse_password:" not in text
    for name in ("auth", "profile_bff", "etl"):
        assert compose["services"][name].get("secrets"), name
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
