"""The portfolio use cases: read a portfolio and its profile, add, update and remove a coin, delete the
profile, page through the history of changes.

Transport-free, as auth's :mod:`auth.users`: the HTTP views (:mod:`profile_bff.views.portfolios`) turn
requests into calls here, and :mod:`profile_bff.views.errors` turns the errors of :mod:`profile_bff.errors`
into answers. The ports below are what a use case needs of the profile database, the aggregator, Redis and
auth; :mod:`profile_bff.store` and :mod:`profile_bff.clients` implement them, and the unit tests
(tests/test_bff_portfolios.py) give in-memory ones.

Side effects of a change, in order (:meth:`Portfolios._changed`):

1. the database row, the source of truth: the request fails if it fails; the change and its ``coin_history``
   row are one transaction;
2. the aggregator follower ``user:<id>`` (PUT for an added coin, DELETE for a removed one): logged on failure,
   not fatal, since every WebSocket connect and every portfolio refresh of a connected user sets the
   followers again;
3. ``{"user_id"}`` on Redis channel ``bff:portfolio``: logged on failure (the change is stored, only live
   sockets miss the push until their next price update or reconnect).

An ``Idempotency-Key`` (:class:`profile_bff.idempotency.Idempotency`) wraps the whole use case, so its answer
is stored after these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from crypto_mesh.binance import normalize_symbol
from crypto_mesh.logs import get_logger
from profile_bff.errors import AggregatorUnavailable, StoreUnavailable, UserNotFound
from profile_bff.instruments import Instruments
from profile_bff.portfolio import Price, parse_quantity, profile_message
from profile_bff.store import HistoryEntry, Holdings

log = get_logger(__name__)


class PortfolioStore(Protocol):
    """The profile database (:class:`profile_bff.store.ProfileStore`): every method raises
    :class:`~profile_bff.errors.StoreUnavailable` when it cannot be reached, :meth:`require_migrated`
    :class:`~profile_bff.errors.Starting` before its schema is migrated."""

    def require_migrated(self) -> None: ...

    async def load(self, user_id: int) -> Holdings: ...

    async def add_coin(
        self, user_id: int, symbol: str, quantity: Decimal, *, max_coins: int | None = None
    ) -> None: ...

    async def update_coin(self, user_id: int, symbol: str, quantity: Decimal) -> None: ...

    async def delete_coin(self, user_id: int, symbol: str) -> None: ...

    async def delete_profile(self, user_id: int) -> list[str]: ...

    async def history(self, user_id: int, *, before_id: int | None, limit: int) -> list[HistoryEntry]: ...

    async def holders(self) -> dict[int, list[str]]: ...


class Followers(Protocol):
    """The aggregator's followers (:class:`profile_bff.clients.AggregatorClient`); every method raises
    :class:`~profile_bff.errors.AggregatorUnavailable`."""

    async def follow(self, symbol: str, user_id: int) -> None: ...

    async def unfollow(self, symbol: str, user_id: int) -> None: ...

    async def set_followed(self, user_id: int, symbols: list[str]) -> None: ...


class PriceSource(Protocol):
    """The latest price of each symbol that has one: Redis's keys (:class:`profile_bff.store.MarketBus`), or
    the process's subscription first (:meth:`profile_bff.connections.ConnectionManager.latest_prices`).
    Raises :class:`~profile_bff.errors.StoreUnavailable`."""

    async def latest_prices(self, symbols: Iterable[str]) -> dict[str, Price]: ...


class MarketPort(PriceSource, Protocol):
    """Redis (:class:`profile_bff.store.MarketBus`): latest prices and portfolio-change notices; both raise
    :class:`~profile_bff.errors.StoreUnavailable`."""

    async def publish_portfolio_change(self, user_id: int) -> None: ...


class UserDeletion(Protocol):
    """Deleting the auth user (:class:`profile_bff.clients.AuthClient`)."""

    async def delete_user_by_token(self, access_token: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Coin:
    """A holding: lowercase ``symbol`` and exact ``quantity``."""

    symbol: str
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Up to a page of changes, newest first, and ``next_cursor``: the ``before_id`` of the next (older) page,
    ``None`` on the last one."""

    entries: list[HistoryEntry]
    next_cursor: int | None


