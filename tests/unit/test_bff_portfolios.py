"""The BFF's portfolio use cases and Idempotency-Key rules, without transport (profile_bff/portfolios.py,
profile_bff/idempotency.py; the instrument search is tests/unit/test_bff_instrument_search.py's).

The ports are in-memory fakes written here (a profile database, the aggregator's followers, Redis's prices
and change notices, auth's user deletion) that keep one journal of the side effects, in the order they
happen. The same rules over real engines and HTTP: tests/test_bff_api.py and tests/test_bff_rest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from crypto_mesh.binance import InvalidSymbol
from profile_bff.errors import (
    AggregatorUnavailable,
    AuthUnavailable,
    CoinAlreadyHeld,
    CoinLimitReached,
    CoinNotHeld,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InvalidIdempotencyKey,
    ProfileNotFound,
    Starting,
    StoreUnavailable,
    UserNotFound,
)
from profile_bff.idempotency import Idempotency, fingerprint, parse_key
from profile_bff.instruments import Instrument, Instruments, NotTrading, UnknownSymbol
from profile_bff.portfolio import InvalidQuantity, Price
from profile_bff.portfolios import Coin, Portfolios
from profile_bff.store import HistoryEntry, Holdings, StoredAnswer

USER = 7
OTHER_USER = 8

INSTRUMENTS = Instruments(
    [
        Instrument("btcusdt", "BTC", "USDT", "TRADING"),
        Instrument("ethusdt", "ETH", "USDT", "TRADING"),
        Instrument("dotusdt", "DOT", "USDT", "TRADING"),
        Instrument("ethbtc", "ETH", "BTC", "TRADING"),
        Instrument("lunausdt", "LUNA", "USDT", "BREAK"),
    ]
)


@dataclass
class Profiles:
    """The profile database: profiles, coins, their history and the idempotency keys, as ProfileStore keeps
    them (one user holds a symbol once; a portfolio holds at most ``max_coins``)."""

    journal: list[tuple]
    migrated: bool = True
    coins: dict[int, dict[str, Decimal]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    #: Every change of every user, oldest first: (user id, entry).
    changes: list[tuple[int, HistoryEntry]] = field(default_factory=list)
    keys: dict[tuple[int, str], tuple[bytes, StoredAnswer | None]] = field(default_factory=dict)

    def require_migrated(self) -> None:
        if not self.migrated:
            raise Starting("the profile database is not ready yet")

    async def ensure_profile(self, user_id: int, name: str) -> None:
        self.names.setdefault(user_id, name)
        self.coins.setdefault(user_id, {})

    async def load(self, user_id: int) -> Holdings:
        if user_id not in self.coins:
            raise ProfileNotFound(user_id)
        return Holdings(self.names[user_id], dict(self.coins[user_id]))

    async def add_coin(
        self, user_id: int, symbol: str, quantity: Decimal, *, max_coins: int | None = None
    ) -> None:
        held = self._held(user_id)
        if symbol in held:
            raise CoinAlreadyHeld(symbol)
        if max_coins is not None and len(held) >= max_coins:
            raise CoinLimitReached(max_coins)
        held[symbol] = quantity
        self._record(user_id, symbol, "add", None, quantity)

    async def update_coin(self, user_id: int, symbol: str, quantity: Decimal) -> None:
        held = self.coins.get(user_id, {})
        if symbol not in held:
            raise CoinNotHeld(symbol)
        old, held[symbol] = held[symbol], quantity
        self._record(user_id, symbol, "update", old, quantity)

    async def delete_coin(self, user_id: int, symbol: str) -> None:
        held = self.coins.get(user_id, {})
        if symbol not in held:
            raise CoinNotHeld(symbol)
        self._record(user_id, symbol, "remove", held.pop(symbol), None)

    async def delete_profile(self, user_id: int) -> list[str]:
        self.names.pop(user_id, None)
        symbols = sorted(self.coins.pop(user_id, {}))
        self.journal.append(("database", "delete_profile", user_id))
        return symbols

    async def holders(self) -> dict[int, list[str]]:
        return {user_id: sorted(held) for user_id, held in self.coins.items() if held}

    async def history(self, user_id: int, *, before_id: int | None, limit: int) -> list[HistoryEntry]:
        newest_first = [
            entry
            for owner, entry in reversed(self.changes)
            if owner == user_id and (before_id is None or entry.id < before_id)
        ]
        return newest_first[:limit]

    async def reserve_idempotency_key(
        self, user_id: int, key: str, request_hash: bytes, ttl_s: int
    ) -> StoredAnswer | None:
        if (user_id, key) not in self.keys:
            self.keys[user_id, key] = (request_hash, None)
            return None
        stored_hash, answer = self.keys[user_id, key]
        if stored_hash != request_hash:
            raise IdempotencyMismatch(key)
        if answer is None:
            raise IdempotencyInFlight(key)
        return answer

    async def store_idempotent_answer(self, user_id: int, key: str, answer: StoredAnswer) -> None:
        self.keys[user_id, key] = (self.keys[user_id, key][0], answer)
        self.journal.append(("database", "answer", user_id, answer.status))

    async def release_idempotency_key(self, user_id: int, key: str) -> None:
        if self.keys.get((user_id, key), (b"", None))[1] is None:
            self.keys.pop((user_id, key), None)

    def _held(self, user_id: int) -> dict[str, Decimal]:
        if user_id not in self.coins:
            raise ProfileNotFound(user_id)
        return self.coins[user_id]

    def _record(
        self, user_id: int, symbol: str, operation: str, old: Decimal | None, new: Decimal | None
    ) -> None:
        entry = HistoryEntry(len(self.changes) + 1, symbol, operation, old, new, datetime.now(UTC))
        self.changes.append((user_id, entry))
        self.journal.append(("database", operation, user_id, symbol))


@dataclass
class Aggregator:
    """The aggregator's followers; while ``down``, every call fails as an unreachable aggregator does."""

    journal: list[tuple]
    down: bool = False

    async def follow(self, symbol: str, user_id: int) -> None:
        self._call("follow", symbol, user_id)

    async def unfollow(self, symbol: str, user_id: int) -> None:
        self._call("unfollow", symbol, user_id)

    async def set_followed(self, user_id: int, symbols: list[str]) -> None:
        self._call("set", ",".join(symbols), user_id)

    def _call(self, operation: str, symbol: str, user_id: int) -> None:
        if self.down:
            raise AggregatorUnavailable("connection refused")
        self.journal.append(("aggregator", operation, user_id, symbol))


