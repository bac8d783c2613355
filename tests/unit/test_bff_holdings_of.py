"""profile_bff.store.holdings_of: the rows of one batched profile read → each asked user's holdings."""

from __future__ import annotations

from decimal import Decimal

from profile_bff.errors import ProfileNotFound
from profile_bff.store import Holdings, holdings_of


def test_each_user_gets_its_own_coins_in_the_order_asked_and_a_missing_one_is_not_found():
    rows = [
        (8, "bob", "ethusdt", Decimal("2")),
        (7, "alice", "btcusdt", Decimal("1.5")),
        (8, "bob", "btcusdt", Decimal("0.25")),
        (9, "carol", None, None),
    ]

    result = holdings_of([7, 8, 10, 9, 7], rows)

    assert result[0] == Holdings("alice", {"btcusdt": Decimal("1.5")})
    assert result[1] == Holdings("bob", {"ethusdt": Decimal("2"), "btcusdt": Decimal("0.25")})
    assert isinstance(result[2], ProfileNotFound) and result[2].args == (10,)
    assert result[3] == Holdings("carol", {})
    assert result[4] == result[0]


def test_no_rows_means_every_user_is_not_found():
    assert [type(r) for r in holdings_of([1, 2], [])] == [ProfileNotFound, ProfileNotFound]
