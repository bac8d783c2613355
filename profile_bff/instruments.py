"""The exchange's symbol list as the BFF uses it: validating coins and keeping the list up to date (the search
order is :mod:`profile_bff.search`'s).

The list is read from Binance exchangeInfo bodies by the adapter (:mod:`crypto_mesh.binance.exchange_info`).
At start it is the file ``BFF_EXCHANGE_INFO_FILE`` (default the snapshot shipped in
``crypto_mesh/data/binance``); with ``BFF_EXCHANGE_REST_URL`` set, :func:`profile_bff.app.start` then fetches
the exchange's ``GET /api/v3/exchangeInfo`` at once and every ``BFF_EXCHANGE_INFO_REFRESH_S``, and
:class:`InstrumentRefresh` decides what each fetch does (its rules are in its docstring). The start never
waits on the exchange: the file's list serves until a first fetch succeeds.

The BFF's own rules: only a ``TRADING`` symbol may be added to a portfolio (a symbol that is listed with
another status is refused naming it); a held coin is valued whatever its status or even once delisted, since
the profile prices holdings from the latest prices, not from this list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from crypto_mesh.binance import TRADING, ListedSymbol, load_exchange_info, parse_exchange_info_body
from crypto_mesh.logs import get_logger
from crypto_mesh.retry import Backoff

log = get_logger(__name__)

#: First and longest pause (s) before fetching again after a failed or refused fetch (never longer than the
#: refresh period itself); a ``Retry-After`` of the exchange (429, 418) is waited in full.
RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0
#: Symbols named in one log event of listed, delisted or status-changed symbols; the count is always whole. A
#: first fetch after an old snapshot can change a thousand symbols.
LOGGED_SYMBOLS = 50


class UnknownSymbol(LookupError):
    """The symbol is not listed by the exchange."""


class NotTrading(ValueError):
    """The symbol is listed but its status is not ``TRADING`` (``BREAK``, ``HALT``, ...)."""


@dataclass(frozen=True, slots=True)
class Instrument:
    """One listed symbol: ``symbol`` lowercase, ``base``/``quote`` assets uppercase as Binance writes them."""

    symbol: str
    base: str
    quote: str
    status: str
    type: str = "spot"

    @classmethod
    def of(cls, listed: ListedSymbol) -> Instrument:
        """The instrument of a symbol listed by the (spot) exchange."""
        return cls(symbol=listed.symbol, base=listed.base, quote=listed.quote, status=listed.status)


class Instruments:
    """The listed symbols, by lowercase symbol, in the exchange's order for searching.

    One object serves the BFF's whole life: a refresh :meth:`replace`\\ s its symbols, all at once.
    """

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        self._by_symbol = {instrument.symbol: instrument for instrument in instruments}

    @classmethod
    def load(cls, path: Path) -> Instruments:
        """Read an exchangeInfo body from ``path`` (gzipped or not). Raises ``OSError`` if the file cannot be
        read and ``ValueError`` if it is not an exchangeInfo body: the BFF then refuses to start."""
        return cls(Instrument.of(listed) for listed in load_exchange_info(path))

    def __len__(self) -> int:
        return len(self._by_symbol)

    def __iter__(self) -> Iterator[Instrument]:
        return iter(self._by_symbol.values())

    def get(self, symbol: str) -> Instrument | None:
        """The instrument of a normalised ``symbol``, ``None`` if it is not listed."""
        return self._by_symbol.get(symbol)

    def replace(self, other: Instruments) -> None:
        """Take the symbols of ``other`` in place of these, in one step: a caller sees the old list or the new
        one, never a mix."""
        self._by_symbol = other._by_symbol

    def require_trading(self, symbol: str) -> Instrument:
        """The instrument of a normalised ``symbol``. Raises :class:`UnknownSymbol` or :class:`NotTrading`
        (its message names the status)."""
        instrument = self._by_symbol.get(symbol)
        if instrument is None:
            raise UnknownSymbol(f"{symbol} is not listed by the exchange")
        if instrument.status != TRADING:
            raise NotTrading(f"{symbol} is not trading (status {instrument.status})")
        return instrument




@dataclass(frozen=True, slots=True)
class StatusChange:
    """A listed symbol whose status went from ``before`` to ``after`` (``TRADING`` → ``BREAK``, ...)."""

    symbol: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class ListChanges:
    """What a new list changes in the old one, each part in symbol order: symbols ``listed`` (new),
    ``delisted`` (gone from the list) and ``status_changed``."""

    listed: tuple[Instrument, ...] = ()
    delisted: tuple[Instrument, ...] = ()
    status_changed: tuple[StatusChange, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.listed or self.delisted or self.status_changed)


def list_changes(before: Instruments, after: Instruments) -> ListChanges:
    """The :class:`ListChanges` from list ``before`` to list ``after``."""
    old = {instrument.symbol: instrument for instrument in before}
    new = {instrument.symbol: instrument for instrument in after}
    return ListChanges(
        listed=tuple(new[symbol] for symbol in sorted(new.keys() - old.keys())),
        delisted=tuple(old[symbol] for symbol in sorted(old.keys() - new.keys())),
        status_changed=tuple(
            StatusChange(symbol, old[symbol].status, new[symbol].status)
            for symbol in sorted(old.keys() & new.keys())
            if old[symbol].status != new[symbol].status
        ),
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """What one fetched exchangeInfo body decides: the list to take (``instruments``) and what it changes, or,
    with ``instruments`` ``None``, why the body is refused (``refused``) and the current list kept."""

    instruments: Instruments | None
    changes: ListChanges = ListChanges()
    refused: str | None = None


def decide(current: Instruments, body: bytes) -> Decision:
    """The :class:`Decision` on ``body``, a fetched ``GET /api/v3/exchangeInfo`` answer (JSON bytes), for the
    ``current`` list (not changed here). Refused: a body that is not JSON or not an exchangeInfo body
    (:func:`crypto_mesh.binance.parse_exchange_info_body`), and one that lists no symbol, which no working
    exchange answers."""
    try:
        listed = parse_exchange_info_body(body)
    except ValueError as exc:
        return Decision(None, refused=f"not an exchangeInfo body: {exc}")
    if not listed:
        return Decision(None, refused="the exchangeInfo body lists no symbol")
    fetched = Instruments(Instrument.of(entry) for entry in listed)
    return Decision(fetched, list_changes(current, fetched))


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What became of one fetch: ``applied`` (the list was replaced, with ``changes``) or kept, then
    ``reason`` says why; the list now in use (``source`` ``"snapshot"`` until a fetch was applied, then
    ``"exchange"``, and its ``symbols`` and ``trading`` counts); ``failures``, the failed or refused fetches
    since the last applied one; and ``next_fetch_s``, the seconds to wait before the next fetch."""

    applied: bool
    changes: ListChanges
    reason: str | None
    source: str
    symbols: int
    trading: int
    failures: int
    next_fetch_s: float


