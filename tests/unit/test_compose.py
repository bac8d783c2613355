"""compose.yaml is a valid Compose file for the production stack, and publishes nothing but the BFF."""

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from compose_spec import PyCompose

from launcher.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
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


def test_clickhouse_gets_its_users_from_a_secret_file_and_no_password_from_the_environment(compose):
    clickhouse = compose["services"]["clickhouse"]
    assert "env_file" not in clickhouse
    assert {"source": "clickhouse_users.xml", "target": "/etc/clickhouse-server/users.d/mesh.xml"} in clickhouse[
        "secrets"
    ]
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert "env_file" not in service, name
        assert not any("CLICKHOUSE" in key and ("PASSWORD" in key or "USER" in key) for key in environment), name
    assert "etl_analytics_clickhouse_url" in compose["services"]["etl"]["secrets"]


def test_the_analytics_user_may_only_select_on_crypto_within_the_profile_limits(tmp_path):
    import xml.etree.ElementTree as ET

    from click.testing import CliRunner

    from launcher.cli import main
    from etl.sql import SqlLimits

    result = CliRunner().invoke(main, ["secrets", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "clickhouse.env").exists()
    users = ET.fromstring((tmp_path / "clickhouse_users.xml").read_text())
    analytics = users.find("users/analytics")
    assert [q.text for q in analytics.findall("grants/query")] == ["GRANT SELECT ON crypto.*"]
    assert analytics.findtext("profile") == "analytics"
    password = (tmp_path / "etl_analytics_clickhouse_url").read_text().split(":")[2].split("@")[0]
    assert analytics.findtext("password_sha256_hex") == hashlib.sha256(password.encode()).hexdigest()
    assert password not in (tmp_path / "clickhouse_users.xml").read_text()
    assert [q.text for q in users.findall("users/etl/grants/query")] == ["GRANT ALL ON crypto.*"]
    assert users.find("users/default/networks").findall("ip")[0].text == "127.0.0.1"
    profile = users.find("profiles/analytics")
    limits = SqlLimits()
    expected = {
        "readonly": "2",
        "max_execution_time": str(limits.max_execution_s),
        "max_memory_usage": str(limits.max_memory_bytes),
        "max_result_rows": str(limits.max_result_rows),
        "max_result_bytes": str(limits.max_result_bytes),
        "max_rows_to_read": str(limits.max_rows_to_read),
        "max_threads": str(limits.max_threads),
        "result_overflow_mode": "throw",
    }
    for name, value in expected.items():
        assert profile.findtext(name) == value, name
        constraint = profile.find(f"constraints/{name}")
        assert constraint is not None and (
            constraint.findtext("max") == value if name.startswith("max_") else constraint.find("const") is not None
        ), name


#: The services that speak gRPC: their mesh identity and environment prefix.
GRPC_PARTIES = {
    "auth": ("auth", "AUTH_"),
    "socket_proxy": ("socket_proxy", "PROXY_"),
    "profile_bff": ("profile_bff", "BFF_"),
    "aggregator": ("aggregator", "AGGREGATOR_"),
}


def test_each_grpc_party_mounts_the_mesh_ca_and_its_own_certificate_and_key_only(compose):
    for name, (identity, prefix) in GRPC_PARTIES.items():
        service = compose["services"][name]
        mounted = set(service["secrets"])
        assert {"mesh_ca.crt", f"{identity}_tls.crt", f"{identity}_tls.key"} <= mounted, name
        assert {secret for secret in mounted if secret.endswith("_tls.key")} == {f"{identity}_tls.key"}, name
        environment = service["environment"]
        assert environment[f"{prefix}TLS_CA_FILE"] == "/run/secrets/mesh_ca.crt", name
        assert environment[f"{prefix}TLS_CERT_FILE"] == f"/run/secrets/{identity}_tls.crt", name
        assert environment[f"{prefix}TLS_KEY_FILE"] == f"/run/secrets/{identity}_tls.key", name


def test_the_mesh_ca_key_is_never_mounted(compose):
    assert "mesh_ca.key" not in compose["secrets"]
    assert all(s["file"] != "./secrets/mesh_ca.key" for s in compose["secrets"].values())
    assert all("mesh_ca.key" not in service.get("secrets", []) for service in compose["services"].values())


def test_grpc_servers_are_health_checked_over_mutual_tls_with_their_own_certificate(compose):
    for name, port in (("auth", 50051), ("socket_proxy", 50052)):
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[:5] == ["CMD", "python", "-m", "crypto_mesh.grpc_tls", f"127.0.0.1:{port}"], name
        options = dict(zip(test[5::2], test[6::2], strict=True))
        assert options == {
            "--server-identity": name,
            "--ca-file": "/run/secrets/mesh_ca.crt",
            "--cert-file": f"/run/secrets/{name}_tls.crt",
            "--key-file": f"/run/secrets/{name}_tls.key",
        }, name


def test_every_secret_compose_mounts_is_made_by_crypto_mesh_secrets(compose, tmp_path):
    result = CliRunner().invoke(cli, ["secrets", str(tmp_path / "secrets")])
    assert result.exit_code == 0, result.output
    made = {path.name for path in (tmp_path / "secrets").iterdir()}
    wanted = {Path(secret["file"]).name for secret in compose["secrets"].values()}
    assert wanted - made == set()
