"""A Redis Cluster of three masters for the tests, from the same ``redis-server`` binary and ACL file as the
test Redis server (tests/conftest.py): ``redis-cli --cluster create`` joins them and assigns the 16384 slots.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from support.credentials import TESTS_REDIS_USER, redis_acl_file, redis_passwords, redis_user_url

from support.ports import free_port
from launcher.embedded import ManagedProcess, redis_command, redis_server_binary

MASTERS = 3
#: How long the cluster may take to agree on its slots (s).
READY_TIMEOUT_S = 30.0


def redis_cli() -> str:
    """The ``redis-cli`` beside the ``redis-server`` binary the tests run."""
    cli = Path(redis_server_binary()).with_name("redis-cli")
    if cli.exists():
        return str(cli)
    found = shutil.which("redis-cli")
    if found is None:
        raise RuntimeError("redis-cli not found (Debian's redis-tools)")
    return found


def _cli(port: int, *args: str) -> str:
    """``redis-cli`` against 127.0.0.1:``port`` as the tests' user; its output (raises on a failure)."""
    password = redis_passwords()[TESTS_REDIS_USER]
    return subprocess.run(
        [redis_cli(), "-h", "127.0.0.1", "-p", str(port), "--user", TESTS_REDIS_USER, "--pass", password,
         "--no-auth-warning", *args],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout


@contextmanager
def redis_cluster(directory: Path) -> Iterator[str]:
    """Start :data:`MASTERS` cluster-enabled Redis servers (no replicas) in ``directory`` with the mesh's
    ACL users, create the cluster, wait until every node reports ``cluster_state:ok``; yields the cluster URL
    (``redis+cluster://tests:<password>@127.0.0.1:<port>,…/0``, the tests' own user, every node listed).
    Stops the servers at exit."""
    acl_file = redis_acl_file(directory / "secrets")
    ports = [free_port() for _ in range(MASTERS)]
    with ExitStack() as stack:
        for port in ports:
            node_dir = directory / f"node-{port}"
            command = [
                *redis_command(port, node_dir, acl_file),
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-port", str(free_port()),  # the bus; by default port + 10000, maybe above 65535
                "--cluster-node-timeout", "5000",
                "--appendonly", "no",
            ]
            process = ManagedProcess(f"redis-cluster-{port}", command, port, node_dir / "redis.log")
            process.start()
            stack.callback(process.stop)
        _cli(ports[0], "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
             "--cluster-replicas", "0", "--cluster-yes")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all("cluster_state:ok" in _cli(port, "CLUSTER", "INFO") for port in ports):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the Redis Cluster on {ports} was not ok after {READY_TIMEOUT_S} s")
            time.sleep(0.1)
        nodes = ",".join(f"127.0.0.1:{port}" for port in ports)
        yield redis_user_url(f"redis+cluster://{nodes}/0", TESTS_REDIS_USER)
