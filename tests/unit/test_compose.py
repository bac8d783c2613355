"""compose.yaml is a valid Compose file for the production stack: Caddy, terminating TLS in front of the BFF, is
the only container with a published port or a way in; everything else is on internal networks; images are
pinned; logs are capped; the five services share one image and one anchor of common keys."""

import base64
import hashlib
import ipaddress
import json
import re
import shutil
import subprocess
import tomllib
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
EDGE = {"caddy"}
#: The ``monitoring`` profile's containers.
MONITORING = {"prometheus", "grafana"}
#: The ``cluster`` profile's containers.
CLUSTER = {"clickhouse-keeper", "clickhouse-1", "clickhouse-2"}
#: An image with a version tag (numbers, ``v`` first for some projects, then a variant such as ``-alpine``),
#: optionally with its digest.
PINNED_IMAGE = re.compile(
    r"^(?P<repository>[a-z0-9./-]+):v?(?P<version>\d+(\.\d+)+)(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?$"
)
#: Projects whose full versions have two numbers (PostgreSQL 18.6); every other needs at least three.
TWO_PART_VERSIONS = {"postgres"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_file_validates_against_the_compose_specification_schema(compose):
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.schema.json").read_text())
    errors = [
        f"{list(e.path)}: {e.message}" for e in jsonschema.Draft201909Validator(schema).iter_errors(compose)
    ]
    assert errors == []


def test_compose_file_parses_with_a_strict_compose_spec_implementation(compose):
    # YAML merge keys (`<<: *service`), which Docker Compose resolves, are resolved by the YAML loader first:
    # this implementation's own parser lacks them.
    parsed = PyCompose.from_yaml(yaml.safe_dump(compose, sort_keys=False))
    assert set(parsed.service_names()) == SERVICES | BACKING | EDGE | MONITORING | CLUSTER


def compose_cli() -> list[str] | None:
    """A Docker Compose v2 command line (``docker compose``, or a ``docker-compose`` of v2 on the PATH), or None.
    ``config`` needs no container engine."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    candidates += [["docker-compose"]] if shutil.which("docker-compose") else []
    for command in candidates:
        result = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode == 0 and result.stdout.strip().lstrip("v").startswith("2."):
            return command
    return None


def test_docker_compose_reads_the_file_and_resolves_the_anchors_as_the_loader_does(compose):
    command = compose_cli()
    if command is None:
        pytest.skip("no Docker Compose v2 (`docker compose` or `docker-compose`) on the PATH")
    result = subprocess.run(
        [*command, "-f", str(ROOT / "compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    for name, service in compose["services"].items():
        assert resolved[name]["image"] == service["image"], name
        assert set(resolved[name]["networks"]) == networks_of(service), name
        assert resolved[name]["logging"] == service["logging"], name


def test_only_the_proxy_publishes_ports_and_the_bff_none(compose):
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == EDGE | {"grafana"}
    assert sorted(compose["services"]["caddy"]["ports"]) == ["443:443", "443:443/udp", "80:80"]
    # Grafana (the monitoring profile) on the host's loopback only.
    assert compose["services"]["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def networks_of(service: dict) -> set[str]:
    networks = service.get("networks", ["default"])
    return set(networks)


def test_everything_but_the_edge_is_on_internal_networks(compose):
    declared = compose["networks"]
    internal = {name for name, network in declared.items() if (network or {}).get("internal") is True}
    assert {"mesh", "proxy", "monitoring"} <= internal
    outside = {name: networks_of(service) - internal for name, service in compose["services"].items()}
    # Caddy's way in; the BFF's and socket_proxy's way out to the exchange; every other container has no route
    # out of its host and is reachable from no port.
    assert outside == {name: set() for name in compose["services"]} | {
        "caddy": {"edge"},
        "grafana": {"edge"},
        "profile_bff": {"egress"},
        "socket_proxy": {"egress"},
    }
    assert "default" not in declared
    members = {
        network: {name for name, service in compose["services"].items() if network in networks_of(service)}
        for network in declared
    }
    assert members["proxy"] == {"caddy", "profile_bff"}
    assert members["edge"] == {"caddy", "grafana"}
    assert members["egress"] == {"profile_bff", "socket_proxy"}
    assert members["mesh"] == SERVICES | BACKING | CLUSTER | {"prometheus"}
    assert members["monitoring"] == MONITORING


def test_every_image_is_pinned_to_a_full_version(compose):
    for name, service in compose["services"].items():
        match = PINNED_IMAGE.match(service["image"])
        assert match, (name, service["image"])
        parts = 2 if match["repository"] in TWO_PART_VERSIONS else 3
        assert len(match["version"].split(".")) >= parts, (name, service["image"])


def test_the_services_share_one_image_built_once_and_tagged_with_the_project_version(compose):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {compose["services"][name]["image"] for name in SERVICES} == {f"crypto-mesh:{version}"}
    built = {name: service["build"] for name, service in compose["services"].items() if "build" in service}
    assert built == {"auth": "."}
    for name in SERVICES - {"auth"}:
        assert compose["services"][name]["pull_policy"] == "never", name
    assert len(re.findall(r"^\s+build:", (ROOT / "compose.yaml").read_text(), re.MULTILINE)) == 1


def test_the_five_services_merge_one_anchor_of_common_keys(compose):
    text = (ROOT / "compose.yaml").read_text()
    assert re.search(r"^x-service: &service$", text, re.MULTILINE)
    assert len(re.findall(r"^    <<: \*service$", text, re.MULTILINE)) == len(SERVICES)
    common = compose["x-service"]
    assert {"image", "restart", "logging", "networks", "stop_grace_period"} <= set(common)
    for name in SERVICES:
        service = compose["services"][name]
        for key in (
            "image",
            "restart",
            "logging",
            "stop_grace_period",
            "read_only",
            "cap_drop",
            "security_opt",
        ):
            assert service[key] == common[key], (name, key)


def test_every_container_caps_its_logs(compose):
    for name, service in compose["services"].items():
        logging = service.get("logging")
        assert logging and logging["driver"] == "json-file", name
        assert re.fullmatch(r"\d+[km]", logging["options"]["max-size"]), name
        assert int(logging["options"]["max-file"]) >= 1, name


def test_every_container_restarts_unless_stopped(compose):
    for name, service in compose["services"].items():
        assert service["restart"] == "unless-stopped", name


def test_kafka_has_a_fixed_kraft_cluster_id(compose):
    cluster_id = compose["services"]["kafka"]["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def caddy_site_address() -> str:
    """The Caddyfile's one site address, ``{$CRYPTO_MESH_DOMAIN:<default>}`` expanded with its default."""
    text = (ROOT / "Caddyfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]
    sites = [line.split()[0] for line in lines if not line[0].isspace() and line.rstrip().endswith("{")]
    sites = [site for site in sites if site != "{"]
    assert len(sites) == 1, sites
    match = re.fullmatch(r"\{\$CRYPTO_MESH_DOMAIN:([\w.-]+)\}", sites[0])
    assert match, sites[0]
    return match.group(1)


def test_the_bff_trusts_exactly_the_proxy_and_allows_its_public_origin(compose):
    services = compose["services"]
    bff = services["profile_bff"]["environment"]
    caddy = services["caddy"]
    address = caddy["networks"]["proxy"]["ipv4_address"]
    assert bff["BFF_TRUSTED_PROXIES"] == address
    subnet = ipaddress.ip_network(compose["networks"]["proxy"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(address) in subnet and subnet.is_private
    default_domain = caddy_site_address()
    assert caddy["environment"]["CRYPTO_MESH_DOMAIN"] == f"${{CRYPTO_MESH_DOMAIN:-{default_domain}}}"
    # Port 443 is published as itself, so the public origin carries no port.
    assert bff["BFF_ALLOWED_ORIGINS"] == f"https://${{CRYPTO_MESH_DOMAIN:-{default_domain}}}"
    assert bff["BFF_COOKIE_SECURE"] == "true"


def test_caddy_forwards_to_the_bff_port_and_trusts_no_forwarded_header(compose):
    text = (ROOT / "Caddyfile").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    port = compose["services"]["profile_bff"]["environment"]["BFF_PORT"]
    assert re.search(rf"reverse_proxy profile_bff:{port}\b", code)
    assert "trusted_proxies" not in code
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in compose["services"]["caddy"]["volumes"]
    assert re.search(r"admin 127\.0\.0\.1:2019", code)


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
    assert {
        "source": "clickhouse_users.xml",
        "target": "/etc/clickhouse-server/users.d/mesh.xml",
    } in clickhouse["secrets"]
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert "env_file" not in service, name
        assert not any("CLICKHOUSE" in key and ("PASSWORD" in key or "USER" in key) for key in environment), (
            name
        )
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
            constraint.findtext("max") == value
            if name.startswith("max_")
            else constraint.find("const") is not None
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


def test_the_monitoring_and_cluster_profiles_hold_their_containers_only(compose):
    profiled = {name: service["profiles"] for name, service in compose["services"].items() if "profiles" in service}
    assert profiled == {name: ["monitoring"] for name in MONITORING} | {name: ["cluster"] for name in CLUSTER}
    for name in MONITORING | CLUSTER:
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            assert not source.startswith("./") or (ROOT / source).exists(), (name, source)


def service_environment(compose: dict, name: str) -> dict[str, str]:
    return compose["services"][name]["environment"]


def test_prometheus_scrapes_every_service_with_the_credential_that_service_accepts(compose):
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    prometheus_secrets = set(compose["services"]["prometheus"]["secrets"])
    prefixes = {"auth": "AUTH_", "socket_proxy": "PROXY_", "profile_bff": "BFF_", "aggregator": "AGGREGATOR_", "etl": "ETL_"}
    scraped = {}
    for job in config["scrape_configs"]:
        # A fixed target, or every address of a service's name (the replicas of socket_proxy); the BFF's
        # workers one port each.
        target, *workers = [t for group in job.get("static_configs", []) for t in group["targets"]] + [
            f"{name}:{lookup['port']}" for lookup in job.get("dns_sd_configs", []) for name in lookup["names"]
        ]
        host, port = target.split(":")
        if host == "profile_bff":
            worker_count = int(service_environment(compose, host)["BFF_WORKERS"])
            assert [target, *workers] == [f"{host}:{int(port) + i}" for i in range(worker_count)]
        else:
            assert workers == [], host
        scraped[host] = job
        environment = service_environment(compose, host)
        prefix = prefixes[host]
        # A metrics port of its own (its METRICS_TOKEN_FILE), or the HTTP API's /metrics (its API_TOKEN_FILE).
        if f"{prefix}METRICS_PORT" in environment:
            assert port == environment[f"{prefix}METRICS_PORT"], host
            token = environment[f"{prefix}METRICS_TOKEN_FILE"]
        else:
            assert port == environment[f"{prefix}PORT"], host
            token = environment[f"{prefix}API_TOKEN_FILE"]
        assert job["authorization"] == {"type": "Bearer", "credentials_file": token}, host
        assert Path(token).name in prometheus_secrets, host
        assert Path(token).name in compose["services"][host]["secrets"], host
    assert set(scraped) == SERVICES
    # The BFF's metrics are never served on its public port.
    assert service_environment(compose, "profile_bff")["BFF_METRICS_PORT"] != service_environment(compose, "profile_bff")["BFF_PORT"]


def test_grafana_has_the_prometheus_datasource_and_the_mesh_dashboard(compose):
    grafana = ROOT / "monitoring" / "grafana"
    (datasource,) = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((grafana / "provisioning" / "dashboards" / "mesh.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert "./monitoring/grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose["services"]["grafana"]["volumes"]
    dashboard = json.loads((grafana / "dashboards" / "mesh.json").read_text())
    assert dashboard["panels"]
    documented = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            series = series_read(target["expr"])
            assert series, (panel["title"], target["expr"])
            # Every series a panel reads is one docs/OPERATIONS.md lists.
            for name in series:
                assert f"`{name}`" in documented, (panel["title"], name)
    # Every service has a panel.
    text = json.dumps(dashboard)
    for prefix in ("bff_", "auth_", "socket_proxy", "aggregator_", "etl_"):
        assert prefix in text, prefix


def series_read(expr: str) -> set[str]:
    """The series a PromQL expression reads: names before a selector or range (``name{...}``, ``name[5m]``), alone
    in parentheses (``sum(name)``), or alternatives of a ``__name__=~"(a|b)_rest"`` matcher; histograms by their
    family name (without ``_bucket``)."""
    names = set(re.findall(r"\b([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?=[{\[])", expr))
    names |= set(re.findall(r"(?<=\()([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?=\))", expr))
    for alternatives, rest in re.findall(r'__name__=~"\(([a-z_|]+)\)(_[a-z0-9_]+)"', expr):
        names |= {alternative + rest for alternative in alternatives.split("|")}
    return {name.removesuffix("_bucket") for name in names}


def test_grafana_has_no_anonymous_access_and_its_admin_password_is_a_secret(compose):
    environment = service_environment(compose, "grafana")
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in environment


def test_the_cluster_profile_has_two_replicas_of_one_shard_coordinated_by_keeper(compose):
    import xml.etree.ElementTree as ET

    from etl.migrate import REPLICA_PATH

    services = compose["services"]
    replicas = sorted(CLUSTER - {"clickhouse-keeper"})
    config = ET.parse(ROOT / "clickhouse" / "cluster.xml").getroot()
    [cluster] = list(config.find("remote_servers"))
    [shard] = cluster.findall("shard")
    assert shard.findtext("internal_replication") == "true"
    assert [(r.findtext("host"), r.findtext("port")) for r in shard.findall("replica")] == [
        (name, "9000") for name in replicas
    ]
    # The ETL's setting names this cluster; the compose comment tells the operator which name.
    assert f"ETL_CLICKHOUSE_CLUSTER={cluster.tag}" in (ROOT / "compose.yaml").read_text()
    # The replicas authenticate each other with the secret fragment `crypto-mesh secrets` writes, never as
    # `default` (no <secret> at all) nor with one from compose's environment (empty when unset).
    assert cluster.find("secret") is None
    assert "CLUSTER_SECRET" not in (ROOT / "compose.yaml").read_text()
    # Every macro of the replica path is defined: {database} and {table} by ClickHouse, the others here.
    macros = config.find("macros")
    for macro in re.findall(r"\{(\w+)\}", REPLICA_PATH):
        assert macro in {"database", "table"} or macros.find(macro) is not None, macro
    assert macros.find("replica").get("from_env") == "CLICKHOUSE_REPLICA"

    keeper = ET.parse(ROOT / "clickhouse" / "keeper.xml").getroot().find("keeper_server")
    [node] = config.find("zookeeper").findall("node")
    assert (node.findtext("host"), node.findtext("port")) == ("clickhouse-keeper", keeper.findtext("tcp_port"))
    [raft] = keeper.find("raft_configuration").findall("server")
    assert (raft.findtext("id"), raft.findtext("hostname")) == (keeper.findtext("server_id"), "clickhouse-keeper")
    assert "./clickhouse/keeper.xml:/etc/clickhouse-keeper/keeper_config.xml:ro" in services["clickhouse-keeper"]["volumes"]

    single = services["clickhouse"]
    data_volumes = set()
    for name in replicas:
        replica = services[name]
        assert replica["image"] == single["image"], name
        assert replica["secrets"] == [
            *single["secrets"],
            {"source": "clickhouse_cluster_secret.xml", "target": "/etc/clickhouse-server/config.d/cluster_secret.xml"},
        ], name
        assert replica["environment"]["CLICKHOUSE_REPLICA"] == name
        assert replica["depends_on"] == {"clickhouse-keeper": {"condition": "service_healthy"}}
        assert "./clickhouse/cluster.xml:/etc/clickhouse-server/config.d/cluster.xml:ro" in replica["volumes"]
        data_volumes |= {v.split(":")[0] for v in replica["volumes"] if v.endswith(":/var/lib/clickhouse")}
    # Each replica its own data.
    assert data_volumes == set(replicas) and data_volumes <= set(compose["volumes"])
    assert services["clickhouse-keeper"]["image"].split(":")[1] == single["image"].split(":")[1]


def test_the_cluster_secret_is_made_once_and_names_the_cluster_of_the_profile(tmp_path):
    import xml.etree.ElementTree as ET

    from click.testing import CliRunner

    from launcher.cli import main

    result = CliRunner().invoke(main, ["secrets", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "clickhouse_cluster_secret.xml"
    fragment = ET.fromstring(path.read_text())
    [cluster] = list(fragment.find("remote_servers"))
    profile = ET.parse(ROOT / "clickhouse" / "cluster.xml").getroot()
    assert cluster.tag == list(profile.find("remote_servers"))[0].tag
    secret = cluster.findtext("secret")
    assert len(secret) >= 32
    assert path.stat().st_mode & 0o077 == 0o044  # readable by the container's clickhouse user, as the others
    # Kept on a second run, as every secret: rotating it is deleting the file.
    assert CliRunner().invoke(main, ["secrets", str(tmp_path)]).exit_code == 0
    assert ET.fromstring(path.read_text()).find(f"remote_servers/{cluster.tag}").findtext("secret") == secret
