"""Recordings of Binance stream frames: loading, and the shift that replays them in the present.

Canonical format (the one of ``crypto_mesh/data/binance/*.jsonl.gz``, see :mod:`crypto_mesh.binance.data`):
one combined-stream frame per line, ``{"stream": "btcusdt@trade", "data": {...}}`` exactly as Binance sent it,
as plain text or gzip (recognised by its magic bytes ``1f 8b``).

A replayed frame of loop ``k`` (k = 0, 1, ...) is the recorded one with

* ``E`` (event time, ms) and ``T`` (trade time, ms) + ``time_shift_ms`` + k × ``loop_span_ms``;
* trade id ``t`` + k × ``id_span[symbol]["t"]``, aggregate id ``a`` + k × ``id_span[symbol]["a"]`` and
  first/last trade ids ``f``/``l`` + k × ``id_span[symbol]["f"]``, so each kind of id keeps increasing with no
  gap from one loop to the next (as on the exchange, where a skipped id means a lost trade);
* every other field, prices and quantities included, unchanged (the same JSON strings).

``time_shift_ms`` and ``loop_span_ms`` are whole seconds, so the one-second windows of the replay are those of
the recording.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto_mesh import binance, jsonutil
from crypto_mesh.binance import AGG_TRADE, ID_FIELDS, TIME_FIELDS, TRADE
from crypto_mesh.decimals import DecimalFieldError, parse_decimal


#: The id range each id field belongs to: ``f`` and ``l`` (first and last trade id of an aggregate trade)
#: number the same trades, so they share one range; trade ids ``t`` and aggregate ids ``a`` have their own.
ID_GROUPS = {"t": "t", "a": "a", "f": "f", "l": "f"}


class RecordingError(ValueError):
    """A recording that cannot be replayed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    """One recorded frame: ``stream`` (e.g. ``"btcusdt@trade"``), ``symbol`` (lowercase part before ``@``),
    ``data`` (the decoded payload, never mutated) and ``event_ms`` (its ``E``)."""

    stream: str
    symbol: str
    data: dict[str, Any]
    event_ms: int


@dataclass(frozen=True, slots=True)
class Recording:
    """A loaded recording.

    ``frames``: in file order. ``first_event_ms``: ``E`` of the first frame (the playback origin).
    ``loop_span_ms``: whole seconds, from the second of the earliest ``E``/``T`` to one second past the second of
    the latest, so consecutive loops never share a second. ``id_span``: per lowercase symbol and id group
    (:data:`ID_GROUPS`: ``t`` trade ids, ``a`` aggregate ids, ``f`` the trade ids ``f``/``l`` of aggregate
    trades), ``max − min + 1`` of its recorded ids, so that each keeps increasing, with no gap, from one loop
    to the next. ``trade_streams``: per symbol, the stream whose trades feed its mini-ticker (``@trade`` if
    recorded, else ``@aggTrade``).
    """

    path: Path
    frames: tuple[RecordedFrame, ...]
    first_event_ms: int
    loop_span_ms: int
    id_span: dict[str, dict[str, int]]
    trade_streams: dict[str, str]


def floor_second(ms: int) -> int:
    """``ms`` rounded down to a whole second (ms)."""
    return ms - ms % 1000


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_trade(data: dict[str, Any], where: str) -> None:
    for key in ("p", "q"):
        try:
            parse_decimal(data.get(key))
        except DecimalFieldError as exc:
            raise RecordingError(f"{where}: trade field {key} {exc}") from None
    try:
        binance.normalize_symbol(data.get("s"))
    except binance.InvalidSymbol:
        raise RecordingError(f"{where}: trade field s must be the symbol") from None


def read_lines(path: Path) -> list[bytes]:
    """The non-empty lines of ``path``, gunzipped if it starts with the gzip magic bytes.

    Raises :class:`RecordingError` if the file cannot be read.
    """
    try:
        return binance.recording_lines(path)
    except (OSError, EOFError) as exc:
        raise RecordingError(f"{path}: cannot read recording: {exc}") from exc