class Portfolios:
    """The portfolio use cases (module docstring) for the user an access token proved.

    ``instruments``: the exchange's symbol list, which a coin must be listed in and ``TRADING``;
    ``max_coins``: the most coins one portfolio may hold (``BFF_MAX_COINS_PER_USER``); ``prices``: where a
    profile read takes its prices (default: ``market``).
    """

    def __init__(
        self,
        store: PortfolioStore,
        instruments: Instruments,
        followers: Followers,
        market: MarketPort,
        users: UserDeletion,
        *,
        max_coins: int,
        prices: PriceSource | None = None,
    ) -> None:
        self._store = store
        self._instruments = instruments
        self._followers = followers
        self._market = market
        self._prices = market if prices is None else prices
        self._users = users
        self._max_coins = max_coins

    async def rebuild_followers(self) -> int:
        """Set the aggregator follower ``user:<id>`` of every holder to its coins, whole set (BFF start-up:
        whatever the aggregator lost while the BFF was down is restored). Returns the number of holders;
        raises :class:`~profile_bff.errors.StoreUnavailable` or
        :class:`~profile_bff.errors.AggregatorUnavailable` for the caller to retry."""
        held = await self._store.holders()
        for user_id, symbols in held.items():
            await self._followers.set_followed(user_id, symbols)
        return len(held)

    async def holdings(self, user_id: int) -> Holdings:
        """The user's name and coins. Raises :class:`~profile_bff.errors.ProfileNotFound`."""
        self._store.require_migrated()
        return await self._store.load(user_id)

    async def profile(self, user_id: int) -> bytes:
        """The profile JSON with the latest prices (docs/CONTRACTS.md, "Profile JSON"). Raises
        :class:`~profile_bff.errors.ProfileNotFound`, and :class:`StoreUnavailable` when Redis is down."""
        holdings = await self.holdings(user_id)
        prices = await self._prices.latest_prices(holdings.coins)
        return profile_message(user_id, holdings.name, holdings.coins, prices)

    async def add_coin(self, user_id: int, symbol: object, quantity: object) -> Coin:
        """Add ``quantity`` of ``symbol`` (as a client sent them) to the portfolio; the coin as stored.

        Raises, before anything is stored: ``InvalidSymbol``, ``InvalidQuantity``, ``UnknownSymbol``,
        ``NotTrading``; then ``ProfileNotFound``, ``CoinAlreadyHeld``, ``CoinLimitReached``.
        """
        coin = Coin(normalize_symbol(symbol), parse_quantity(quantity))
        self._instruments.require_trading(coin.symbol)
        self._store.require_migrated()
        await self._store.add_coin(user_id, coin.symbol, coin.quantity, max_coins=self._max_coins)
        await self._changed(user_id, followed=coin.symbol)
        return coin

    async def update_coin(self, user_id: int, symbol: object, quantity: object) -> Coin:
        """Set the quantity of a held coin; the coin as stored. Raises ``InvalidSymbol``,
        ``InvalidQuantity``, ``CoinNotHeld``."""
        coin = Coin(normalize_symbol(symbol), parse_quantity(quantity))
        self._store.require_migrated()
        await self._store.update_coin(user_id, coin.symbol, coin.quantity)
        await self._changed(user_id)
        return coin

    async def delete_coin(self, user_id: int, symbol: object) -> str:
        """Remove a held coin; its normalised symbol. Raises ``InvalidSymbol``, ``CoinNotHeld``."""
        normalized = normalize_symbol(symbol)
        self._store.require_migrated()
        await self._store.delete_coin(user_id, normalized)
        await self._changed(user_id, unfollowed=(normalized,))
        return normalized

    async def delete_profile(self, user_id: int, access_token: str) -> None:
        """Delete the profile with its coins, then the auth user ``access_token`` proves.

        The profile goes first: if auth is down the call fails (``AuthUnavailable``) and can be made again
        with the same token (the profile is then already gone, and the auth user is deleted). Until then the
        auth user has no profile, which its next login heals. An auth user already gone is no error.
        """
        self._store.require_migrated()
        symbols = await self._store.delete_profile(user_id)
        try:
            await self._users.delete_user_by_token(access_token)
        except UserNotFound:
            pass
        await self._changed(user_id, unfollowed=symbols)
        log.info("profile_deleted", user_id=user_id)

    async def history(self, user_id: int, *, before_id: int | None, limit: int) -> HistoryPage:
        """Up to ``limit`` changes of the portfolio, newest first, older than the change ``before_id``
        (``None``: from the newest)."""
        self._store.require_migrated()
        entries = await self._store.history(user_id, before_id=before_id, limit=limit)
        return HistoryPage(entries, entries[-1].id if len(entries) == limit else None)

    async def _changed(
        self, user_id: int, *, followed: str | None = None, unfollowed: Iterable[str] = ()
    ) -> None:
        """The side effects of a stored change, in order (module docstring): the aggregator's followers, then
        the change notice. Neither failure fails the change."""
        if followed is not None:
            try:
                await self._followers.follow(followed, user_id)
            except AggregatorUnavailable as exc:
                log.warning("follow_deferred", user_id=user_id, symbol=followed, error=str(exc))
        for symbol in unfollowed:
            try:
                await self._followers.unfollow(symbol, user_id)
            except AggregatorUnavailable as exc:
                log.warning("unfollow_failed", user_id=user_id, symbol=symbol, error=str(exc))
        try:
            await self._market.publish_portfolio_change(user_id)
        except StoreUnavailable as exc:
            log.warning("portfolio_notice_failed", user_id=user_id, error=str(exc))
