"""The supervisor of a service's worker processes (crypto_mesh/workers.py) with real processes: small Python
programs standing for workers, so that what it does when one keeps crashing or will not stop is seen in a
second. The BFF under it: tests/integration/test_bff_workers.py."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import psutil
from support.polling import eventually

from crypto_mesh.retry import Backoff, RestartPolicy
from crypto_mesh.workers import WorkerPool

#: Writes its pid to ``$PID_FILE`` and serves until SIGTERM.
SERVING = (
    "import os, pathlib, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "pathlib.Path(os.environ['PID_FILE']).write_text(str(os.getpid()))\n"
    "while True: time.sleep(0.05)\n"
)
#: Writes its pid, then ignores SIGTERM.
STUBBORN = (
    "import os, pathlib, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pathlib.Path(os.environ['PID_FILE']).write_text(str(os.getpid()))\n"
    "while True: time.sleep(0.05)\n"
)
#: Once worker 0 has written its pid (within 10 s), appends a line to ``$PID_FILE`` and exits 3.
CRASHING = (
    "import os, pathlib, time\n"
    "first = pathlib.Path(os.environ['PID_FILE']).with_name('worker0')\n"
    "deadline = time.monotonic() + 10\n"
    "while not (first.exists() and first.read_text()) and time.monotonic() < deadline: time.sleep(0.01)\n"
    "open(os.environ['PID_FILE'], 'a').write('crashed\\n')\n"
    "raise SystemExit(3)\n"
)


def quick() -> RestartPolicy:
    return RestartPolicy(max_crashes=3, window_s=60.0, backoff=Backoff(base_s=0.05, max_s=0.1))


def environment(tmp_path: Path, index: int, program: str) -> dict[str, str]:
    return {**os.environ, "PID_FILE": str(tmp_path / f"worker{index}"), "PROGRAM": program}


def pool(tmp_path: Path, programs: list[str], **options) -> WorkerPool:
    command = [sys.executable, "-c", "import os; exec(os.environ['PROGRAM'])"]
    return WorkerPool(command, [environment(tmp_path, i, p) for i, p in enumerate(programs)], **options)


def pid_of(tmp_path: Path, index: int) -> int | None:
    path = tmp_path / f"worker{index}"
    return int(path.read_text()) if path.exists() and path.read_text() else None


async def test_a_worker_that_keeps_crashing_is_given_up_on_and_the_others_are_stopped(tmp_path):
    workers = pool(tmp_path, [SERVING, CRASHING], policy=quick)
    stop = asyncio.Event()
    returncode = await asyncio.wait_for(workers.run(stop), 30)
    assert returncode == 1
    assert (tmp_path / "worker1").read_text().count("crashed") == 3
    serving = pid_of(tmp_path, 0)
    assert serving is not None and not psutil.pid_exists(serving)


async def test_a_stop_ends_every_worker_and_kills_one_that_ignores_sigterm(tmp_path):
    workers = pool(tmp_path, [SERVING, STUBBORN], policy=quick, stop_timeout_s=0.5)
    stop = asyncio.Event()
    running = asyncio.create_task(workers.run(stop))
    pids = [await eventually(lambda i=i: pid_of(tmp_path, i), what=f"worker {i} started") for i in range(2)]
    stop.set()
    assert await asyncio.wait_for(running, 30) == 0
    assert not any(psutil.pid_exists(pid) for pid in pids)


async def test_a_killed_worker_is_started_again_and_the_other_is_left_alone(tmp_path):
    workers = pool(tmp_path, [SERVING, SERVING], policy=quick)
    stop = asyncio.Event()
    running = asyncio.create_task(workers.run(stop))
    try:
        first = await eventually(lambda: pid_of(tmp_path, 0), what="worker 0 started")
        other = await eventually(lambda: pid_of(tmp_path, 1), what="worker 1 started")
        psutil.Process(first).kill()
        again = await eventually(lambda: (pid := pid_of(tmp_path, 0)) != first and pid, what="worker 0 again")
        assert psutil.pid_exists(again) and pid_of(tmp_path, 1) == other and psutil.pid_exists(other)
    finally:
        stop.set()
        assert await asyncio.wait_for(running, 30) == 0
