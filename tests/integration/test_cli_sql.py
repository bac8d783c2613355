"""`crypto-mesh sql` straight against a ClickHouse engine (MESH_CLICKHOUSE_URL): read-only, clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import clickhouse_connect
import pytest

CRYPTO_MESH = str(Path(sys.executable).parent / "crypto-mesh")


@pytest.fixture
def engine(clickhouse_url):
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    client.command("CREATE DATABASE IF NOT EXISTS crypto")
    client.command("CREATE TABLE crypto.t (symbol String, close_price Decimal(38, 18)) ENGINE = MergeTree ORDER BY symbol")
    client.command("INSERT INTO crypto.t VALUES ('btcusdt', '61837.63'), ('ethusdt', '2683.8')")
    client.close()  # chDB: one open client per data directory, and the command runs in another process
    return {**os.environ, "MESH_CLICKHOUSE_URL": clickhouse_url}


#: ``crypto.t`` as CSV (the command writes CRLF line ends; text mode reads them as "\n"), every digit of
#: the Decimal(38, 18) column.
EXPECTED_CSV = "symbol,close_price\nbtcusdt,61837.630000000000000000\nethusdt,2683.800000000000000000\n"


def sql(env, *args):
    return subprocess.run([CRYPTO_MESH, "sql", *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_query_prints_a_table_csv_or_json_with_exact_decimals(engine):
    query = "SELECT symbol, close_price FROM crypto.t ORDER BY symbol"
    table = sql(engine, query)
    assert table.returncode == 0, table.stderr
    assert table.stdout == (
        "symbol  | close_price\n"
        "--------+-------------------------\n"
        "btcusdt | 61837.630000000000000000\n"
        "ethusdt | 2683.800000000000000000\n"
        "(2 rows)\n\n"
    )
    csv = sql(engine, query, "--format", "csv")
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout == EXPECTED_CSV
    as_json = sql(engine, query, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [
        {"symbol": "btcusdt", "close_price": "61837.630000000000000000"},
        {"symbol": "ethusdt", "close_price": "2683.800000000000000000"},
    ]


@pytest.mark.parametrize("statement", ["DROP TABLE crypto.t", "INSERT INTO crypto.t VALUES ('x', '1')",
                                       "SELECT 1; DROP TABLE crypto.t"])
def test_writes_and_ddl_are_refused_and_change_nothing(engine, statement):
    refused = sql(engine, statement)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    rows = sql(engine, "SELECT symbol, close_price FROM crypto.t ORDER BY symbol", "--format", "csv")
    assert (rows.returncode, rows.stdout) == (0, EXPECTED_CSV)  # the same two rows, every digit: nothing changed


def test_a_bad_query_and_an_unreachable_server_are_one_line_errors(engine):
    bad = sql(engine, "SELECT no_such_column FROM crypto.t")
    assert bad.returncode == 1 and "query failed" in bad.stderr and "Traceback" not in bad.stderr
    away = sql({**engine, "MESH_CLICKHOUSE_URL": "http://127.0.0.1:9"}, "SELECT 1")
    assert away.returncode == 1 and "cannot reach ClickHouse" in away.stderr and "Traceback" not in away.stderr


def test_a_clickhouse_without_the_crypto_database_is_told_apart_from_an_unreachable_one(tmp_path):
    from launcher.embedded import chdb_url

    empty = sql({**os.environ, "MESH_CLICKHOUSE_URL": chdb_url(tmp_path / "empty")}, "SELECT 1")
    assert empty.returncode == 1 and empty.stdout == "" and "Traceback" not in empty.stderr
    assert empty.stderr.strip().count("\n") == 0
    assert "has no database crypto yet" in empty.stderr and "cannot reach" not in empty.stderr


def test_reading_a_file_is_refused_with_status_2_and_one_line(engine, tmp_path):
    secret = tmp_path / "jwt_ed25519.pem"
    secret.write_text("-----BEGIN PRIVATE KEY-----\n")
    refused = sql(engine, f"SELECT substring(file('{secret}'), 1, 40)")
    assert refused.returncode == 2
    assert refused.stdout == "" and "PRIVATE KEY" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "file is not allowed" in refused.stderr


async def test_through_the_etl_a_refused_query_exits_2_and_a_select_prints_its_rows(clickhouse_url, tmp_path):
    # Embedded mode: chDB belongs to the ETL process, so the command asks the ETL's POST /v1/sql.
    import asyncio

    from support.ports import free_port
    from etl.app import start
    from etl.settings import EtlSettings

    from crypto_mesh.secrets import ensure_secret, random_token, secrets_dir

    # The command reads the ETL's service credential where `crypto-mesh up` keeps it.
    token_file = ensure_secret(secrets_dir(tmp_path / "secrets") / "etl_api_token", random_token)
    running = await start(
        EtlSettings(
            port=0,
            api_token_file=token_file,
            kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
            clickhouse_url=clickhouse_url,
        )
    )
    (tmp_path / "mesh.json").write_text(json.dumps({"urls": {"etl": f"http://127.0.0.1:{running.port}"}}))
    env = {**os.environ, "MESH_DATA_DIR": str(tmp_path)}
    env.pop("MESH_CLICKHOUSE_URL", None)

    async def run(query: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            CRYPTO_MESH, "sql", query, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await process.communicate()
        return process.returncode, out.decode(), err.decode()

    try:
        code, out, err = await run("SELECT count() AS n FROM crypto.market_tickers")
        assert (code, out, err) == (0, "n\n-\n0\n(1 row)\n\n", "")
        for refused in ("SELECT substring(file('/etc/hostname'), 1, 40)", "SELECT * FROM system.users",
                        "SELECT 1 FORMAT JSON", "SELECT 1; SELECT 2"):
            code, out, err = await run(refused)
            assert code == 2, (refused, err)
            assert out == "" and err.count("\n") == 1 and "query refused" in err
        code, _, err = await run("SELECT no_such_column FROM crypto.market_tickers")
        assert code == 1 and "query failed" in err
    finally:
        await running.stop()
