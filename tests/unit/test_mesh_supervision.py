"""What ``crypto-mesh up`` decides about its processes: when a crashed one is restarted and when it is given up
on (:class:`crypto_mesh.retry.RestartPolicy`), how many records the embedded broker still holds for the ETL
(:func:`launcher.drain.lag`), and the order of a graceful stop (:func:`launcher.mesh.build_plan`'s stages)."""

from __future__ import annotations

from aiokafka import TopicPartition

from crypto_mesh.retry import Backoff, RestartPolicy
from launcher.drain import lag


def policy() -> RestartPolicy:
    return RestartPolicy(max_crashes=5, window_s=60.0, backoff=Backoff(base_s=0.5, max_s=10.0))


def test_a_crash_is_restarted_after_a_delay_that_grows_with_the_crashes_of_the_window():
    restarts = policy()
    caps = [0.5, 1.0, 2.0, 4.0]
    for n, cap in enumerate(caps):
        delay = restarts.crashed(at=100.0 + n)
        assert delay is not None and 0 <= delay <= cap


def test_the_fifth_crash_within_the_window_gives_up():
    restarts = policy()
    assert all(restarts.crashed(at=float(t)) is not None for t in range(4))
    assert restarts.crashed(at=59.0) is None
    assert restarts.recent == 5


def test_crashes_older_than_the_window_are_forgotten():
    restarts = policy()
    for t in (0.0, 10.0, 20.0, 30.0):
        assert restarts.crashed(at=t) is not None
    # 60 s after the first crash it has left the window: this is the fourth within it, not the fifth.
    delay = restarts.crashed(at=60.0)
    assert delay is not None and delay <= 4.0 and restarts.recent == 4
    # A process that ran for a long time starts again from the first delay.
    assert restarts.crashed(at=1000.0) <= 0.5 and restarts.recent == 1


def test_lag_counts_what_the_group_has_not_committed():
    a, b = TopicPartition("binance.second", 0), TopicPartition("binance.miniticker", 0)
    assert lag({a: 0, b: 0}, {a: 10, b: 7}, {a: 10, b: 7}) == 0
    assert lag({a: 0, b: 0}, {a: 10, b: 7}, {a: 4, b: 7}) == 6
    # Nothing committed yet (aiokafka reads -1 or None): everything the broker holds, from its oldest offset.
    assert lag({a: 3, b: 0}, {a: 10, b: 7}, {a: -1}) == 7 + 7
    assert lag({}, {}, {}) == 0


def test_a_graceful_stop_stops_the_producers_then_the_etl_then_the_broker(tmp_path, monkeypatch):
    from launcher.mesh import STOP_ENGINES, STOP_ETL, STOP_FIRST, build_plan
    from launcher.settings import MeshSettings

    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MESH_POSTGRES_URL", "postgresql+asyncpg://mesh@db.invalid:5432")
    plan = build_plan(MeshSettings(), None)
    stages = {process.name: process.stop_stage for process in plan.processes}
    assert stages == {
        "redis": STOP_ENGINES,
        "kafka": STOP_ENGINES,
        "exchange": STOP_FIRST,
        "auth": STOP_FIRST,
        "socket_proxy": STOP_FIRST,
        "aggregator": STOP_FIRST,
        "etl": STOP_ETL,
        "profile_bff": STOP_FIRST,
    }
    assert STOP_FIRST < STOP_ETL < STOP_ENGINES
    assert plan.drain == {
        "bootstrap_servers": plan.urls["kafka"],
        "group_id": "etl",
        "topics": ["binance.miniticker", "binance.second"],
    }
    monkeypatch.setenv("MESH_KAFKA_BOOTSTRAP_SERVERS", "kafka.invalid:9092")
    assert build_plan(MeshSettings(), None).drain is None  # a real Kafka keeps what the ETL has not loaded
