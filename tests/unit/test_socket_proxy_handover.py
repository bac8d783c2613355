"""The decisions of socket_proxy's upstream connections, alone: the frame-exact handover from an old websocket to
its replacement, the connection-attempt budget, and the reconnect and rotation backoff."""

from __future__ import annotations

import time

import pytest

from socket_proxy.upstream import AttemptLimiter, Handover, reconnect_backoff, rotation_backoff


class Collector:
    """Frames handed on, per stream, in arrival order."""

    def __init__(self) -> None:
        self.frames: dict[str, list[bytes]] = {}

    def __call__(self, stream: str, raw: bytes) -> None:
        self.frames.setdefault(stream, []).append(raw)


def test_handover_when_the_new_websocket_is_ahead_releases_what_it_held_after_the_last_old_frame():
    out = Collector()
    handover = Handover(["s"], out)
    for frame in (b"3", b"4", b"5"):
        handover.from_new("s", frame)
    handover.from_old("s", b"1")
    handover.from_old("s", b"2")
    handover.from_old("s", b"3")
    handover.from_old("s", b"4")
    handover.from_new("s", b"6")
    assert out.frames["s"] == [b"1", b"2", b"3", b"4", b"5", b"6"]
    assert handover.finished.is_set()


def test_handover_when_the_old_websocket_is_ahead_skips_what_it_already_forwarded():
    out = Collector()
    handover = Handover(["s"], out)
    for frame in (b"1", b"2", b"3"):
        handover.from_old("s", frame)
    handover.from_new("s", b"2")
    handover.from_new("s", b"3")
    handover.from_new("s", b"4")
    handover.from_old("s", b"4")
    handover.from_new("s", b"5")
    handover.from_old("s", b"5")
    assert out.frames["s"] == [b"1", b"2", b"3", b"4", b"5"]


def test_handover_switches_quiet_streams_at_the_end_and_bounds_what_it_holds():
    out = Collector()
    handover = Handover(["quiet", "busy"], out, max_held=2)
    handover.from_new("quiet", b"q1")
    for frame in (b"1", b"2", b"3"):
        handover.from_new("busy", frame)
    assert out.frames["busy"] == [b"1", b"2", b"3"]
    handover.from_old("busy", b"0")  # the old websocket no longer speaks for a switched stream
    assert handover.finish_all() == 1
    assert out.frames["quiet"] == [b"q1"]
    assert handover.finished.is_set()


async def test_the_attempt_budget_makes_further_attempts_wait_for_the_window():
    limiter = AttemptLimiter(limit=3, window_s=0.5)
    started = time.monotonic()
    for _ in range(4):
        await limiter.acquire()
    assert time.monotonic() - started >= 0.45


@pytest.mark.parametrize(("backoff", "first_ceiling"), [(reconnect_backoff, 0.2), (rotation_backoff, 1.6)])
def test_backoff_grows_exponentially_with_jitter_up_to_a_cap(backoff, first_ceiling):
    delays_after = {failures: [] for failures in range(12)}
    for _ in range(200):
        each = backoff()
        for failures in delays_after:
            delays_after[failures].append(each.next_delay())
    for failures, delays in delays_after.items():
        ceiling = min(30.0, first_ceiling * 2**failures)
        assert all(0 <= delay <= ceiling for delay in delays)
        # Full jitter: the delays spread over the whole range, so reconnecting clients do not move in step.
        assert max(delays) > ceiling / 2 > min(delays)
