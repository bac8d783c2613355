"""What the worker processes of one service decide (crypto_mesh/workers.py, crypto_mesh/settings.py): which
process is a worker, each worker's environment (its own metrics port), and which settings can run workers.
The pool itself runs real processes: tests/integration/test_bff_workers.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crypto_mesh.settings import MetricsPortSettings, WorkerSettings
from crypto_mesh.workers import (
    SUPERVISOR_PID_VARIABLE,
    WORKER_INDEX_VARIABLE,
    worker_environment,
    worker_index,
)


class PlainSettings(WorkerSettings):
    """A service that can run workers and has no metrics port."""

    model_config = WorkerSettings.model_config | {"env_prefix": "DEMO_"}
    host: str = "127.0.0.1"
    port: int = 8000


class MeteredSettings(MetricsPortSettings, WorkerSettings):
    """A service that can run workers and serves metrics on a port of its own."""

    model_config = WorkerSettings.model_config | {"env_prefix": "DEMO_"}
    host: str = "127.0.0.1"
    port: int = 8000


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "metrics_token"
    path.write_text("token\n")
    return path


def test_a_process_without_the_index_variable_is_no_worker():
    assert worker_index({}) is None
    assert worker_index({WORKER_INDEX_VARIABLE: "0"}) == 0
    assert worker_index({WORKER_INDEX_VARIABLE: "3"}) == 3


@pytest.mark.parametrize("value", ["-1", "one", ""])
def test_an_index_that_is_no_count_is_refused(value):
    with pytest.raises(ValueError):
        worker_index({WORKER_INDEX_VARIABLE: value})


def test_each_worker_serves_its_metrics_on_the_base_port_plus_its_index(token_file):
    settings = MeteredSettings(workers=3, metrics_port=9464, metrics_token_file=token_file)
    environ = {"DEMO_PORT": "8000", "DEMO_WORKERS": "3", "DEMO_METRICS_PORT": "9464", "PATH": "/bin"}
    ports = [worker_environment(environ, settings, index, 4242)["DEMO_METRICS_PORT"] for index in range(3)]
    assert ports == ["9464", "9465", "9466"]


def test_a_worker_keeps_the_shared_port_and_count_and_learns_its_index_and_supervisor(token_file):
    settings = MeteredSettings(workers=2, metrics_port=9464, metrics_token_file=token_file)
    environ = {"DEMO_PORT": "8000", "DEMO_WORKERS": "2", "DEMO_METRICS_PORT": "9464", "PATH": "/bin"}
    environment = worker_environment(environ, settings, 1, 4242)
    assert environment == {
        **environ,
        "DEMO_METRICS_PORT": "9465",
        WORKER_INDEX_VARIABLE: "1",
        SUPERVISOR_PID_VARIABLE: "4242",
    }
    assert environ["DEMO_METRICS_PORT"] == "9464"  # the supervisor's own environment is left as it was


def test_without_a_metrics_port_no_worker_gets_one():
    settings = PlainSettings(workers=2)
    environment = worker_environment({"DEMO_WORKERS": "2"}, settings, 1, 4242)
    assert "DEMO_METRICS_PORT" not in environment


def test_metrics_turned_off_stay_off_in_every_worker(token_file):
    settings = MeteredSettings(workers=2, metrics_port=0)
    environment = worker_environment({"DEMO_METRICS_PORT": "0"}, settings, 1, 4242)
    assert environment["DEMO_METRICS_PORT"] == "0"


def test_one_worker_may_take_a_free_port_but_several_need_the_one_they_share():
    assert PlainSettings(port=0).workers == 1
    with pytest.raises(ValidationError, match="DEMO_PORT must be a fixed port"):
        PlainSettings(port=0, workers=2)


def test_every_worker_needs_a_metrics_port_of_its_own(token_file):
    assert MeteredSettings(workers=2, metrics_port=65534, metrics_token_file=token_file).workers == 2
    with pytest.raises(ValidationError, match="DEMO_METRICS_PORT"):
        MeteredSettings(workers=3, metrics_port=65534, metrics_token_file=token_file)


@pytest.mark.parametrize("workers", [0, 65])
def test_the_worker_count_is_bounded(workers):
    with pytest.raises(ValidationError):
        PlainSettings(workers=workers)


def test_crypto_mesh_up_runs_the_bffs_workers_each_with_a_metrics_url_of_its_own(tmp_path, monkeypatch):
    from launcher.mesh import build_plan
    from launcher.settings import MeshSettings

    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MESH_POSTGRES_URL", "postgresql+asyncpg://mesh@db.invalid:5432")
    monkeypatch.setenv("MESH_BFF_WORKERS", "3")
    plan = build_plan(MeshSettings(), None)
    (bff,) = [process for process in plan.processes if process.name == "profile_bff"]
    base = int(bff.env["BFF_METRICS_PORT"])
    assert bff.env["BFF_WORKERS"] == "3" and bff.env["BFF_PORT"] == "8080"
    assert [plan.urls[key] for key in ("bff_metrics", "bff_metrics_1", "bff_metrics_2")] == [
        f"http://127.0.0.1:{base + i}/metrics" for i in range(3)
    ]
    assert "bff_metrics_3" not in plan.urls
