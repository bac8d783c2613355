"""Followed trade streams that have gone quiet: the pure rule behind the aggregator's stream watchdog.

A followed symbol's trade stream (``dotusdt@trade``) should carry frames. One that carries none for
``AGGREGATOR_STALE_STREAM_S`` is *stale*: the exchange may not have that stream (a replayed recording of the
other kind, or without the symbol), socket_proxy may have lost its upstream, or the market may be that quiet.
The watchdog does not act on it, since a quiet symbol on the live exchange is legitimate; it makes the silence
visible instead of leaving a holder without a price and nobody told: a warning naming the stream and the
metrics ``aggregator_stale_streams`` / ``aggregator_stale_stream_periods_total``.

Rules (times are Unix ms of one clock, the aggregator's wall clock):

- a stream's silence starts when it is first watched, so a stream that never sends a frame goes stale too, and
  every frame starts it again;
- a stream is stale once ``now − last frame ≥ stale_after_ms`` (:func:`is_stale`, :func:`newly_stale`);
- a stream goes stale once per silence: one stale period counted, one warning, until its next frame ends the
  silence (the stream *resumed*);
- a stream no longer watched (its symbol unfollowed) is forgotten, stale or not, and nothing more is counted.

Nothing here does I/O or reads a clock: :class:`aggregator.feeds.Feeds` calls :meth:`StreamWatchdog.check`
every :func:`check_interval_s` and logs what it returns.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

#: The longest wait between two checks (s): a stale stream is reported at most this late.
MAX_CHECK_INTERVAL_S = 1.0


def is_stale(last_frame_ms: int, now_ms: int, stale_after_ms: int) -> bool:
    """True when a stream whose last frame (or, before any frame, whose watch) was at ``last_frame_ms`` has
    been silent for at least ``stale_after_ms`` at ``now_ms`` (all Unix ms)."""
    return now_ms - last_frame_ms >= stale_after_ms


def newly_stale(
    last_frame_ms: Mapping[str, int], stale: Collection[str], now_ms: int, stale_after_ms: int
) -> list[str]:
    """The streams of ``last_frame_ms`` (stream → last frame time, Unix ms) that are stale at ``now_ms`` and
    not already in ``stale``, sorted."""
    return sorted(
        stream
        for stream, last in last_frame_ms.items()
        if stream not in stale and is_stale(last, now_ms, stale_after_ms)
    )


def check_interval_s(stale_after_ms: int) -> float:
    """How often to check (s): a quarter of the stale time, at most :data:`MAX_CHECK_INTERVAL_S`, so a stream
    is reported stale at most a quarter (or 1 s) late."""
    return min(MAX_CHECK_INTERVAL_S, stale_after_ms / 4000)


@dataclass(frozen=True, slots=True)
class Silence:
    """A change of one stream: ``stream`` (e.g. ``"dotusdt@trade"``) went stale or resumed after ``silent_ms``
    without a frame."""

    stream: str
    silent_ms: int


class StreamWatchdog:
    """The silence of every watched stream, by the rules of the module docstring.

    ``stale_after_ms`` (> 0): ``AGGREGATOR_STALE_STREAM_S`` in ms. :attr:`periods` counts the stale periods
    since start; :attr:`stale` holds the streams stale now. :meth:`frame` is on the hot path (one call per
    message of frames): two dictionary look-ups.
    """

    def __init__(self, stale_after_ms: int) -> None:
        if stale_after_ms <= 0:
            raise ValueError("stale_after_ms must be positive")
        self.stale_after_ms = stale_after_ms
        self.periods = 0
        self._last: dict[str, int] = {}
        #: Stale streams → the time of their last frame (or watch) before the silence.
        self._stale: dict[str, int] = {}
        self._resumed: list[Silence] = []

    @property
    def stale(self) -> frozenset[str]:
        """The streams stale now."""
        return frozenset(self._stale)

    def watched(self) -> list[str]:
        """The streams watched, sorted."""
        return sorted(self._last)

    def watch(self, stream: str, now_ms: int) -> None:
        """Start watching ``stream`` at ``now_ms``; a stream already watched keeps its silence."""
        self._last.setdefault(stream, now_ms)

    def unwatch(self, stream: str) -> None:
        """Forget ``stream`` (its symbol is no longer followed)."""
        self._last.pop(stream, None)
        self._stale.pop(stream, None)

    def frame(self, stream: str, received_ms: int) -> None:
        """Frames of ``stream`` arrived at ``received_ms``: its silence ends (a stale stream resumes, reported
        by the next :meth:`check`). Frames of a stream not watched are ignored."""
        last = self._last.get(stream)
        if last is None:
            return
        self._last[stream] = received_ms
        if stream in self._stale:
            del self._stale[stream]
            self._resumed.append(Silence(stream, received_ms - last))

    def check(self, now_ms: int) -> tuple[list[Silence], list[Silence]]:
        """``(went_stale, resumed)`` since the last check: the streams stale at ``now_ms`` that were not (each
        a new stale period, silent for ``now_ms −`` their last frame), and the stale streams whose frames came
        back (silent until their first new frame)."""
        went_stale = []
        for stream in newly_stale(self._last, self._stale, now_ms, self.stale_after_ms):
            last = self._last[stream]
            self._stale[stream] = last
            self.periods += 1
            went_stale.append(Silence(stream, now_ms - last))
        resumed, self._resumed = self._resumed, []
        return went_stale, resumed
