"""Every Lua script of the services gets all its keys as ``KEYS``, and they hash to one Redis Cluster slot
(the Redis Cluster specification: CRC16 of the key, or of its first ``{…}`` hash tag, modulo 16384). The keys
are made by the same functions the scripts' callers use; test_redis_cluster.py runs the scripts on a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aggregator import store as aggregator_store
from aggregator.store import SYMBOLS_KEY, TICKER_KEY, TICKER_TIME_KEY, followers_key, stat_keys
from crypto_mesh.redisclient import (
    connect,
    is_cluster_url,
    same_slot,
    seconds_key,
)
from profile_bff import ceilings, ratelimit, store
from profile_bff.ratelimit import Rate, RoutePolicy, client_charges, route_key

SYMBOLS = ["btcusdt", "ethusdt", "dogeusdt", "1000satsusdt", "a", "symbols"]
LOGIN = RoutePolicy("login", Rate(30, 60), Rate(100, 3600), False, Rate(10, 900), Rate(10, 900))
REGISTER = RoutePolicy("register", Rate(60, 3600), Rate(5, 60), True)


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_the_publish_script_keys_of_a_symbol_share_the_price_keys_slot(symbol):
    keys = stat_keys(symbol)
    assert keys[0] == f"price:{symbol}"  # the original service's name, kept
    assert same_slot(keys)
    assert keys[1] == seconds_key(symbol)


def test_the_follower_scripts_keys_share_one_slot():
    assert same_slot([SYMBOLS_KEY, *map(followers_key, SYMBOLS)])
    assert len(set(map(followers_key, SYMBOLS))) == len(SYMBOLS)


def test_the_ticker_script_keys_share_one_slot():
    assert TICKER_KEY == "ticker:24h"  # read by the BFF
    assert same_slot([TICKER_KEY, TICKER_TIME_KEY])


@pytest.mark.parametrize("policy", [LOGIN, REGISTER], ids=["login", "register"])
def test_the_keys_one_attempt_charges_share_one_slot(policy):
    charges = client_charges(policy, "203.0.113.7", "Alice")
    device = route_key(policy.route, "device:" + "0" * 32)
    assert len(charges) == (3 if policy.per_name_and_address else 2)
    assert same_slot([charge.key for charge in charges] + [device])
    other = client_charges(policy, "2001:db8::/64", "bob")
    assert same_slot([charge.key for charge in charges + other])


def test_same_slot_tells_keys_of_different_slots_apart():
    # Without a tag, these land in different slots: the check above is not vacuous.
    assert not same_slot(["price:btcusdt", "seconds:btcusdt"])
    assert not same_slot(["ticker:24h", "ticker:24h:event_time"])
    assert same_slot(["{a}x", "{a}y", "z{a}"])


def test_every_script_names_its_keys_only_through_KEYS():
    """No script builds a key inside Lua: every ``redis.call`` names its key as ``KEYS[...]`` (or a local
    taken from ``KEYS``), never by concatenating strings."""
    scripts = {
        name: value
        for module in (aggregator_store, ratelimit, ceilings, store)
        for name, value in vars(module).items()
        if name.startswith("_") and isinstance(value, str) and "redis.call" in value
    }
    assert len(scripts) == 10, sorted(scripts)
    for name, source in scripts.items():
        assert ".." not in source, name  # Lua's string concatenation
        for call in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", source):
            command, first = call
            if command in ("TIME", "PUBLISH"):
                continue
            assert first.startswith("KEYS[") or first in ("key",), (name, command, first)


def test_a_cluster_url_selects_the_cluster_client_and_a_plain_one_the_server_client():
    assert is_cluster_url("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7000/0")
    assert is_cluster_url("rediss+cluster://10.0.0.1:7000")
    assert not is_cluster_url("redis://u:p@127.0.0.1:6379/0")
    assert type(connect("redis://127.0.0.1:6379/0")).__name__ == "Redis"
    cluster = connect("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/0")
    assert type(cluster).__name__ == "RedisCluster"
    assert set(cluster.nodes_manager.startup_nodes) == {"10.0.0.1:7000", "10.0.0.2:7001"}
    with pytest.raises(ValueError, match="database 0"):
        connect("redis+cluster://10.0.0.1:7000/2")
    with pytest.raises(ValueError, match="host:port"):
        connect("redis+cluster://10.0.0.1:7000,nonsense/0")


def test_no_service_source_sends_a_transaction_or_an_unsplit_mget():
    """MULTI and a bare MGET cannot cross slots: the services use scripts and :func:`redisclient.mget`."""
    root = Path(__file__).parents[2]
    for package in ("aggregator", "profile_bff", "crypto_mesh", "etl"):
        for path in (root / package).rglob("*.py"):
            text = path.read_text()
            assert "transaction=True" not in text, path
            if path.name != "redisclient.py":
                assert ".mget(" not in text, path
