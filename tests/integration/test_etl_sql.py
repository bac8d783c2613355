"""ETL ``POST /v1/sql``: analysts' read-only SQL on the ETL's ClickHouse (chDB), and the checks and
formatters that ``crypto-mesh sql`` reuses."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import asyncio

import aiohttp
import clickhouse_connect
import pytest
from support.credentials import service_headers, service_token_file

from crypto_mesh import jsonutil
from support.ports import free_port
from etl import sql
from etl.app import start
from etl.settings import EtlSettings
from etl.tickers import TICKERS
from support.polling import eventually


@pytest.fixture
async def etl_port(clickhouse_url):
    """Port of a started ETL on a fresh chDB directory (no Kafka: the SQL side does not need it)."""
    running = await start(
        EtlSettings(
            port=0,
            api_token_file=service_token_file(),
            kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            clickhouse_url=clickhouse_url,
            sql_max_rows=1000,
        )
    )
    yield running.port
    await running.stop()


async def post(port: int, data: bytes) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/v1/sql", data=data, headers={"Content-Type": "application/json", **service_headers()}
        ) as response,
    ):
        return response.status, await response.json()


async def query(port: int, text: str) -> tuple[int, dict]:
    return await post(port, jsonutil.dumps({"query": text}))


async def test_a_select_answers_columns_types_and_rows_with_decimal_strings_and_rfc3339_times(etl_port):
    status, body = await query(
        etl_port,
        "SELECT toDecimal128('61837.63', 18) AS price, toDateTime64('2024-08-09 00:00:01.5', 3, 'UTC') AS at,"
        " 'btcusdt' AS symbol, NULL AS missing, toInt128('170141183460469231731687303715884105727') AS big",
    )
    assert status == 200
    assert body["columns"] == ["price", "at", "symbol", "missing", "big"]
    assert body["types"] == [
        "Decimal(38, 18)",
        "DateTime64(3, 'UTC')",
        "String",
        "Nullable(Nothing)",
        "Int128",
    ]
    price, at, symbol, missing, big = body["rows"][0]
    assert Decimal(price) == Decimal("61837.63") and isinstance(price, str)
    assert at == "2024-08-09T00:00:01.500000Z"
    assert (symbol, missing, big) == ("btcusdt", None, "170141183460469231731687303715884105727")


async def test_the_tickers_table_is_queryable(etl_port):
    status, body = await query(etl_port, "-- an analyst's note\nSELECT count() FROM crypto.market_tickers;")
    assert (status, body["rows"]) == (200, [[0]])


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO crypto.market_tickers (message_id) VALUES ('x')",
        "DROP TABLE crypto.market_tickers",
        "/* looks harmless */ ALTER TABLE crypto.market_tickers DELETE WHERE 1",
        "SELECT 1 INTO OUTFILE '/tmp/etl-test-out.txt'",
        "SELECT * FROM system.tables",
    ],
)
async def test_anything_but_one_select_over_crypto_is_refused_with_403(etl_port, statement):
    status, body = await query(etl_port, statement)
    assert status == 403
    assert body["error"]["code"] == "forbidden_query"
    _, body = await query(etl_port, "SELECT count() FROM crypto.market_tickers")
    assert body["rows"] == [[0]]  # nothing was dropped


@pytest.mark.parametrize("statement", ["", "SELECT 1; DROP TABLE crypto.market_tickers", "SELECT FROM WHERE"])
async def test_a_query_clickhouse_cannot_parse_is_400(etl_port, statement):
    status, body = await query(etl_port, statement)
    assert (status, body["error"]["code"]) == (400, "malformed_query")


async def test_the_file_function_cannot_read_a_secret_of_the_mesh(etl_port, tmp_path):
    # The report of issue 12: `crypto-mesh sql "SELECT substring(file('.mesh/secrets/jwt_ed25519.pem'), 1, 40)"`
    # printed the auth service's signing key.
    secret = tmp_path / "jwt_ed25519.pem"
    secret.write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIsecret\n")
    for text in (
        f"SELECT substring(file('{secret}'), 1, 40)",
        f"SELECT * FROM file('{secret}', 'LineAsString')",
    ):
        status, body = await query(etl_port, text)
        assert status == 403, body
        assert "file is not allowed" in body["error"]["message"]
        assert "PRIVATE KEY" not in jsonutil.dumps_str(body)


def ticker_rows(second: int) -> list:
    """Two mini-ticker rows of one second (as the consumer decodes them)."""
    return [
        TICKERS.decode(
            jsonutil.dumps(
                {
                    "message_id": f"00000000-0000-5000-8000-{second:08d}{n:04d}",
                    "e": "24hrMiniTicker",
                    "E": 1723161256000 + second * 1000,
                    "receive_time": 1723161256000 + second * 1000,
                    "s": symbol,
                    "c": "61837.5",
                    "o": "60000",
                    "h": "62000",
                    "l": "59000",
                    "change_price": "1837.5",
                    "change_percent": "3.06",
                }
            )
        )
        for n, symbol in enumerate(("btcusdt", "ethusdt"))
    ]


async def test_inserts_keep_landing_while_a_heavy_query_runs_until_its_time_limit_stops_it(clickhouse_url):
    running = await start(
        EtlSettings(
            port=0,
            api_token_file=service_token_file(),
            kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            clickhouse_url=clickhouse_url,
            sql_max_execution_s=10,
            sql_max_rows_to_read=10**15,
        )
    )
    try:
        heavy = asyncio.create_task(
            query(running.port, "SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) = 0")
        )
        await eventually(lambda: running.service.store.analytics_busy)
        store = running.service.store
        for second in range(3):
            await store.insert_tickers(ticker_rows(second), deduplication_token=f"heavy-{second}")
            assert not heavy.done(), "the insert waited for the heavy query"
        status, body = await heavy
        assert status == 400
        assert "TIMEOUT_EXCEEDED" in body["error"]["message"]
        _, counted = await query(running.port, "SELECT count() FROM crypto.market_tickers")
        assert counted["rows"] == [[6]]
    finally:
        await running.stop()


async def test_a_clickhouse_error_is_400_with_its_message(etl_port):
    status, body = await query(etl_port, "SELECT no_such_column FROM crypto.market_tickers")
    assert status == 400
    assert body["error"]["code"] == "clickhouse_error"
    assert "no_such_column" in body["error"]["message"]


async def test_a_result_over_the_row_limit_is_an_error_not_an_endless_answer(etl_port):
    status, body = await query(etl_port, "SELECT number FROM numbers(1000000)")
    assert status == 400
    assert "TOO_MANY_ROWS" in body["error"]["message"]


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'{"query": 42}', b"{}"])
async def test_a_malformed_body_is_400(etl_port, data):
    status, body = await post(etl_port, data)
    assert (status, body["error"]["code"]) == (400, "malformed")


async def test_a_body_over_64_kib_is_413(etl_port):
    status, body = await query(etl_port, "SELECT 1 -- " + "x" * 70_000)
    assert (status, body["error"]["code"]) == (413, "too_large")


def test_run_read_only_on_an_analytics_client_gives_columns_types_and_rows(clickhouse_url):
    setup = clickhouse_connect.get_client(dsn=clickhouse_url)
    setup.command("CREATE DATABASE crypto")
    client = sql.analytics_client(clickhouse_url)
    try:
        columns, types, rows = sql.run_read_only(client, "SELECT toDecimal64('1.50', 2) AS q; -- note")
        assert (columns, types, rows) == (["q"], ["Decimal(18, 2)"], [[Decimal("1.50")]])
        with pytest.raises(sql.QueryRefused):
            sql.run_read_only(client, "CREATE DATABASE nope")
    finally:
        client.close()
        setup.close()


def test_run_read_only_needs_a_client_on_the_crypto_database(clickhouse_url):
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    try:
        with pytest.raises(ValueError, match="crypto"):
            sql.run_read_only(client, "SELECT 1")
    finally:
        client.close()


ROWS = [
    [Decimal("61837.63"), datetime(2024, 8, 9, 0, 0, 1, tzinfo=UTC), "btcusdt", None],
    [Decimal("1E-8"), datetime(2024, 8, 9, 0, 0, 2, tzinfo=UTC), "a,b", [1, 2]],
]
COLUMNS = ["price", "at", "symbol", "extra"]


def test_format_table_aligns_columns_for_a_terminal():
    assert sql.format_table(COLUMNS, ROWS) == (
        "price      | at                   | symbol  | extra\n"
        "-----------+----------------------+---------+------\n"
        "61837.63   | 2024-08-09T00:00:01Z | btcusdt | NULL\n"
        "0.00000001 | 2024-08-09T00:00:02Z | a,b     | [1,2]\n"
        "(2 rows)\n"
    )


def test_format_csv_quotes_per_rfc_4180_and_writes_null_as_empty():
    assert sql.format_csv(COLUMNS, ROWS) == (
        "price,at,symbol,extra\r\n"
        "61837.63,2024-08-09T00:00:01Z,btcusdt,\r\n"
        '0.00000001,2024-08-09T00:00:02Z,"a,b","[1,2]"\r\n'
    )


def test_format_json_writes_an_array_of_one_object_per_row_with_decimal_strings():
    assert sql.format_json(COLUMNS, ROWS) == (
        '[{"price":"61837.63","at":"2024-08-09T00:00:01Z","symbol":"btcusdt","extra":null},'
        '{"price":"0.00000001","at":"2024-08-09T00:00:02Z","symbol":"a,b","extra":[1,2]}]'
    )
