"""Every SQL example of docs/ANALYTICS.md runs, read-only, on chDB loaded with the SecondStats of the shipped
recording, and the indicators it computes agree with the same figures computed here in Python."""

from __future__ import annotations

import gzip
import itertools
import math
import re
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from pathlib import Path

import clickhouse_connect
import pytest
from support.market import recorded_secondstats

from aggregator.second_topic import second_record
from aggregator.secondstat import SecondStat
from crypto_mesh import jsonutil
from etl import migrate, sql
from etl.seconds import SECONDS
from etl.columnar import arrow_table
from etl.tickers import TICKERS

DOC = Path(__file__).resolve().parents[2] / "docs" / "ANALYTICS.md"


def documented_queries() -> dict[str, str]:
    """Title of the section → query, for every ```sql block of docs/ANALYTICS.md (the first per section
    is keyed by the title, later ones get ``#2``, ``#3``)."""
    text = DOC.read_text()
    queries: dict[str, str] = {}
    for section in re.split(r"^(?=### )", text, flags=re.MULTILINE):
        title = section.splitlines()[0].removeprefix("### ").strip() if section.startswith("### ") else None
        for index, block in enumerate(re.findall(r"```sql\n(.*?)```", section, re.DOTALL), start=1):
            if title is not None:
                queries[title if index == 1 else f"{title} #{index}"] = block
    return queries


#: A symbol of 30 made-up minutes, one second each, for the RSI: the recording holds only 12 minutes per
#: symbol, too few for a window of 14 changes.
RSI_SYMBOL = "solusdt"
RSI_CLOSES = [
    Decimal(p)
    for p in (
        "150.00", "151.25", "150.75", "151.50", "151.50", "149.40", "152.45", "152.00", "151.10", "153.35",
        "153.00", "152.20", "154.05", "153.55", "155.00", "154.10", "154.35", "154.90", "155.05", "155.80",
        "156.00", "156.65", "157.10", "157.30", "158.05", "158.40", "158.95", "159.20", "159.90", "160.15",
    )
]


def rsi_seconds() -> list[SecondStat]:
    start_ms = 1723161240000
    return [
        SecondStat(RSI_SYMBOL, start_ms + n * 60_000, p, p, p, p, Decimal(1), p, 1, n + 1)
        for n, p in enumerate(RSI_CLOSES)
    ]


@pytest.fixture(scope="module")
def client(tmp_path_factory, trade_recording):
    """An analytics client of chDB with the migrations applied, ``price_seconds`` holding the recording's
    SecondStats and the minutes of :data:`RSI_SYMBOL`, and ``market_tickers`` a few mini-tickers."""
    directory = tmp_path_factory.mktemp("analytics") / "chdb"
    directory.mkdir()
    ch = clickhouse_connect.get_client(dsn=f"chdb://{directory}", tz_mode="aware")
    migrate.apply_migrations(ch, migrate.load_migrations())
    stats = recorded_secondstats(trade_recording)
    stats += rsi_seconds()
    rows = [SECONDS.decode(jsonutil.dumps(second_record(stat))) for stat in stats]
    ch.insert_arrow(SECONDS.table, arrow_table(SECONDS, rows))
    tickers = [
        TICKERS.decode(
            jsonutil.dumps(
                {
                    "message_id": f"00000000-0000-5000-8000-{n:012d}",
                    "e": "24hrMiniTicker",
                    "E": 1723161256000 + n * 1000,
                    "receive_time": 1723161256000 + n * 1000,
                    "s": "btcusdt",
                    "c": f"6183{n}.5",
                    "o": "60000",
                    "h": "62000",
                    "l": "59000",
                    "change_price": f"183{n}.5",
                    "change_percent": "3.05",
                }
            )
        )
        for n in range(3)
    ]
    ch.insert_arrow(TICKERS.table, arrow_table(TICKERS, tickers))
    analytics = sql.analytics_client(f"chdb://{directory}")
    yield analytics
    analytics.close()
    ch.close()


def run(client, query: str) -> list[dict]:
    columns, _types, rows = sql.run_read_only(client, query)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_the_page_documents_every_promised_query():
    assert set(documented_queries()) == {
        "1-minute candles",
        "Candles of any interval (here 5 minutes), straight from the seconds",
        "24 h change",
        "24 h change #2",
        "Volatility: standard deviation of 1-minute log returns",
        "Simple moving average (20 minutes)",
        "RSI (14 minutes)",
    }


@pytest.mark.parametrize("title", sorted(documented_queries()))
def test_each_documented_query_runs_read_only_and_answers(client, title):
    rows = run(client, documented_queries()[title])
    assert rows, f"{title}: no rows"


def recorded_candles(recording: Path, symbol: str, interval_ms: int) -> list[tuple]:
    """Per period of ``interval_ms``, straight from the recorded trades of ``symbol`` (no code of the
    aggregator or the ETL): (period start, open, high, low, close, volume, trade count), open and close by
    trade id, in period order."""
    trades = defaultdict(list)
    with gzip.open(recording, "rb") as lines:
        for line in lines:
            trade = jsonutil.loads(line)["data"]
            if trade["s"].lower() == symbol:
                trades[trade["T"] - trade["T"] % interval_ms].append(
                    (trade["t"], Decimal(trade["p"]), Decimal(trade["q"]))
                )
    candles = []
    for start_ms in sorted(trades):
        items = sorted(trades[start_ms])
        prices = [price for _, price, _ in items]
        candles.append(
            (
                datetime.fromtimestamp(start_ms / 1000, UTC),
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
                sum((quantity for _, _, quantity in items), Decimal(0)),
                len(items),
            )
        )
    return candles