@dataclass
class Market:
    """Redis: the latest prices, and the change notices on ``bff:portfolio``; while ``down`` both fail."""

    journal: list[tuple]
    prices: dict[str, Price] = field(default_factory=dict)
    down: bool = False

    async def latest_prices(self, symbols: Iterable[str]) -> dict[str, Price]:
        if self.down:
            raise StoreUnavailable("redis unavailable")
        return {symbol: self.prices[symbol] for symbol in symbols if symbol in self.prices}

    async def publish_portfolio_change(self, user_id: int) -> None:
        if self.down:
            raise StoreUnavailable("redis unavailable")
        self.journal.append(("redis", "notice", user_id))


@dataclass
class AuthUsers:
    """Auth's users, deleted by access token (``token-<id>``); while ``down`` the call fails."""

    journal: list[tuple]
    users: set[int] = field(default_factory=set)
    down: bool = False

    async def delete_user_by_token(self, access_token: str) -> int:
        if self.down:
            raise AuthUnavailable("the authentication service is unavailable")
        user_id = int(access_token.removeprefix("token-"))
        if user_id not in self.users:
            raise UserNotFound("the user does not exist")
        self.users.discard(user_id)
        self.journal.append(("auth", "delete_user", user_id))
        return user_id


@dataclass
class World:
    journal: list[tuple]
    profiles: Profiles
    aggregator: Aggregator
    market: Market
    auth: AuthUsers
    portfolios: Portfolios
    keys: Idempotency


