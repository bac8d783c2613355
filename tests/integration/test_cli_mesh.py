"""``crypto-mesh`` managing a mesh as a user does, each command run as a real process: ``up`` refusing a held
data directory or a taken port in one line and touching nothing, ``status``, ``logs``, ``down`` and
``--version``.

The refusals need no mesh (a process holding the lock, a listening socket); the rest share one real mesh.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from support.databases import alembic_head
from support.mesh import CRYPTO_MESH, running_mesh

from support.ports import free_port
from crypto_mesh.netutil import port_open
from etl.migrate import load_migrations
from launcher.control import lock_holder, port_in_use

#: Among the longest modules: scheduled first, so that the workers end together (tests/conftest.py).
pytestmark = pytest.mark.heavy

#: The processes of a mesh on its embedded defaults, in their start order.
SERVICES = ["redis", "kafka", "exchange", "auth", "socket_proxy", "aggregator", "etl", "profile_bff"]


def crypto_mesh(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CRYPTO_MESH, *args], env=env, capture_output=True, text=True, timeout=timeout)


def mesh_env(data_dir: Path, **variables: str) -> dict:
    return {**os.environ, "MESH_DATA_DIR": str(data_dir), "MESH_BFF_PORT": str(free_port()), **variables}


def assert_one_line_refusal(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_version_is_the_installed_packages():
    result = crypto_mesh(dict(os.environ), "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"crypto-mesh, version {version('crypto-mesh')}"


def test_status_down_and_logs_say_so_when_no_mesh_runs(tmp_path):
    env = mesh_env(tmp_path)
    for command in ("status", "down", "logs"):
        assert_one_line_refusal(crypto_mesh(env, command), str(tmp_path))
    assert not (tmp_path / "mesh.lock").exists()


@pytest.fixture
def other_mesh(tmp_path):
    """A process holding ``tmp_path``'s lock as a running ``crypto-mesh up`` does, with that mesh's state file
    and a log; yields (data directory, the holder process). SIGTERM ends it as it would end ``up``."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "auth.log").write_text("2026-01-01T00:00:00.000 the other mesh's line\n")
    (tmp_path / "mesh.json").write_text('{"pid": 1, "urls": {}, "owner": "the other mesh"}')
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from launcher.control import MeshLock; "
            "MeshLock(Path(sys.argv[1])).acquire(); print('held', flush=True); sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    yield tmp_path, holder
    holder.kill()
    holder.wait()


def test_up_refuses_a_data_directory_another_mesh_holds_and_leaves_it_alone(other_mesh):
    data_dir, holder = other_mesh
    before = {path: path.read_bytes() for path in data_dir.rglob("*") if path.is_file()}
    result = crypto_mesh(mesh_env(data_dir), "up")
    assert_one_line_refusal(result, "another mesh", f"pid {holder.pid}", str(data_dir), "crypto-mesh down")
    assert {path: path.read_bytes() for path in data_dir.rglob("*") if path.is_file()} == before
    assert holder.poll() is None and lock_holder(data_dir)["pid"] == holder.pid


def test_down_stops_the_process_holding_the_data_directory_and_waits_for_it(other_mesh):
    data_dir, holder = other_mesh
    result = crypto_mesh(mesh_env(data_dir), "down", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert f"pid {holder.pid}" in result.stdout and "mesh stopped" in result.stdout
    assert holder.poll() == -signal.SIGTERM  # down returned after its holder had ended, not before
    assert lock_holder(data_dir) is None


def test_a_busy_port_is_told_from_a_free_one():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)


