"""The replay exchange's trade history: ``GET /api/v3/historicalTrades`` and ``GET /api/v3/aggTrades`` answered
from the recording as it is being replayed (pure, no I/O).

Binance answers both from its trade history by id (:mod:`crypto_mesh.binance.rest`,
:mod:`crypto_mesh.binance.history`); the replay answers the frames of the symbol's ``@trade`` (historicalTrades)
or ``@aggTrade`` (aggTrades) stream of the first recording that has it, with ids and times as the playback
replays them (:class:`launcher.replay.recording.Timeline`: loop ``k`` shifts times and ids), and only frames
already played, as the exchange knows only trades already made. So a subscriber that lost frames of a stream gets
exactly those frames back by id.

A frame of loop ``k`` at index ``i`` of the recording is played once the playback's position
(:class:`PlayPosition`) has passed ``(k, i)``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from crypto_mesh.binance import TRADE_ID_FIELDS, history_element, trade_stream
from launcher.replay.recording import ID_GROUPS, Timeline


@dataclass
class PlayPosition:
    """How far a playback got: frames before index ``index`` of loop ``loop`` have been played."""

    loop: int = 0
    index: int = 0

    def played(self, loop: int, index: int) -> bool:
        """True if the frame at ``index`` of loop ``loop`` has been played."""
        return (loop, index) < (self.loop, self.index)


class StreamHistory:
    """The history of one recorded trade stream (``stream``, e.g. ``"btcusdt@trade"``) of the recording of
    ``timeline``, as its playback at ``position`` has replayed it."""

    def __init__(self, timeline: Timeline, position: PlayPosition, stream: str) -> None:
        self.timeline = timeline
        self.position = position
        self.kind = stream.partition("@")[2]
        id_field = TRADE_ID_FIELDS[self.kind]
        frames = timeline.recording.frames
        entries = sorted(
            (frame.data[id_field], index) for index, frame in enumerate(frames) if frame.stream == stream
        )
        self._ids = [trade_id for trade_id, _index in entries]
        self._indexes = [index for _trade_id, index in entries]
        symbol = stream.partition("@")[0]
        self._span = timeline.recording.id_span[symbol][ID_GROUPS[id_field]]

    def elements(self, from_id: int, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` REST elements of the stream's kind (:func:`crypto_mesh.binance.history_element`)
        from id ``from_id`` on (inclusive), in id order, only of frames already played; ids below the first
        replayed one start at it."""
        if not self._ids or limit <= 0:
            return []
        first = self._ids[0]
        if from_id < first:
            loop, recorded = 0, first
        else:
            loop, offset = divmod(from_id - first, self._span)
            recorded = first + offset
        at = bisect.bisect_left(self._ids, recorded)
        frames = self.timeline.recording.frames
        answer: list[dict[str, Any]] = []
        while len(answer) < limit:
            if at == len(self._ids):
                loop, at = loop + 1, 0
            index = self._indexes[at]
            if not self.position.played(loop, index):
                break
            answer.append(history_element(self.kind, self.timeline.shifted(frames[index], loop)))
            at += 1
        return answer


class TradeHistory:
    """Every recorded trade stream's :class:`StreamHistory`, of the first recording that has it; built once at
    start from ``(timeline, position)`` of each playback, in order."""

    def __init__(self, playbacks: list[tuple[Timeline, PlayPosition]]) -> None:
        self._streams: dict[str, StreamHistory] = {}
        for timeline, position in playbacks:
            streams = {frame.stream for frame in timeline.recording.frames}
            for stream in sorted(streams):
                kind = stream.partition("@")[2]
                if kind in TRADE_ID_FIELDS and stream not in self._streams:
                    self._streams[stream] = StreamHistory(timeline, position, stream)

    def symbols(self) -> set[str]:
        """Lowercase symbols with a recorded trade stream."""
        return {stream.partition("@")[0] for stream in self._streams}

    def elements(self, kind: str, symbol: str, from_id: int, limit: int) -> list[dict[str, Any]]:
        """:meth:`StreamHistory.elements` of ``<symbol>@<kind>``; ``[]`` if the recordings lack that stream."""
        history = self._streams.get(trade_stream(symbol, kind))
        return history.elements(from_id, limit) if history is not None else []
