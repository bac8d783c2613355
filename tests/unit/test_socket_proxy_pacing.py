"""socket_proxy's pacing of control messages against the exchange's rule on arrivals
(:class:`crypto_mesh.binance.IncomingMessageWindow`): the exchange counts messages as they arrive, so a
reader that stalls (the network, a busy peer) bunches messages sent evenly; the pace must leave a margin.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crypto_mesh.binance import IncomingMessageWindow
from socket_proxy.upstream import CONTROL_MESSAGES_PER_SECOND


def arrivals(sends: list[float], delays: list[float]) -> list[float]:
    """In-order arrival times of messages sent at ``sends`` (s), each delayed by its ``delays`` entry: a message
    never arrives before the one sent ahead of it (one TCP stream)."""
    arrived, last = [], 0.0
    for sent, delay in zip(sends, delays, strict=True):
        last = max(last, sent + delay)
        arrived.append(last)
    return arrived


def refused(arrived: list[float]) -> bool:
    window = IncomingMessageWindow()
    return not all(window.admit(t) for t in arrived)


def paced(count: int, per_second: float, ping_at: float | None = None) -> list[float]:
    """Send times of ``count`` control messages at the closest spacing of ``per_second``, and a keepalive ping
    (also counted by the exchange) at ``ping_at``."""
    sends = [i / per_second for i in range(count)]
    return sorted(sends + ([ping_at] if ping_at is not None else []))


@given(
    delays=st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=21, max_size=21),
    ping_at=st.none() | st.floats(min_value=0.0, max_value=10.0),
)
def test_evenly_paced_control_messages_and_a_ping_are_never_refused_with_up_to_a_second_of_jitter(
    delays, ping_at
):
    sends = paced(20, CONTROL_MESSAGES_PER_SECOND, ping_at)
    assert not refused(arrivals(sends, delays[: len(sends)]))


def test_without_jitter_the_exchange_admits_five_a_second_and_refuses_the_sixth():
    assert not refused([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert refused([0.0, 0.2, 0.4, 0.6, 0.8, 0.99])


def test_four_a_second_had_no_margin_a_reader_stalled_for_a_quarter_second_was_refused():
    # The first message waits 0.3 s for a stalled reader; the next five arrive on time.
    sends = paced(6, 4)
    assert refused(arrivals(sends, [0.3, 0, 0, 0, 0, 0]))
    assert not refused(arrivals(paced(6, CONTROL_MESSAGES_PER_SECOND), [0.3, 0, 0, 0, 0, 0]))