def test_the_1_minute_candles_are_the_recorded_trades_per_minute_newest_first(client, trade_recording):
    rows = run(client, documented_queries()["1-minute candles"])
    expected = recorded_candles(trade_recording, "btcusdt", 60_000)[::-1][:60]
    assert len(expected) >= 10
    assert [
        (row["minute"], row["open"], row["high"], row["low"], row["close"], row["volume"], row["trade_count"])
        for row in rows
    ] == expected


def test_the_5_minute_candles_from_the_seconds_are_the_recorded_trades_per_5_minutes(client, trade_recording):
    title = "Candles of any interval (here 5 minutes), straight from the seconds"
    rows = run(client, documented_queries()[title])
    expected = recorded_candles(trade_recording, "btcusdt", 300_000)
    assert len(expected) >= 2
    assert [
        (row["period"], row["open"], row["high"], row["low"], row["close"], row["volume"], row["trades"])
        for row in rows
    ] == expected


def test_the_exchanges_24h_change_is_that_of_the_latest_mini_ticker(client):
    rows = run(client, documented_queries()["24 h change #2"])
    # The fixture's mini-tickers of btcusdt close at 61830.5, 61831.5 and 61832.5, each with 3.05 %.
    assert [(row["symbol"], Decimal(row["price"]), Decimal(row["change_percent"])) for row in rows] == [
        ("btcusdt", Decimal("61832.5"), Decimal("3.05"))
    ]


README = DOC.parent.parent / "README.md"


def readme_queries() -> list[str]:
    """The queries of the ``crypto-mesh sql "..."`` commands in README.md."""
    return re.findall(r'crypto-mesh sql "([^"]+)"', README.read_text())


def test_the_readme_shows_queries():
    assert len(readme_queries()) >= 2


@pytest.mark.parametrize("query", readme_queries())
def test_each_readme_query_runs_read_only_and_answers(client, query):
    assert run(client, query)


def closes(client) -> list[Decimal]:
    return [
        row["close"]
        for row in run(client, "SELECT close FROM crypto.candles_1m WHERE symbol = 'btcusdt' ORDER BY minute")
    ]


def test_the_sma_is_the_mean_of_the_last_20_closes(client):
    rows = run(client, documented_queries()["Simple moving average (20 minutes)"])
    prices = closes(client)
    assert len(prices) >= 10
    assert [row["close"] for row in rows] == prices
    for index, row in enumerate(rows):
        window = prices[max(0, index - 19) : index + 1]
        assert row["periods"] == len(window)
        assert 0 <= sum(window) / len(window) - row["sma_20"] < Decimal("1E-18")  # exact, cut to 18 places


def cutlers_rsi(closes: list[Decimal], periods: int = 14) -> list[Decimal]:
    """Cutler's RSI at every close that has ``periods`` changes before it (index ``periods`` on): 100 − 100 /
    (1 + mean gain / mean loss) over the last ``periods`` changes, 100 when there is no loss."""
    with localcontext() as exact:
        exact.prec = 50
        changes = [b - a for a, b in itertools.pairwise(closes)]
        rsi = []
        for end in range(periods, len(changes) + 1):
            window = changes[end - periods : end]
            gain = sum((max(c, Decimal(0)) for c in window), Decimal(0)) / periods
            loss = sum((max(-c, Decimal(0)) for c in window), Decimal(0)) / periods
            rsi.append(Decimal(100) if loss == 0 else 100 - 100 / (1 + gain / loss))
        return rsi


def test_the_rsi_follows_cutlers_definition(client):
    query = documented_queries()["RSI (14 minutes)"].replace("'btcusdt'", f"'{RSI_SYMBOL}'")
    rows = run(client, query)
    assert [row["close"] for row in rows] == RSI_CLOSES
    expected = cutlers_rsi(RSI_CLOSES)
    assert len(expected) == 16 and expected[-1] == 100  # the last 14 changes are all gains
    # From the 15th minute on, every row has 14 changes behind it.
    computed = [row["rsi_14"] for row in rows[14:]]
    assert len(computed) == len(expected)
    for got, want in zip(computed, expected, strict=True):
        assert math.isclose(got, float(want), rel_tol=1e-9, abs_tol=1e-9), (got, want)
    assert all(0 <= row["rsi_14"] <= 100 for row in rows)


def test_the_volatility_is_the_sample_stddev_of_log_returns(client):
    title = "Volatility: standard deviation of 1-minute log returns"
    [btc, _eth, _rsi] = run(client, documented_queries()[title])
    prices = [float(p) for p in closes(client)]
    returns = [math.log(b) - math.log(a) for a, b in itertools.pairwise(prices)]
    mean = sum(returns) / len(returns)
    expected = math.sqrt(sum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    assert btc["symbol"] == "btcusdt" and btc["returns"] == len(returns)
    assert math.isclose(btc["volatility_1m"], expected, rel_tol=1e-9)


def test_the_24h_change_is_last_close_minus_first_close_exactly(client):
    rows = run(client, documented_queries()["24 h change"])
    assert [row["symbol"] for row in rows] == ["btcusdt", "ethusdt", RSI_SYMBOL]
    for row in rows:
        seconds = run(
            client,
            f"SELECT close FROM crypto.price_seconds FINAL WHERE symbol = '{row['symbol']}' ORDER BY second",
        )
        first, last = seconds[0]["close"], seconds[-1]["close"]
        assert (row["price_24h_ago"], row["price"], row["change"]) == (first, last, last - first)
        assert row["change_percent"] == ((last - first) * 100 / first).quantize(Decimal("1E-4"))