def world(*, max_coins: int = 200) -> World:
    """The use cases over fakes holding one user, ``USER``, with an empty portfolio."""
    journal: list[tuple] = []
    profiles, aggregator = Profiles(journal), Aggregator(journal)
    market, auth = Market(journal), AuthUsers(journal, users={USER})
    profiles.names[USER], profiles.coins[USER] = "alice", {}
    portfolios = Portfolios(profiles, INSTRUMENTS, aggregator, market, auth, max_coins=max_coins)
    return World(journal, profiles, aggregator, market, auth, portfolios, Idempotency(profiles, ttl_s=60))


# -- side effects, in order --------------------------------------------------------------------------------


async def test_at_start_up_every_holder_follows_its_whole_set_again_and_an_aggregator_outage_is_raised():
    w = world()
    w.profiles.names[7], w.profiles.coins[7] = "bob", {"ethusdt": Decimal("2"), "btcusdt": Decimal("1")}
    w.profiles.names[8], w.profiles.coins[8] = "carol", {}

    assert await w.portfolios.rebuild_followers() == 1
    assert w.journal == [("aggregator", "set", 7, "btcusdt,ethusdt")]

    w.aggregator.down = True
    with pytest.raises(AggregatorUnavailable):
        await w.portfolios.rebuild_followers()


async def test_adding_a_coin_stores_it_then_follows_it_then_announces_the_change():
    w = world()
    coin = await w.portfolios.add_coin(USER, "BTCUSDT", "1.50")
    assert coin == Coin("btcusdt", Decimal("1.50"))
    assert w.journal == [
        ("database", "add", USER, "btcusdt"),
        ("aggregator", "follow", USER, "btcusdt"),
        ("redis", "notice", USER),
    ]


async def test_updating_a_coin_stores_it_then_announces_the_change_and_follows_nothing_new():
    w = world()
    await w.portfolios.add_coin(USER, "ethusdt", "1")
    w.journal.clear()
    coin = await w.portfolios.update_coin(USER, "ethusdt", Decimal("2.25"))
    assert coin == Coin("ethusdt", Decimal("2.25"))
    assert w.journal == [("database", "update", USER, "ethusdt"), ("redis", "notice", USER)]


async def test_removing_a_coin_deletes_it_then_unfollows_it_then_announces_the_change():
    w = world()
    await w.portfolios.add_coin(USER, "ethusdt", "1")
    w.journal.clear()
    assert await w.portfolios.delete_coin(USER, "ETHUSDT") == "ethusdt"
    assert w.journal == [
        ("database", "remove", USER, "ethusdt"),
        ("aggregator", "unfollow", USER, "ethusdt"),
        ("redis", "notice", USER),
    ]
    assert (await w.portfolios.holdings(USER)).coins == {}


async def test_a_change_is_kept_and_announced_while_the_aggregator_is_down():
    w = world()
    w.aggregator.down = True
    await w.portfolios.add_coin(USER, "btcusdt", "1")
    await w.portfolios.delete_coin(USER, "btcusdt")
    await w.portfolios.add_coin(USER, "dotusdt", "3")
    assert w.journal == [
        ("database", "add", USER, "btcusdt"),
        ("redis", "notice", USER),
        ("database", "remove", USER, "btcusdt"),
        ("redis", "notice", USER),
        ("database", "add", USER, "dotusdt"),
        ("redis", "notice", USER),
    ]
    assert (await w.portfolios.holdings(USER)).coins == {"dotusdt": Decimal(3)}


async def test_a_change_is_kept_while_redis_cannot_carry_its_notice():
    w = world()
    w.market.down = True
    await w.portfolios.add_coin(USER, "btcusdt", "1")
    assert w.journal == [("database", "add", USER, "btcusdt"), ("aggregator", "follow", USER, "btcusdt")]
    assert (await w.portfolios.holdings(USER)).coins == {"btcusdt": Decimal(1)}


