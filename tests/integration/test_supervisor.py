""":class:`launcher.supervisor.Supervisor` over real child processes (small Python scripts): a killed child is
started again with its output still prefixed and the process table following its new pid, a child that keeps
crashing stops everything with the reason, and a stop goes stage by stage with each stage's hook in between.
The same supervisor under a whole mesh: test_mesh_resilience.py."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys

from support.polling import eventually

from crypto_mesh.retry import Backoff, RestartPolicy
from launcher.control import LogFiles, MeshPrinter, ProcessTable
from launcher.supervisor import Child, Supervisor

#: A child that says it runs, then waits for a signal; SIGTERM ends it with status 0 after saying so.
SERVING = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print('bye', flush=True), sys.exit(0)))\n"
    "print('serving', flush=True)\n"
    "while True: time.sleep(1)\n"
)


def child(name: str, script: str = SERVING, **options) -> Child:
    return Child(name, [sys.executable, "-c", script], dict(os.environ), **options)


def quick() -> RestartPolicy:
    return RestartPolicy(max_crashes=3, window_s=60.0, backoff=Backoff(base_s=0.05, max_s=0.1))


def supervisor(tmp_path, children) -> tuple[Supervisor, io.StringIO, ProcessTable]:
    output = io.StringIO()
    table = ProcessTable(tmp_path / "processes.json")
    return Supervisor(children, MeshPrinter(output, LogFiles(tmp_path), table), policy=quick), output, table


async def test_a_killed_child_is_started_again_and_the_others_keep_running(tmp_path):
    sup, output, table = supervisor(tmp_path, [child("web"), child("worker")])
    run = asyncio.create_task(sup.run())
    await eventually(lambda: output.getvalue().count("| serving") == 2)
    first, worker = table.processes["web"]["pid"], table.processes["worker"]["pid"]
    os.kill(first, signal.SIGKILL)
    await eventually(
        lambda: (
            table.processes["web"].get("pid") not in (None, first)
            and output.getvalue().count("| serving") == 3
        )
    )
    assert "web exited unexpectedly (rc=-9): restarting it in" in output.getvalue()
    assert table.processes["worker"]["pid"] == worker and "returncode" not in table.processes["worker"]
    assert "returncode" not in table.processes["web"]  # running again
    sup.request_stop()
    assert await run == 0 and sup.gave_up is None
    assert output.getvalue().count("| bye") == 2  # both stopped gracefully


async def test_a_child_crashing_again_and_again_is_given_up_on_and_everything_stops(tmp_path):
    crashing = "import sys; print('broken', flush=True); sys.exit(3)"
    sup, output, table = supervisor(tmp_path, [child("web"), child("flaky", crashing)])
    assert await asyncio.wait_for(sup.run(), 60) == 1
    assert sup.gave_up == "flaky exited 3 times within 60s (last rc=3): giving up on it"
    assert output.getvalue().count("| broken") == 3
    assert table.processes["web"]["returncode"] == 0 and "| bye" in output.getvalue()


async def test_a_one_shot_child_may_end_but_its_failure_stops_everything(tmp_path):
    sup, output, _table = supervisor(tmp_path, [child("web"), child("once", "print('done')", restart=False)])
    run = asyncio.create_task(sup.run())
    await eventually(lambda: "once stopped (rc=0)" in output.getvalue() and "| serving" in output.getvalue())
    sup.request_stop()
    assert await run == 0

    sup, output, _table = supervisor(
        tmp_path, [child("web"), child("once", "import sys; sys.exit(1)", restart=False)]
    )
    assert await asyncio.wait_for(sup.run(), 60) == 1 and sup.gave_up == "once failed (rc=1)"


async def test_a_stop_goes_stage_by_stage_with_each_hook_before_its_stage(tmp_path):
    events = []

    async def drain(report) -> None:
        events.append("drain")
        report("drained")

    sup, output, _table = supervisor(
        tmp_path,
        [
            child("broker", stop_stage=2),
            child("consumer", stop_stage=1, before_stop=drain),
            child("producer", stop_stage=0),
        ],
    )
    run = asyncio.create_task(sup.run())
    await eventually(lambda: output.getvalue().count("| serving") == 3)
    sup.request_stop()
    assert await run == 0
    system = [line.split("| ", 1)[1] for line in output.getvalue().splitlines() if " system " in line]
    order = [line for line in system if line.startswith(("sending", "drained")) or " stopped " in line]
    assert [line.split(" (")[0] for line in order] == [
        "sending SIGTERM to producer",
        "producer stopped",
        "drained",
        "sending SIGTERM to consumer",
        "consumer stopped",
        "sending SIGTERM to broker",
        "broker stopped",
    ]
    assert events == ["drain"]


async def test_the_clients_of_a_crashed_broker_stop_first_and_start_again_once_it_is_ready(tmp_path):
    ready_file = tmp_path / "broker.ready"
    # The broker says it is ready (its pid in a file) a moment after it starts, as a server binds its port.
    broker_script = (
        "import os, pathlib, time\n"
        "time.sleep(0.3)\n"
        f"pathlib.Path({str(ready_file)!r}).write_text(str(os.getpid()))\n" + SERVING
    )
    # The client says which broker it found ready when it started.
    client_script = (
        "import pathlib\n"
        f"ready = pathlib.Path({str(ready_file)!r})\n"
        "print('found broker', ready.read_text() if ready.exists() else None, flush=True)\n" + SERVING
    )
    table_ref: list[ProcessTable] = []

    def broker_ready() -> bool:
        current = table_ref[0].processes["broker"].get("pid")
        return ready_file.exists() and ready_file.read_text() == str(current)

    sup, output, table = supervisor(
        tmp_path,
        [child("broker", broker_script, restart_also=("client",), ready=broker_ready), child("client", client_script)],
    )
    table_ref.append(table)
    run = asyncio.create_task(sup.run())
    await eventually(lambda: output.getvalue().count("| serving") == 2)
    broker, client = table.processes["broker"]["pid"], table.processes["client"]["pid"]
    os.kill(broker, signal.SIGKILL)
    await eventually(
        lambda: (
            table.processes["client"].get("pid") not in (None, client)
            and output.getvalue().count("| serving") == 4
        )
    )
    text = output.getvalue()
    assert "client exited unexpectedly" not in text
    assert text.count("| bye") == 1  # the client was stopped gracefully
    system = [line.split("| ", 1)[1] for line in text.splitlines() if " system " in line]
    new_broker, new_client = table.processes["broker"]["pid"], table.processes["client"]["pid"]
    # The old client is gone before the new broker starts; the new client starts once the new broker is ready.
    assert (
        system.index("stopping client until broker is back")
        < system.index("client stopped (rc=0)")
        < system.index(f"broker started (pid={new_broker})")
        < system.index("starting client again: broker is ready")
        < system.index(f"client started (pid={new_client})")
    ), system
    assert f"| found broker {new_broker}\n" in text
    sup.request_stop()
    assert await run == 0