def load_recording(path: Path) -> Recording:
    """Parse the recording at ``path`` (canonical format above) once.

    Raises :class:`RecordingError` for an unreadable file, an empty one, a line that is not a combined-stream
    frame whose ``data`` is an object with an integer ``E``, a non-integer time or id field, or a ``@trade`` /
    ``@aggTrade`` frame without decimal strings ``p`` and ``q`` and a symbol ``s``, or of a stream whose
    symbol the mesh refuses (:func:`crypto_mesh.binance.normalize_symbol`).
    """
    frames: list[RecordedFrame] = []
    earliest: int | None = None
    latest: int | None = None
    id_ranges: dict[tuple[str, str], list[int]] = {}
    kinds: dict[str, set[str]] = {}
    for number, line in enumerate(read_lines(path), start=1):
        where = f"{path}:{number}"
        try:
            frame = jsonutil.loads(line)
        except jsonutil.JSONDecodeError as exc:
            raise RecordingError(f"{where}: not JSON: {exc}") from exc
        framed = binance.split_combined(frame)
        if framed is None:
            raise RecordingError(f'{where}: not a combined-stream frame {{"stream": ..., "data": ...}}')
        stream, data = framed
        if not isinstance(data, dict) or not _is_int(data.get("E")):
            raise RecordingError(f"{where}: data must be an object with an integer event time E")
        symbol, kind = binance.split_stream(stream)
        for key in TIME_FIELDS:
            if key in data:
                if not _is_int(data[key]):
                    raise RecordingError(f"{where}: {key} must be an integer (ms)")
                earliest = data[key] if earliest is None else min(earliest, data[key])
                latest = data[key] if latest is None else max(latest, data[key])
        for key in ID_FIELDS:
            if key in data:
                if not _is_int(data[key]):
                    raise RecordingError(f"{where}: id {key} must be an integer")
                bounds = id_ranges.setdefault((symbol, ID_GROUPS[key]), [data[key], data[key]])
                bounds[0] = min(bounds[0], data[key])
                bounds[1] = max(bounds[1], data[key])
        if kind in (TRADE, AGG_TRADE):
            _check_trade(data, where)
            try:
                kinds.setdefault(binance.normalize_symbol(symbol), set()).add(kind)
            except binance.InvalidSymbol:
                raise RecordingError(f"{where}: invalid symbol in stream name {stream[:64]!r}") from None
        frames.append(RecordedFrame(stream=stream, symbol=symbol, data=data, event_ms=data["E"]))
    if not frames or earliest is None or latest is None:
        raise RecordingError(f"{path}: recording has no frame")
    id_span: dict[str, dict[str, int]] = {}
    for (symbol, group), (low, high) in sorted(id_ranges.items()):
        id_span.setdefault(symbol, {})[group] = high - low + 1
    trade_streams = {
        symbol: binance.trade_stream(symbol, TRADE if TRADE in found else AGG_TRADE)
        for symbol, found in kinds.items()
    }
    return Recording(
        path=path,
        frames=tuple(frames),
        first_event_ms=frames[0].event_ms,
        loop_span_ms=floor_second(latest) - floor_second(earliest) + 1000,
        id_span=id_span,
        trade_streams=trade_streams,
    )


def trade_stream_kinds(paths: Iterable[Path]) -> dict[str, str]:
    """Per symbol of the recordings at ``paths``, the kind of its trade stream a replay of them serves:
    ``"trade"`` if any of them has the symbol's ``@trade`` frames, else ``"aggTrade"`` (the rule of
    :attr:`Recording.trade_streams`, across recordings). Each recording is loaded, so the errors are those of
    :func:`load_recording`."""
    kinds: dict[str, str] = {}
    for path in paths:
        for symbol, stream in load_recording(path).trade_streams.items():
            if kinds.get(symbol) != TRADE:
                kinds[symbol] = binance.split_stream(stream)[1]
    return kinds


@dataclass(frozen=True, slots=True)
class Timeline:
    """Where a recording's loops sit in the present: see the module docstring for the shift rules.

    ``time_shift_ms`` = floor_second(start wall clock ms) − floor_second(first ``E``).
    """

    recording: Recording
    time_shift_ms: int

    @classmethod
    def starting_at(cls, recording: Recording, now_ms: int) -> Timeline:
        """The timeline whose loop 0 starts at wall clock ``now_ms`` (Unix ms)."""
        return cls(recording, floor_second(now_ms) - floor_second(recording.first_event_ms))

    def shift_ms(self, loop: int) -> int:
        """What loop ``loop`` adds to ``E`` and ``T`` (ms)."""
        return self.time_shift_ms + loop * self.recording.loop_span_ms

    def shifted(self, frame: RecordedFrame, loop: int) -> dict[str, Any]:
        """A copy of ``frame.data`` as replayed in loop ``loop``; key order and other fields unchanged."""
        data = dict(frame.data)
        delta = self.shift_ms(loop)
        for key in TIME_FIELDS:
            if key in data:
                data[key] += delta
        if loop:
            spans = self.recording.id_span.get(frame.symbol, {})
            for key in ID_FIELDS:
                if key in data:
                    data[key] += loop * spans[ID_GROUPS[key]]
        return data

    def info(self) -> dict[str, Any]:
        """The recording's entry of ``GET /replay/v1/info`` (docs/CONTRACTS.md), without ``started_at_ms``."""
        return {
            "file": str(self.recording.path),
            "time_shift_ms": self.time_shift_ms,
            "loop_span_ms": self.recording.loop_span_ms,
            "id_span": {symbol: dict(spans) for symbol, spans in self.recording.id_span.items()},
        }