async def test_deleting_the_profile_deletes_it_then_the_auth_user_then_unfollows_its_coins_then_announces():
    w = world()
    for symbol in ("ethusdt", "btcusdt"):
        await w.portfolios.add_coin(USER, symbol, "1")
    w.journal.clear()
    await w.portfolios.delete_profile(USER, f"token-{USER}")
    assert w.journal == [
        ("database", "delete_profile", USER),
        ("auth", "delete_user", USER),
        ("aggregator", "unfollow", USER, "btcusdt"),
        ("aggregator", "unfollow", USER, "ethusdt"),
        ("redis", "notice", USER),
    ]
    with pytest.raises(ProfileNotFound):
        await w.portfolios.holdings(USER)


async def test_a_profile_deletion_that_auth_could_not_finish_is_finished_by_its_retry():
    w = world()
    await w.portfolios.add_coin(USER, "btcusdt", "1")
    w.auth.down = True
    with pytest.raises(AuthUnavailable):
        await w.portfolios.delete_profile(USER, f"token-{USER}")
    assert USER not in w.profiles.coins and USER in w.auth.users
    w.auth.down = False
    w.journal.clear()
    await w.portfolios.delete_profile(USER, f"token-{USER}")
    assert w.auth.users == set()
    assert w.journal == [
        ("database", "delete_profile", USER),
        ("auth", "delete_user", USER),
        ("redis", "notice", USER),
    ]
    # A third time: the auth user is already gone, which is no error.
    await w.portfolios.delete_profile(USER, f"token-{USER}")


# -- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "quantity", "error"),
    [
        ("btc/usdt", "1", InvalidSymbol),
        ("btcusdt", "0", InvalidQuantity),
        ("btcusdt", "-1", InvalidQuantity),
        ("xyzusdt", "1", UnknownSymbol),
        ("lunausdt", "1", NotTrading),
    ],
)
async def test_a_coin_that_is_invalid_unlisted_or_not_trading_is_refused_before_anything_is_stored(
    symbol, quantity, error
):
    w = world()
    with pytest.raises(error):
        await w.portfolios.add_coin(USER, symbol, quantity)
    assert w.journal == []


async def test_without_a_profile_nothing_is_stored_followed_or_announced():
    w = world()
    with pytest.raises(ProfileNotFound):
        await w.portfolios.add_coin(OTHER_USER, "btcusdt", "1")
    with pytest.raises(ProfileNotFound):
        await w.portfolios.holdings(OTHER_USER)
    with pytest.raises(ProfileNotFound):
        await w.portfolios.profile(OTHER_USER)
    assert w.journal == []


async def test_a_coin_not_held_cannot_be_updated_or_removed():
    w = world()
    with pytest.raises(CoinNotHeld):
        await w.portfolios.update_coin(USER, "btcusdt", "1")
    with pytest.raises(CoinNotHeld):
        await w.portfolios.delete_coin(USER, "btcusdt")
    assert w.journal == []


async def test_a_coin_already_held_is_not_added_twice():
    w = world()
    await w.portfolios.add_coin(USER, "btcusdt", "1")
    w.journal.clear()
    with pytest.raises(CoinAlreadyHeld):
        await w.portfolios.add_coin(USER, "BTCUSDT", "2")
    assert w.journal == []


async def test_a_portfolio_at_its_cap_refuses_one_more_coin_and_nothing_follows():
    w = world(max_coins=2)
    await w.portfolios.add_coin(USER, "btcusdt", "1")
    await w.portfolios.add_coin(USER, "ethusdt", "1")
    w.journal.clear()
    with pytest.raises(CoinLimitReached) as refused:
        await w.portfolios.add_coin(USER, "dotusdt", "1")
    assert refused.value.limit == 2
    assert w.journal == []
    await w.portfolios.delete_coin(USER, "btcusdt")
    await w.portfolios.add_coin(USER, "dotusdt", "1")
    assert set((await w.portfolios.holdings(USER)).coins) == {"ethusdt", "dotusdt"}