def test_up_refuses_a_taken_bff_port_before_starting_anything(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = crypto_mesh(mesh_env(tmp_path, MESH_BFF_PORT=str(port)), "up")
    assert_one_line_refusal(result, f"port {port}", "MESH_BFF_PORT")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mesh.lock"]  # no engine, no state, no secret
    assert lock_holder(tmp_path) is None


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """One real mesh on its embedded defaults (:func:`support.mesh.running_mesh`)."""
    with running_mesh(tmp_path_factory.mktemp("mesh")) as running:
        yield running


def test_the_ready_banner_prints_runnable_commands(mesh):
    _state, env, _process, log_path = mesh
    banner = {}
    for line in log_path.read_text().splitlines():
        label, _, command = line.partition(" | ")[2].strip().partition(" ")
        banner[label] = command.strip()
    status = banner["status"]
    assert status.endswith(" status") and f"MESH_DATA_DIR={env['MESH_DATA_DIR']} " in status
    for label, command in (("SQL", "sql"), ("logs", "logs -f"), ("stop", "down")):
        assert banner[label].startswith(status.removesuffix("status") + command), banner
    # As printed, from where the mesh was started, without the environment it was started with.
    printed = subprocess.run(
        status,
        shell=True,
        env={k: v for k, v in env.items() if not k.startswith("MESH_")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stdout + printed.stderr


def test_status_shows_every_process_healthy_with_its_pid_uptime_and_url(mesh):
    state, env, process, _log = mesh
    result = crypto_mesh(env, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    header, columns, *rows = result.stdout.splitlines()
    assert header.startswith(f"mesh in {state['data_dir']} (pid {process.pid}), up ")
    assert columns.split() == ["SERVICE", "HEALTH", "UPTIME", "PID", "URL"]
    assert [row.split()[0] for row in rows] == SERVICES
    by_name = {row.split()[0]: row.split() for row in rows}
    assert all(fields[1] == "healthy" and fields[3].isdigit() for fields in by_name.values()), rows
    assert by_name["profile_bff"][4] == state["urls"]["bff"]
    assert by_name["auth"][4] == state["urls"]["auth"]


def test_a_second_up_in_the_same_data_directory_is_refused_and_the_mesh_keeps_running(mesh):
    state, env, process, _log = mesh
    state_file = Path(state["data_dir"]) / "mesh.json"
    before = state_file.read_text()
    second = crypto_mesh({**env, "MESH_BFF_PORT": str(free_port())}, "up")
    assert_one_line_refusal(second, "another mesh", f"pid {process.pid}")
    assert state_file.read_text() == before and process.poll() is None
    assert crypto_mesh(env, "status").returncode == 0


def test_logs_prints_each_processs_output(mesh):
    _state, env, _process, _log = mesh
    auth = crypto_mesh(env, "logs", "auth")
    assert auth.returncode == 0, auth.stderr
    lines = auth.stdout.splitlines()
    assert lines and all(" auth | " in line for line in lines)
    assert any("auth_listening" in line for line in lines)
    everything = crypto_mesh(env, "logs")
    assert {line.split()[1] for line in everything.stdout.splitlines()} >= {*SERVICES, "system", "readiness"}
    unknown = crypto_mesh(env, "logs", "nosuch")
    assert_one_line_refusal(unknown, "nosuch", "profile_bff")


def test_topics_list_and_tail_read_the_embedded_broker(mesh):
    _state, env, _process, _log = mesh
    listed = crypto_mesh(env, "topics", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["TOPIC", "PARTITIONS", "RECORDS"]
    records = {row.split()[0]: int(row.split()[2]) for row in rows}
    # Every symbol's mini-ticker each second; SecondStats only of the symbols someone holds (none here).
    assert records["binance.miniticker"] > 0 and "binance.second" in records, rows

    tail = crypto_mesh(env, "topics", "tail", "binance.miniticker", "-n", "3")
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        at, position, key, value = line.split(" ", 3)
        assert at.endswith("Z") and ":" in position and json.loads(value)["s"].lower() == key.lower()

    follow = subprocess.Popen([CRYPTO_MESH, "topics", "tail", "binance.miniticker", "-n", "0", "-f"], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(follow.stdout.readline().split(" ", 3)[3])  # a record published after it started
    finally:
        follow.send_signal(signal.SIGINT)
        # Read on until it ends: a follower blocked on a full pipe (records keep coming) acts on the signal
        # only once its write completes.
        try:
            follow.communicate(timeout=30)
        finally:
            follow.kill()
    assert_one_line_refusal(crypto_mesh(env, "topics", "tail", "nosuch"), "no topic 'nosuch'", "binance.miniticker")


def test_db_current_reads_the_running_meshs_databases(mesh):
    _state, env, _process, _log = mesh
    result = crypto_mesh(env, "db", "current")
    assert result.returncode == 0, result.stdout + result.stderr
    _header, *rows = result.stdout.splitlines()
    assert [row.split()[0] for row in rows] == ["auth", "profile", "clickhouse"]
    assert all(row.split()[-1] == "yes" for row in rows), rows  # each service migrated at its start
    refused = crypto_mesh(env, "db", "upgrade", "--database", "clickhouse")
    assert_one_line_refusal(refused, "ETL holds the embedded ClickHouse", "crypto-mesh down")


def test_down_stops_the_mesh_gracefully_and_logs_follow_ends_with_it(mesh):
    state, env, process, _log = mesh
    follow = subprocess.Popen(
        [CRYPTO_MESH, "logs", "-f", "profile_bff"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert " profile_bff | " in follow.stdout.readline()
    result = crypto_mesh(env, "down")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "mesh stopped"
    assert process.wait(60) == 0  # down returned once `up` had released the directory: it is ending
    rest, _ = follow.communicate(timeout=30)
    assert follow.returncode == 0 and "service_stopped" in rest  # the BFF's last line, then the end
    data_dir = Path(state["data_dir"])
    assert not (data_dir / "mesh.json").exists() and lock_holder(data_dir) is None
    bff_port = int(state["urls"]["bff"].rsplit(":", 1)[1])
    assert not port_open("127.0.0.1", bff_port)
    assert_one_line_refusal(crypto_mesh(env, "status"), "no mesh runs")


def test_db_on_a_stopped_mesh_starts_its_postgresql_for_the_command_and_stops_it(mesh):
    state, env, process, _log = mesh
    assert process.poll() is not None  # stopped by the test above
    data_dir = Path(state["data_dir"])
    result = crypto_mesh(env, "db", "downgrade", "--database", "profile", "--target", "0001")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"profile: at 0001 (head {alembic_head('profile_bff')})"
    current = crypto_mesh(env, "db", "current")
    assert current.returncode == 3, current.stdout + current.stderr
    assert {row.split()[0]: row.split()[1] for row in current.stdout.splitlines()[1:]} == {
        "auth": alembic_head("auth"), "profile": "0001", "clickhouse": f"{load_migrations()[-1].version:04d}"
    }
    assert lock_holder(data_dir) is None and not (data_dir / "postgres" / "postmaster.pid").exists()
