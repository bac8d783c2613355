"""compose.yaml hands every credential over as a file secret, and Redis and Kafka require one.

Static checks of the file (no Docker engine runs here), against the secret files `crypto-mesh secrets` writes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crypto_mesh.kafka import KAFKA_USERS
from crypto_mesh.redisacl import USER_RULES

ROOT = Path(__file__).resolve().parents[2]
CRYPTO_MESH = str(Path(sys.executable).parent / "crypto-mesh")
SERVICES = ("auth", "profile_bff", "socket_proxy", "aggregator", "etl")
#: Environment variables whose value is a secret unless it names a file.
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|JAAS")
#: A URL carrying credentials: scheme://user:password@host.
URL_WITH_CREDENTIALS = re.compile(r"://[^/@\s]+:[^/@\s]+@")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    """The files of `crypto-mesh secrets DIR`, as an operator makes them before `docker compose up`."""
    directory = tmp_path_factory.mktemp("compose") / "secrets"
    subprocess.run([CRYPTO_MESH, "secrets", str(directory)], check=True, capture_output=True, timeout=60)
    return directory


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def test_no_environment_value_is_a_secret(compose):
    for name, service in compose["services"].items():
        for variable, value in environment(service).items():
            assert not URL_WITH_CREDENTIALS.search(value), (name, variable)
            if SECRET_NAME.search(variable) and not variable.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), (name, variable)


def test_no_generated_secret_appears_anywhere_in_the_compose_file(secrets_dir):
    text = (ROOT / "compose.yaml").read_text()
    for secret in secrets_dir.iterdir():
        for line in secret.read_text().splitlines():
            for value in re.findall(r"[A-Za-z0-9_-]{40,}", line):
                assert value not in text, secret.name


def test_the_services_take_no_env_file(compose):
    # compose's clickhouse service belongs to the analytics configuration and is checked with it.
    for name in (*SERVICES, "redis", "kafka"):
        assert "env_file" not in compose["services"][name], name


def test_every_secret_a_service_names_is_one_of_its_file_secrets_made_by_crypto_mesh_secrets(compose, secrets_dir):
    declared = compose["secrets"]
    for secret in declared.values():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/")
    made = {path.name for path in secrets_dir.iterdir()}
    for name, service in compose["services"].items():
        # Short syntax names the secret; long syntax ({"source", "target"}) mounts it at another path.
        mounted = {entry["source"] if isinstance(entry, dict) else entry for entry in service.get("secrets", [])}
        assert mounted <= set(declared), name
        for value in environment(service).values():
            for referenced in re.findall(r"/run/secrets/([\w.-]+)", value):
                assert referenced in mounted, (name, referenced)
        for secret in mounted:
            assert Path(declared[secret]["file"]).name in made, (name, secret)


def test_the_internal_http_apis_and_their_callers_share_a_token_file(compose):
    services = compose["services"]
    assert environment(services["aggregator"])["AGGREGATOR_API_TOKEN_FILE"] == "/run/secrets/aggregator_api_token"
    assert environment(services["profile_bff"])["BFF_AGGREGATOR_TOKEN_FILE"] == "/run/secrets/aggregator_api_token"
    assert environment(services["etl"])["ETL_API_TOKEN_FILE"] == "/run/secrets/etl_api_token"
    assert environment(services["profile_bff"])["BFF_ETL_TOKEN_FILE"] == "/run/secrets/etl_api_token"
    assert {"aggregator_api_token", "etl_api_token"} <= set(services["profile_bff"]["secrets"])


def test_redis_starts_with_the_acl_file_and_each_service_gets_its_own_url_from_a_secret(compose, secrets_dir):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--aclfile") + 1] == "/run/secrets/redis_users.acl"
    assert "redis_users.acl" in redis["secrets"]
    acl = (secrets_dir / "redis_users.acl").read_text()
    assert "user default off" in acl
    for service, prefix, user in (("profile_bff", "BFF_", "bff"), ("aggregator", "AGGREGATOR_", "aggregator")):
        assert f"{prefix}REDIS_URL" not in environment(compose["services"][service])
        assert f"{user}_redis_url" in compose["services"][service]["secrets"]
        assert (secrets_dir / f"{user}_redis_url").read_text().startswith(f"redis://{user}:")
        password = (secrets_dir / f"redis_{user}_password").read_text()
        assert password not in acl  # the ACL file holds its hash
    assert set(USER_RULES) == {"bff", "aggregator"}


def test_kafka_requires_sasl_on_the_listener_the_services_use(compose, secrets_dir):
    kafka = environment(compose["services"]["kafka"])
    listeners = dict(item.split("://", 1) for item in kafka["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":", 1) for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    reachable = {name for name, address in listeners.items() if not address.startswith(("localhost:", "127."))}
    assert reachable and all(protocols[name].startswith("SASL_") for name in reachable)
    assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert kafka["KAFKA_OPTS"] == "-Djava.security.auth.login.config=/run/secrets/kafka_server_jaas.conf"
    jaas = (secrets_dir / "kafka_server_jaas.conf").read_text()
    for service, prefix, user in (
        ("aggregator", "AGGREGATOR_", "aggregator"),
        ("etl", "ETL_", "etl"),
        ("profile_bff", "BFF_", "bff"),
    ):
        env = environment(compose["services"][service])
        port = env[f"{prefix}KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1]
        assert any(address.endswith(f":{port}") for name, address in listeners.items() if name in reachable)
        assert env[f"{prefix}KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
        assert env[f"{prefix}KAFKA_SASL_MECHANISM"] == "PLAIN"
        assert env[f"{prefix}KAFKA_SASL_USERNAME"] == user
        assert env[f"{prefix}KAFKA_SASL_PASSWORD_FILE"] == f"/run/secrets/kafka_{user}_password"
        password = (secrets_dir / f"kafka_{user}_password").read_text()
        assert f'user_{user}="{password}"' in jaas
    assert set(KAFKA_USERS) == {"aggregator", "etl", "bff"}
    assert "--command-config /run/secrets/kafka_admin.properties" in compose["services"]["kafka"]["healthcheck"]["test"][1]


def test_running_crypto_mesh_secrets_again_keeps_every_secret_and_a_deleted_password_is_rotated(tmp_path):
    directory = tmp_path / "secrets"
    run = [CRYPTO_MESH, "secrets", str(directory)]
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    before = {path.name: path.read_text() for path in directory.iterdir()}
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    assert {path.name: path.read_text() for path in directory.iterdir()} == before

    (directory / "redis_bff_password").unlink()
    (directory / "kafka_etl_password").unlink()
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    redis_password = (directory / "redis_bff_password").read_text()
    kafka_password = (directory / "kafka_etl_password").read_text()
    assert redis_password != before["redis_bff_password"] and kafka_password != before["kafka_etl_password"]
    assert (directory / "bff_redis_url").read_text().startswith(f"redis://bff:{redis_password}@")
    assert (directory / "redis_users.acl").read_text() != before["redis_users.acl"]
    assert f'user_etl="{kafka_password}"' in (directory / "kafka_server_jaas.conf").read_text()
    assert (directory / "aggregator_redis_url").read_text() == before["aggregator_redis_url"]
    assert (directory / "etl_api_token").read_text() == before["etl_api_token"]