async def test_nothing_is_read_or_written_before_the_schema_is_migrated():
    w = world()
    w.profiles.migrated = False
    for call in (
        w.portfolios.add_coin(USER, "btcusdt", "1"),
        w.portfolios.update_coin(USER, "btcusdt", "1"),
        w.portfolios.delete_coin(USER, "btcusdt"),
        w.portfolios.holdings(USER),
        w.portfolios.delete_profile(USER, f"token-{USER}"),
        w.portfolios.history(USER, before_id=None, limit=10),
        w.keys.run(USER, "key-1", b"request", _never_answered),
    ):
        with pytest.raises(Starting):
            await call
    assert w.journal == [] and w.profiles.keys == {}


# -- reading -----------------------------------------------------------------------------------------------


async def test_the_profile_shows_each_coin_at_its_latest_price():
    w = world()
    await w.portfolios.add_coin(USER, "btcusdt", "1.5")
    await w.portfolios.add_coin(USER, "ethusdt", "2")
    w.market.prices["btcusdt"] = Price(Decimal("61837.63"), 1723161601000)
    message = await w.portfolios.profile(USER)
    assert b'"Totals":{"btcusdt":"92756.445"}' in message
    assert b'"Quantities":{"btcusdt":"1.5","ethusdt":"2"}' in message
    assert b'"PricesAt":"2024-08-09T00:00:01.000Z"' in message


async def test_history_pages_newest_first_until_a_page_without_a_next_cursor():
    w = world()
    await w.portfolios.add_coin(USER, "btcusdt", "1")
    await w.portfolios.add_coin(USER, "ethusdt", "1")
    w.profiles.names[OTHER_USER], w.profiles.coins[OTHER_USER] = "bob", {}
    await w.portfolios.add_coin(OTHER_USER, "ethusdt", "4")
    await w.portfolios.update_coin(USER, "btcusdt", "2")
    await w.portfolios.delete_coin(USER, "ethusdt")
    await w.portfolios.add_coin(USER, "dotusdt", "5")

    first = await w.portfolios.history(USER, before_id=None, limit=2)
    assert [(e.operation, e.symbol) for e in first.entries] == [("add", "dotusdt"), ("remove", "ethusdt")]
    second = await w.portfolios.history(USER, before_id=first.next_cursor, limit=2)
    assert [(e.operation, e.symbol) for e in second.entries] == [("update", "btcusdt"), ("add", "ethusdt")]
    assert second.entries[0].old_quantity == Decimal(1) and second.entries[0].new_quantity == Decimal(2)
    last = await w.portfolios.history(USER, before_id=second.next_cursor, limit=2)
    assert [(e.operation, e.symbol) for e in last.entries] == [("add", "btcusdt")]
    assert last.next_cursor is None


# -- Idempotency-Key ---------------------------------------------------------------------------------------


def adding(w: World, symbol: str, quantity: str):
    """The answer an HTTP view would store for adding a coin: 201 and the coin."""

    async def answer() -> StoredAnswer:
        coin = await w.portfolios.add_coin(USER, symbol, quantity)
        return StoredAnswer(201, f'{{"symbol":"{coin.symbol}","quantity":"{coin.quantity}"}}')

    return answer


async def test_an_idempotent_add_runs_once_its_answer_stored_after_its_side_effects_and_replayed_after():
    w = world()
    request = fingerprint("POST", "/v2/coin/symbol", b'{"symbol":"btcusdt","quantity":"1"}')
    first, replayed = await w.keys.run(USER, "key-1", request, adding(w, "btcusdt", "1"))
    assert (first.status, replayed) == (201, False)
    assert w.journal == [
        ("database", "add", USER, "btcusdt"),
        ("aggregator", "follow", USER, "btcusdt"),
        ("redis", "notice", USER),
        ("database", "answer", USER, 201),
    ]
    again, replayed = await w.keys.run(USER, "key-1", request, adding(w, "btcusdt", "1"))
    assert (again, replayed) == (first, True)
    assert len(w.journal) == 4