class InstrumentRefresh:
    """Keeps ``instruments`` (the list the use cases read) up to date from the exchange's exchangeInfo: the
    decisions of each fetch, without I/O (:func:`profile_bff.app.start` makes the requests).

    - A fetched exchangeInfo body that lists symbols replaces the list at once (:meth:`apply` of
      :func:`decide`): a new listing can be added at once, a symbol that left ``TRADING`` is refused for new
      coins with its status, a delisted one as unknown. The next fetch is ``every_s`` later.
    - A failed fetch (:meth:`failed`: no answer, a status other than 200), or a body that is not exchangeInfo
      or lists no symbol, keeps the last good list (until a first success, the file's). The next fetch
      follows :class:`~crypto_mesh.retry.Backoff` (full jitter from ``RETRY_BASE_S`` doubling up to
      ``RETRY_MAX_S``, both at most ``every_s``), and never before the ``Retry-After`` the exchange asked for.

    ``applied`` counts the lists applied and ``failures`` the fetches failed or refused since the last applied
    one, for the tests and the logs.
    """

    def __init__(self, instruments: Instruments, every_s: float) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self.instruments = instruments
        self.every_s = every_s
        self.applied = 0
        self.failures = 0
        self._backoff = Backoff(min(RETRY_BASE_S, every_s), min(RETRY_MAX_S, every_s))

    @property
    def source(self) -> str:
        """``"snapshot"`` until a fetched list was applied, then ``"exchange"``."""
        return "exchange" if self.applied else "snapshot"

    def decide(self, body: bytes) -> Decision:
        """:func:`decide` for the current list. Reads only, so it may run in a worker thread while no
        :meth:`apply` runs."""
        return decide(self.instruments, body)

    def apply(self, decision: Decision) -> RefreshOutcome:
        """Carry out ``decision`` (from :meth:`decide`): replace the list, or count a refused body as a
        failure."""
        if decision.instruments is None:
            return self._kept(decision.refused or "refused", None)
        self.instruments.replace(decision.instruments)
        self.applied += 1
        self.failures = 0
        self._backoff.reset()
        return self._outcome(True, decision.changes, None, self.every_s)

    def failed(self, error: str, retry_after_s: float | None = None) -> RefreshOutcome:
        """A fetch that got no exchangeInfo body (``error`` says why); ``retry_after_s``: the exchange's
        ``Retry-After``, if it sent one."""
        return self._kept(error, retry_after_s)

    def _kept(self, reason: str, retry_after_s: float | None) -> RefreshOutcome:
        self.failures += 1
        delay = max(self._backoff.next_delay(), retry_after_s or 0.0)
        return self._outcome(False, ListChanges(), reason, delay)

    def _outcome(
        self, applied: bool, changes: ListChanges, reason: str | None, delay: float
    ) -> RefreshOutcome:
        return RefreshOutcome(
            applied=applied,
            changes=changes,
            reason=reason,
            source=self.source,
            symbols=len(self.instruments),
            trading=sum(instrument.status == TRADING for instrument in self.instruments),
            failures=self.failures,
            next_fetch_s=delay,
        )


