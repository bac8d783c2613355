"""What ``crypto-mesh`` decides about a mesh from outside it (launcher/control.py): the data directory's lock,
the process table read from honcho's lines, the status table, the merged logs and the commands it prints."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from launcher.control import (
    LogFiles,
    MeshBusyError,
    MeshLock,
    ProcessTable,
    format_duration,
    format_rows,
    labelled,
    lock_holder,
    log_names,
    merged,
    runnable_command,
    status_table,
)


def test_the_lock_admits_one_mesh_per_data_directory_and_names_its_holder(tmp_path):
    assert lock_holder(tmp_path) is None  # no lock file: no mesh, and nothing is created
    assert not (tmp_path / "mesh.lock").exists()
    first = MeshLock(tmp_path).acquire()
    holder = lock_holder(tmp_path)
    assert holder is not None and holder["pid"] == os.getpid() and holder["started_at"] > 0
    with pytest.raises(MeshBusyError) as busy:
        MeshLock(tmp_path).acquire(wait_s=0)
    assert busy.value.holder["pid"] == os.getpid()
    assert str(busy.value) == f"another mesh (pid {os.getpid()}) runs in {tmp_path}"
    first.release()
    first.release()  # idempotent
    assert lock_holder(tmp_path) is None
    second = MeshLock(tmp_path).acquire(wait_s=0)  # the file left behind does not block the next mesh
    second.release()


def test_the_process_table_follows_honchos_start_and_stop_lines(tmp_path):
    table = ProcessTable(tmp_path / "processes.json")
    assert table.observe("auth started (pid=4242)\n", 100.0)
    assert table.observe("redis started (pid=17)", 101.0)
    assert not table.observe("SIGTERM received", 102.0)
    assert not table.observe("sending SIGTERM to auth (pid 4242)", 102.0)
    assert table.observe("auth stopped (rc=0)", 103.0)
    expected = {
        "auth": {"pid": 4242, "started_at": 100.0, "returncode": 0},
        "redis": {"pid": 17, "started_at": 101.0},
    }
    assert table.processes == expected
    assert json.loads((tmp_path / "processes.json").read_text()) == expected


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-3, "0s"),
        (0, "0s"),
        (42.9, "42s"),
        (60, "1m00s"),
        (307, "5m07s"),
        (11100, "3h05m"),
        (187200, "2d04h"),
    ],
)
def test_durations_read_as_a_clock_does(seconds, shown):
    assert format_duration(seconds) == shown


def test_the_status_table_has_a_row_per_checked_process_in_start_order():
    state = {
        "checks": [{"name": "redis"}, {"name": "auth"}, {"name": "profile_bff"}],
        "urls": {"redis": "redis://127.0.0.1:1/0", "auth": "127.0.0.1:2", "bff": "http://127.0.0.1:8080"},
    }
    processes = {
        "redis": {"pid": 10, "started_at": 1000.0},
        "auth": {"pid": 11, "started_at": 1000.0, "returncode": 1},
    }
    rows = status_table(state, processes, {"redis": True, "auth": False, "profile_bff": True}, now=1065.0)
    assert rows == [
        ["SERVICE", "HEALTH", "UPTIME", "PID", "URL"],
        ["redis", "healthy", "1m05s", "10", "redis://127.0.0.1:1/0"],
        ["auth", "UNHEALTHY", "-", "-", "127.0.0.1:2"],
        ["profile_bff", "healthy", "-", "-", "http://127.0.0.1:8080"],
    ]
    assert format_rows([["a", "bb", ""], ["ccc", "d", ""]]) == "a    bb\nccc  d"


def test_log_files_are_emptied_at_start_and_merged_in_time_order(tmp_path):
    logs = LogFiles(tmp_path)
    logs.write("auth", datetime(2026, 1, 1, 12, 0, 1), "first\nsecond\n")
    logs.write("redis", datetime(2026, 1, 1, 12, 0, 2), "third")
    logs.write("auth", datetime(2026, 1, 1, 12, 0, 3), "fourth")
    logs.close()
    assert log_names(tmp_path) == ["auth", "redis"]
    files = {name: (tmp_path / "logs" / f"{name}.log").read_text().splitlines() for name in ("auth", "redis")}
    assert files["auth"][0] == "2026-01-01T12:00:01.000 first"
    assert [(name, line.split(" ", 1)[1]) for name, line in merged(files)] == [
        ("auth", "first"),
        ("auth", "second"),
        ("redis", "third"),
        ("auth", "fourth"),
    ]
    assert labelled("auth", files["auth"][0], 5) == "2026-01-01T12:00:01.000 auth  | first"
    LogFiles(tmp_path).close()  # the next mesh starts with empty logs
    assert log_names(tmp_path) == []


def test_the_printed_commands_run_from_where_the_mesh_was_started(tmp_path):
    script = tmp_path / ".venv" / "bin" / "crypto-mesh"
    default = tmp_path / ".mesh"
    assert runnable_command(script, None, tmp_path, default, default) == ".venv/bin/crypto-mesh"
    assert runnable_command(script, str(script), tmp_path, default, default) == "crypto-mesh"
    assert runnable_command(script, "/usr/bin/crypto-mesh", Path("/elsewhere"), default, default) == str(
        script
    )
    other = tmp_path / "my data"
    assert (
        runnable_command(script, None, tmp_path, other, default)
        == "MESH_DATA_DIR='my data' .venv/bin/crypto-mesh"
    )
