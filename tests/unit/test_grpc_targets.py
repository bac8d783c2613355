"""The gRPC targets a mesh client accepts (:func:`crypto_mesh.grpc_tls.check_target`, gRPC's name syntax) and
the aggregator's ``SOCKET_PROXY_TARGET`` validation."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from aggregator.settings import AggregatorSettings
from crypto_mesh.grpc_tls import ROUND_ROBIN, check_target


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:50052",
        "socket_proxy:50052",
        "[::1]:50052",
        "dns:///socket_proxy:50052",
        "dns://10.0.0.2:53/socket-proxy.mesh:50052",
        "dns:socket_proxy:50052",
        "ipv4:127.0.0.1:50052",
        "ipv4:127.0.0.1:50052,127.0.0.1:50053",
        "ipv4:10.0.0.5:50052, 10.0.0.6:50052",
        "ipv6:[::1]:50052,[fe80::1]:50053",
    ],
)
def test_a_target_of_one_or_several_replicas_is_accepted_unchanged(target):
    assert check_target(target) == target


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("socket_proxy", "is not host:port"),
        ("socket_proxy:0", "is not host:port"),
        ("socket_proxy:http", "is not host:port"),
        ("127.0.0.1:50052,127.0.0.1:50053", "is not host:port"),
        ("dns:///socket_proxy", "is not host:port"),
        ("ipv4:socket_proxy:50052", "is not an ipv4 address:port"),
        ("ipv4:127.0.0.1:50052,", "is not an ipv4 address:port"),
        ("ipv4:127.0.0.1", "is not an ipv4 address:port"),
        ("ipv4:127.0.0.1:70000", "has no port 1-65535"),
        ("ipv6:127.0.0.1:50052", "is not an ipv6 address:port"),
        ("unix:/run/socket_proxy.sock", "not a Unix socket"),
        ("socket proxy:50052", "is not host:port"),
    ],
)
def test_a_target_grpc_could_not_resolve_is_refused_naming_why(target, why):
    with pytest.raises(ValueError, match=why):
        check_target(target)


def test_the_aggregator_refuses_a_bad_socket_proxy_target_at_start(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("t" * 40 + "\n")
    base = {"api_token_file": tokens, "redis_url": "redis://r:6379/0", "kafka_bootstrap_servers": "k:9092"}
    settings = AggregatorSettings(**base, socket_proxy_target="ipv4:127.0.0.1:50052,127.0.0.1:50053")
    assert settings.socket_proxy_target == "ipv4:127.0.0.1:50052,127.0.0.1:50053"
    with pytest.raises(ValidationError, match="socket_proxy_target"):
        AggregatorSettings(**base, socket_proxy_target="127.0.0.1:50052,127.0.0.1:50053")


def test_round_robin_is_grpcs_service_config_naming_the_round_robin_policy():
    name, value = ROUND_ROBIN
    assert name == "grpc.service_config"
    assert json.loads(value) == {"loadBalancingConfig": [{"round_robin": {}}]}
