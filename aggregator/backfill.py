"""Fetching skipped trades back: which ids to ask for, and which fetched trades fill a gap (pure, no I/O).

When a symbol's trade ids jump (``crypto_mesh.gaps``), the trades in between were made but lost on the way to
the aggregator (the proxy ended its subscription as overflowing). The exchange still has them: socket_proxy's
``HistoricalTrades`` (proto/socket.proto) fetches them by id from Binance's REST history. The intake
(:mod:`aggregator.intake`) holds the symbol's newer trades back meanwhile, adds the fetched ones, then the held
ones, so the seconds around the gap are published whole when the fill completes in time.

A stream taken over from another replica, or started again after a restart, resumes after the last second
published on Redis (:class:`ResumePoint`): the ids between that second's last trade and the stream's first one
are fetched the same way, so the seconds in between are published whole instead of lost, when
:func:`resumes` says the stream continues there.

A fill asks for at most ``max_ids`` ids, the first ones after the gap (the open window's second needs those; a
longer gap spans seconds no user is still waiting for, and the exchange's request weight is shared): 1,000 ids
(one request) cost weight 4 with aggTrades and 25 with historicalTrades.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from aggregator.secondstat import SECOND_MS
from crypto_mesh.binance import MAX_TRADE_HISTORY_LIMIT, Trade


@dataclass
class Fill:
    """A symbol's fill under way: ids ``first_id``..``last_id`` were skipped, ``first_id``..``wanted_id`` are
    being fetched; ``held`` the trades (with their local arrival time, Unix ms) that came meanwhile, in arrival
    order, the one that revealed the gap first."""

    first_id: int
    last_id: int
    wanted_id: int
    held: list[tuple[Trade, int]] = field(default_factory=list)
    #: The fill of a resumed stream (:func:`resumes`): what it cannot bring back is left out, not published
    #: marked incomplete, as another replica may have published those seconds whole.
    resumed: bool = False


@dataclass(frozen=True)
class ResumePoint:
    """The last second published for a symbol, by any replica: ``second_ms`` (Unix ms) and ``close_id``, its
    last trade / aggregate id: ``"t"`` and ``"i"`` of the SecondStat JSON on ``price:<symbol>``
    (docs/CONTRACTS.md)."""

    second_ms: int
    close_id: int


def resumes(point: ResumePoint, first: Trade, max_ids: int) -> bool:
    """Whether a stream whose first trade is ``first`` continues the seconds published up to ``point``: the
    trade comes after the point's last id and in a later second, and the ids in between, if any, are at most
    ``max_ids`` (a fill fetches every one of them; 0 when the aggregator fetches no history). Otherwise the
    stream starts anew, its first window skipped: a replay started again (its ids behind the point), a stream
    long stopped (too many trades to fetch)."""
    skipped = first.trade_id - point.close_id - 1
    return 0 <= skipped <= max_ids and first.time_ms >= point.second_ms + SECOND_MS


def plan_fill(next_id: int, skipped: int, max_ids: int) -> Fill | None:
    """The fill of ``skipped`` ids before ``next_id``, asking for at most ``max_ids`` of them (the first ones);
    None when there is nothing to fetch (``skipped`` or ``max_ids`` ≤ 0)."""
    if skipped <= 0 or max_ids <= 0:
        return None
    first_id = next_id - skipped
    return Fill(first_id, next_id - 1, min(next_id - 1, first_id + max_ids - 1))


def next_page(from_id: int, wanted_id: int) -> int:
    """``limit`` of the history request from ``from_id`` for a fill up to ``wanted_id`` (inclusive): at most
    :data:`crypto_mesh.binance.MAX_TRADE_HISTORY_LIMIT`; 0 when ``from_id`` is past ``wanted_id``."""
    return max(0, min(MAX_TRADE_HISTORY_LIMIT, wanted_id - from_id + 1))


def filling_run(trades: Iterable[Trade], first_id: int, last_id: int) -> list[Trade]:
    """Of fetched ``trades`` (any order, repeats allowed), those with ids ``first_id``, ``first_id`` + 1, ... up
    to ``last_id``, in id order, stopping before the first id missing: only a run without a hole leaves no
    second in doubt but the one where it stops."""
    by_id = {trade.trade_id: trade for trade in trades if first_id <= trade.trade_id <= last_id}
    run = []
    trade_id = first_id
    while trade_id in by_id:
        run.append(by_id[trade_id])
        trade_id += 1
    return run
