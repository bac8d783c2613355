"""The replay exchange's REST decisions (launcher/replay/rest.py): Binance's request weight per calendar
minute, and the exchangeInfo file read again only when it changes. Pure, apart from temporary files."""

from __future__ import annotations

import gzip

import pytest
from support.exchange_info import replace_file, snapshot_with

from crypto_mesh.binance import parse_exchange_info_body
from launcher.replay.rest import ExchangeInfoFile, RequestWeights


def test_weight_is_spent_up_to_the_limit_of_the_minute_then_refused_until_the_next_minute():
    weights = RequestWeights(limit=50)
    minute = 28_000_000 * 60.0

    assert weights.spend(20, minute + 1) == (20, None)
    assert weights.spend(20, minute + 30) == (40, None)
    # A refused request costs nothing and says how long until the minute ends (whole seconds, at least 1).
    assert weights.spend(20, minute + 40.5) == (40, 20)
    assert weights.spend(10, minute + 59.9) == (50, None)
    assert weights.spend(1, minute + 59.9) == (50, 1)
    assert weights.spend(20, minute + 60) == (20, None)
    assert weights.refusal()["code"] == -1003
    with pytest.raises(ValueError, match="positive"):
        RequestWeights(0)


def test_the_exchange_info_file_is_read_again_only_when_it_is_replaced(tmp_path):
    path = tmp_path / "exchangeInfo.json"
    replace_file(path, snapshot_with({}))
    document = ExchangeInfoFile(path)
    first = document.current()

    assert document.current() is first
    assert gzip.decompress(first.gzipped) == first.body

    replace_file(path, snapshot_with({"newcoinusdt": "TRADING"}))
    second = document.current()
    assert {entry.symbol for entry in parse_exchange_info_body(second.body)} >= {"newcoinusdt", "btcusdt"}

    replace_file(path, b"{}")
    with pytest.raises(ValueError, match="no symbols list"):
        document.current()
    path.unlink()
    with pytest.raises(OSError):
        document.current()