def log_refresh(outcome: RefreshOutcome) -> None:
    """Log ``outcome``: ``instruments_refreshed`` (info) with the counts, preceded by ``instruments_listed``,
    ``instruments_delisted`` and ``instrument_statuses_changed`` for what changed (up to
    :data:`LOGGED_SYMBOLS` symbols each, and the whole count); or ``instruments_refresh_failed`` (warning)
    with the reason, the list kept and the pause before the next fetch."""
    changes = outcome.changes
    if changes.listed:
        log.info(
            "instruments_listed",
            count=len(changes.listed),
            symbols={i.symbol: i.status for i in changes.listed[:LOGGED_SYMBOLS]},
        )
    if changes.delisted:
        log.info(
            "instruments_delisted",
            count=len(changes.delisted),
            symbols=[i.symbol for i in changes.delisted[:LOGGED_SYMBOLS]],
        )
    if changes.status_changed:
        log.info(
            "instrument_statuses_changed",
            count=len(changes.status_changed),
            symbols={c.symbol: f"{c.before}->{c.after}" for c in changes.status_changed[:LOGGED_SYMBOLS]},
        )
    fields = {"source": outcome.source, "symbols": outcome.symbols, "trading": outcome.trading}
    if outcome.applied:
        log.info(
            "instruments_refreshed",
            listed=len(changes.listed),
            delisted=len(changes.delisted),
            status_changed=len(changes.status_changed),
            next_fetch_s=outcome.next_fetch_s,
            **fields,
        )
    else:
        log.warning(
            "instruments_refresh_failed",
            reason=outcome.reason,
            failures=outcome.failures,
            retry_in_s=round(outcome.next_fetch_s, 3),
            **fields,
        )
