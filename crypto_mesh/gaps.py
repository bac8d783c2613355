"""Gap detection on trade streams from their ids (pure, no I/O).

Binance numbers the trades of a symbol consecutively: ``t`` of ``<symbol>@trade`` and ``a`` of
``<symbol>@aggTrade`` grow by exactly 1 from one frame of the stream to the next (Binance spot "WebSocket
Streams", sections "Trade Streams" and "Aggregate Trade Streams"). So when a frame's id jumps beyond last + 1,
``id - last - 1`` trades were missed: lost while the upstream reconnected, or never sent. The state of a stream
survives reconnects (that is where gaps happen) and is dropped only when the stream is released, so the map
holds one integer per subscribed stream.
"""

from __future__ import annotations

import orjson

from crypto_mesh.binance import payload, trade_id_field
from crypto_mesh.logs import get_logger

log = get_logger(__name__)

#: Streams whose id field :class:`GapDetector` remembers (Binance allows 1,024 per connection); the memo is
#: emptied should it ever hold more.
_MAX_STREAM_FIELDS = 100_000


class GapDetector:
    """Per stream, the highest trade / aggregate id seen; counts the ids skipped beyond it.

    ``gaps``: number of jumps seen; ``missed``: Σ of their sizes (ids skipped). A frame whose id is not above
    the last one (a repeat, e.g. around a reconnect) neither counts nor moves the mark.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        #: Stream → its id field (None: not a trade stream), looked up once per stream, not per frame.
        self._fields: dict[str, str | None] = {}
        self.gaps = 0
        self.missed = 0

    def observe(self, stream: str, raw: bytes) -> int:
        """Check one raw combined-stream frame of ``stream``; returns the size of the gap it reveals (0: none).

        Streams other than trade streams, and frames without an integer id (malformed: the aggregator counts
        those), are ignored.
        """
        fields = self._fields
        field = fields.get(stream, fields)
        if field is fields:
            if len(fields) >= _MAX_STREAM_FIELDS:
                fields.clear()
            field = fields[stream] = trade_id_field(stream)
        if field is None:
            return 0
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return 0
        data = payload(frame) if type(frame) is dict else None
        trade_id = data.get(field) if type(data) is dict else None
        if type(trade_id) is not int:
            return 0
        return self.observe_id(stream, trade_id)

    def observe_id(self, stream: str, trade_id: int) -> int:
        """Record ``trade_id`` of ``stream``; returns the number of ids skipped before it (0: none)."""
        last = self._last.get(stream)
        if last is not None and trade_id <= last:
            return 0
        self._last[stream] = trade_id
        if last is None or trade_id == last + 1:
            return 0
        size = trade_id - last - 1
        self.gaps += 1
        self.missed += size
        log.warning("trade_gap", stream=stream, after_id=last, next_id=trade_id, missed=size)
        return size

    def forget(self, stream: str) -> None:
        """Drop the state of a released stream."""
        self._last.pop(stream, None)

    def __len__(self) -> int:
        """Streams with state."""
        return len(self._last)