async def test_a_refusal_below_500_is_the_answer_every_retry_gets():
    w = world()
    await w.portfolios.add_coin(USER, "btcusdt", "1")

    async def refused() -> StoredAnswer:
        return StoredAnswer(409, '{"error":{"code":"coin_already_held","message":"..."}}')

    first, _ = await w.keys.run(USER, "key-1", b"request", refused)
    assert await w.keys.run(USER, "key-1", b"request", _never_answered) == (first, True)


async def test_a_failure_of_ours_is_not_stored_and_the_retry_runs_again():
    w = world()

    async def unavailable() -> StoredAnswer:
        return StoredAnswer(503, '{"error":{"code":"unavailable","message":"..."}}')

    answer, replayed = await w.keys.run(USER, "key-1", b"request", unavailable)
    assert (answer.status, replayed) == (503, False)
    answer, replayed = await w.keys.run(USER, "key-1", b"request", adding(w, "btcusdt", "1"))
    assert (answer.status, replayed) == (201, False)


async def test_a_request_that_ends_without_an_answer_releases_its_key():
    w = world()

    async def broken() -> StoredAnswer:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        await w.keys.run(USER, "key-1", b"request", broken)
    assert w.profiles.keys == {}


async def test_the_same_key_for_another_request_is_a_mismatch_and_changes_nothing():
    w = world()
    await w.keys.run(USER, "key-1", b"request", adding(w, "btcusdt", "1"))
    w.journal.clear()
    with pytest.raises(IdempotencyMismatch):
        await w.keys.run(USER, "key-1", b"another request", adding(w, "ethusdt", "1"))
    assert w.journal == []


async def test_a_retry_while_the_first_request_still_runs_is_in_flight():
    w = world()
    release = asyncio.Event()

    async def slow() -> StoredAnswer:
        await release.wait()
        return StoredAnswer(201, "{}")

    first = asyncio.create_task(w.keys.run(USER, "key-1", b"request", slow))
    while (USER, "key-1") not in w.profiles.keys:
        await asyncio.sleep(0)
    with pytest.raises(IdempotencyInFlight):
        await w.keys.run(USER, "key-1", b"request", _never_answered)
    release.set()
    assert await first == (StoredAnswer(201, "{}"), False)


async def test_another_users_key_is_another_key():
    w = world()
    w.profiles.names[OTHER_USER], w.profiles.coins[OTHER_USER] = "bob", {}
    await w.keys.run(USER, "key-1", b"request", adding(w, "btcusdt", "1"))
    _, replayed = await w.keys.run(OTHER_USER, "key-1", b"request", adding(w, "ethusdt", "1"))
    assert not replayed


@pytest.mark.parametrize(
    ("raw", "key"), [("abc", "abc"), ('"abc"', "abc"), (" k-1 ", "k-1"), ("~" * 255, "~" * 255)]
)
def test_a_key_is_1_to_255_visible_ascii_characters_quoted_or_not(raw, key):
    assert parse_key(raw) == key


@pytest.mark.parametrize("raw", ["", '""', "a b", "é", "x" * 256, "tab\tkey"])
def test_anything_else_is_not_a_key(raw):
    with pytest.raises(InvalidIdempotencyKey):
        parse_key(raw)


def test_requests_differing_in_method_path_or_body_have_different_fingerprints():
    base = fingerprint("POST", "/v2/coin/symbol", b"{}")
    assert base == fingerprint("POST", "/v2/coin/symbol", b"{}")
    others = {fingerprint("PATCH", "/v2/coin/symbol", b"{}"), fingerprint("POST", "/v2/coin/symbol", b"{ }")}
    assert len({base, *others}) == 3
    # Length prefixes: moving a byte from the path to the body is another request.
    assert fingerprint("POST", "/a", b"b") != fingerprint("POST", "/", b"ab")


async def _never_answered() -> StoredAnswer:
    raise AssertionError("the request ran although it should not")

