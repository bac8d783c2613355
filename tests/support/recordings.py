"""Recordings in tests: the independent computation of every recorded second, the way back from a replayed
SecondStat to its recorded second, and a recording with both trade stream kinds made from the shipped ones.

The replay exchange's timeline (``GET /replay/v1/info``, docs/CONTRACTS.md "Replay exchange") shifts each loop
by whole seconds and ids by a span per symbol, which :func:`as_recorded` undoes.
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from collections.abc import Collection, Mapping
from decimal import Decimal
from pathlib import Path

import orjson

from crypto_mesh.binance import recording_lines

#: The id field of each trade stream kind's payloads (Binance: ``t`` trade id, ``a`` aggregate trade id).
ID_FIELD = {"trade": "t", "aggTrade": "a"}


def recorded_seconds(
    recording: Path, streams: Collection[str] | None = None
) -> tuple[int, dict[tuple[str, int], dict]]:
    """The independent computation: per (symbol, recorded second), the SecondStat fields straight from the
    recorded frames of ``streams`` (default: every stream of the file), ordered by the id of their stream kind
    (``t`` of ``@trade``, ``a`` of ``@aggTrade``). Also returns the recording's first second (ms, of every
    frame's ``E`` and ``T``), the origin of its loops."""
    trades = defaultdict(list)
    earliest = None
    for line in recording_lines(recording):
        frame = orjson.loads(line)
        data = frame["data"]
        first = min(data["T"], data["E"]) // 1000 * 1000
        earliest = first if earliest is None else min(earliest, first)
        if streams is not None and frame["stream"] not in streams:
            continue
        id_field = ID_FIELD[frame["stream"].partition("@")[2]]
        second = data["T"] - data["T"] % 1000
        trades[(data["s"].lower(), second)].append((data[id_field], data))
    expected = {}
    for key, second_trades in trades.items():
        second_trades.sort(key=lambda pair: pair[0])
        prices = [Decimal(data["p"]) for _id, data in second_trades]
        quantities = [Decimal(data["q"]) for _id, data in second_trades]
        expected[key] = {
            "p": prices[-1],
            "i": second_trades[-1][0],
            "o": prices[0],
            "h": max(prices),
            "l": min(prices),
            "v": sum(quantities, Decimal(0)),
            "q": sum((p * q for p, q in zip(prices, quantities, strict=True)), Decimal(0)),
            "n": len(second_trades),
        }
    return earliest, expected


def as_recorded(
    stat: dict, timeline: dict, earliest: int, kinds: Mapping[str, str] | None = None
) -> tuple[tuple[str, int], dict]:
    """Map a published SecondStat back to its recorded (symbol, second) and fields through the replay's
    ``timeline`` (its entry of ``GET /replay/v1/info``), ``earliest`` being the recording's first second;
    ``kinds``: the trade stream kind the SecondStats of each symbol come from (default ``trade``)."""
    loop, second = recorded_second(stat["t"], timeline, earliest)
    symbol = stat["s"]
    id_field = ID_FIELD[(kinds or {}).get(symbol, "trade")]
    fields = {
        "p": Decimal(stat["p"]),
        "i": stat["i"] - loop * timeline["id_span"][symbol][id_field],
        "o": Decimal(stat["o"]),
        "h": Decimal(stat["h"]),
        "l": Decimal(stat["l"]),
        "v": Decimal(stat["v"]),
        "q": Decimal(stat["q"]),
        "n": stat["n"],
    }
    return (symbol, second), fields


def recorded_second(replayed_ms: int, timeline: dict, earliest: int) -> tuple[int, int]:
    """``(loop, recorded second ms)`` of the replayed second ``replayed_ms`` (a SecondStat's ``t``), through
    the replay's ``timeline``, ``earliest`` being the recording's first second."""
    loop, within = divmod(replayed_ms - timeline["time_shift_ms"] - earliest, timeline["loop_span_ms"])
    return loop, earliest + within


def write_mixed_recording(path: Path, agg_trade_recording: Path, trade_recording: Path) -> Path:
    """Write to ``path`` (gzip) a recording with both trade stream kinds, made for tests from the two shipped
    ones, and return ``path``. It is not one capture of the exchange: every frame is a recorded one, but to
    ``agg_trade_recording`` (2021) are added the ``btcusdt@trade`` frames of ``trade_recording`` (2024) that
    fall within its span once moved onto its first second, their ``E``/``T`` moved by that whole number of
    seconds (so their one-second windows are those recorded). In the result btcusdt has ``@trade`` and
    ``@aggTrade`` frames, ethusdt and dotusdt only ``@aggTrade``; frames are in ``E`` order."""
    frames = [orjson.loads(line) for line in recording_lines(agg_trade_recording)]
    start = min(frame["data"]["E"] for frame in frames) // 1000 * 1000
    end = max(frame["data"]["E"] for frame in frames) // 1000 * 1000
    trades = [
        frame
        for frame in map(orjson.loads, recording_lines(trade_recording))
        if frame["stream"] == "btcusdt@trade"
    ]
    shift = start - min(frame["data"]["T"] for frame in trades) // 1000 * 1000
    for frame in trades:
        data = frame["data"]
        if data["T"] + shift < end and data["E"] + shift < end:
            frames.append({**frame, "data": {**data, "E": data["E"] + shift, "T": data["T"] + shift}})
    frames.sort(key=lambda frame: frame["data"]["E"])
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(frame) + b"\n" for frame in frames)))
    return path


def missing_seconds(stats: list[dict], skip_incomplete: bool = False) -> list[tuple[int, int]]:
    """The pairs of consecutive published SecondStats (JSON objects of one symbol, in order) with seconds
    missing between them, as ``(t, t)``: a second's first trade id (its last, ``i``, less its count, ``n``;
    a symbol's ids are consecutive) follows the last id of the second before, or trades are missing.
    ``skip_incomplete``: pairs with a second marked incomplete (``"x"``, lacking trades) are not checked."""
    return [
        (before["t"], after["t"])
        for before, after in zip(stats, stats[1:])
        if not (skip_incomplete and (before.get("x") or after.get("x")))
        and after["i"] - after["n"] != before["i"]
    ]

