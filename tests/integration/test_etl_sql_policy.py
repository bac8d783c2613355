"""Analytics SQL is confined to the crypto tables (etl/sql.py): every refused form, checked on embedded chDB
through the same client that runs queries, and the allow-list of functions checked against the engine."""

from __future__ import annotations

import clickhouse_connect
import pytest

from etl import migrate, sql, sql_functions

SECRET = "/tmp/crypto-mesh-test-secret.pem"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A plain client and an analytics client of one chDB directory with the migrations applied."""
    directory = tmp_path_factory.mktemp("policy") / "chdb"
    plain = clickhouse_connect.get_client(dsn=f"chdb://{directory}")
    migrate.apply_migrations(plain, migrate.load_migrations())
    analytics = sql.analytics_client(f"chdb://{directory}")
    yield plain, analytics
    analytics.close()
    plain.close()


@pytest.fixture
def analytics(engine):
    return engine[1]


REFUSED = {
    "scalar file()": f"SELECT substring(file('{SECRET}'), 1, 40)",
    "table function file()": f"SELECT * FROM file('{SECRET}', 'LineAsString')",
    "FILE in capitals": f"SELECT FILE('{SECRET}')",
    "File in mixed case": f"SELECT * FROM File('{SECRET}', 'LineAsString')",
    "file in backticks": f"SELECT `file`('{SECRET}')",
    "file in double quotes": f'SELECT "file"(\'{SECRET}\')',
    "file behind a comment": f"SELECT /* harmless */ file(/* x */ '{SECRET}') -- done",
    "file in a nested subquery": f"SELECT * FROM (SELECT * FROM (SELECT file('{SECRET}') AS f))",
    "file in a CTE": f"WITH s AS (SELECT file('{SECRET}') AS k) SELECT * FROM s",
    "file in a scalar CTE": f"WITH file('{SECRET}') AS k SELECT k",
    "file in a lambda": f"SELECT arrayMap(x -> file(x), ['{SECRET}'])",
    "file in IN": f"SELECT 1 WHERE 'a' IN (SELECT file('{SECRET}'))",
    "url": "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
    "s3": "SELECT * FROM s3('http://127.0.0.1:9/b/k', 'LineAsString')",
    "hdfs": "SELECT * FROM hdfs('hdfs://127.0.0.1:9/x', 'LineAsString')",
    "remote": "SELECT * FROM remote('127.0.0.1:9', system.one)",
    "remoteSecure": "SELECT * FROM remoteSecure('127.0.0.1:9', system.one)",
    "cluster": "SELECT * FROM cluster('default', system.one)",
    "clusterAllReplicas": "SELECT * FROM clusterAllReplicas('default', system.one)",
    "mysql": "SELECT * FROM mysql('127.0.0.1:9', 'db', 't', 'u', 'p')",
    "postgresql": "SELECT * FROM postgresql('127.0.0.1:9', 'db', 't', 'u', 'p')",
    "jdbc": "SELECT * FROM jdbc('jdbc:x', 't')",
    "executable": "SELECT * FROM executable('cat', 'LineAsString', 'x String')",
    "input": "SELECT * FROM input('x String')",
    "merge": "SELECT * FROM merge('system', '.*')",
    "dictionary": "SELECT * FROM dictionary('d')",
    "dictGet": "SELECT dictGet('d', 'v', toUInt64(1))",
    "dictGetOrDefault": "SELECT dictGetOrDefault('d', 'v', toUInt64(1), 'x')",
    "joinGet": "SELECT joinGet('crypto.j', 'v', 1)",
    "getSetting": "SELECT getSetting('max_threads')",
    "system table": "SELECT * FROM system.users",
    "system table in a join": "SELECT * FROM crypto.market_tickers AS t JOIN system.tables AS s ON 1",
    "system table on the right of IN": "SELECT 1 WHERE 'x' IN system.tables",
    "information_schema": "SELECT * FROM information_schema.tables",
    "INFORMATION_SCHEMA": "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    "default database": "SELECT * FROM default.t",
    "INTO OUTFILE": "SELECT 1 INTO OUTFILE '/tmp/crypto-mesh-outfile.txt'",
    "INTO OUTFILE after a comment": "SELECT 1 /* x */ INTO /* y */ OUTFILE '/tmp/crypto-mesh-outfile.txt'",
    "SETTINGS": "SELECT 1 SETTINGS readonly = 0",
    "SETTINGS of a subquery": "SELECT * FROM (SELECT 1 SETTINGS max_threads = 64)",
    "FORMAT": "SELECT 1 FORMAT JSON",
    "query parameter": "SELECT {name:String}",
    "parametrised view": "SELECT * FROM crypto.candles_1m(symbol = 'btcusdt')",
    "table alias named like a crypto table over system": "SELECT * FROM system.one AS market_tickers",
    "crypto as a CTE name over system": "WITH crypto AS (SELECT * FROM system.one) SELECT * FROM crypto",
    "CTE shadowing a crypto table": "WITH market_tickers AS (SELECT * FROM system.one) SELECT * FROM market_tickers",
    "INSERT": "INSERT INTO crypto.market_tickers (message_id) VALUES ('x')",
    "INSERT SELECT": "INSERT INTO crypto.market_tickers (message_id) SELECT 'x'",
    "DROP": "DROP TABLE crypto.market_tickers",
    "ALTER": "ALTER TABLE crypto.market_tickers DELETE WHERE 1",
    "SYSTEM": "SYSTEM SHUTDOWN",
    "SHOW": "SHOW TABLES FROM system",
    "DESCRIBE": "DESCRIBE TABLE system.users",
    "EXPLAIN": "EXPLAIN SELECT 1",
    "SET": "SET readonly = 0",
    "sleep": "SELECT sleep(3)",
    "hostName": "SELECT hostName()",
}


@pytest.mark.parametrize("query", REFUSED.values(), ids=REFUSED.keys())
def test_each_refused_form_is_refused_before_it_runs(analytics, query):
    with pytest.raises(sql.QueryRefused) as refused:
        sql.run_read_only(analytics, query)
    assert "\n" not in str(refused.value) and str(refused.value)


MALFORMED = {
    "two statements": "SELECT 1; SELECT 2",
    "a statement hidden after a semicolon": f"SELECT 1; SELECT file('{SECRET}')",
    "unterminated comment": "SELECT 1 /* x",
    "unterminated literal": "SELECT 'x",
    "not SQL": "SELECT FROM WHERE",
    "empty": "  ",
    "only a comment": "-- nothing",
}


@pytest.mark.parametrize("query", MALFORMED.values(), ids=MALFORMED.keys())
def test_what_clickhouse_cannot_parse_as_one_statement_is_malformed(analytics, query):
    with pytest.raises(sql.QueryMalformed) as malformed:
        sql.run_read_only(analytics, query)
    assert "\n" not in str(malformed.value)


def test_a_query_nested_deeper_than_the_check_walks_is_refused_not_a_crash(analytics):
    with pytest.raises(sql.QueryRefused, match="nested too deeply"):
        sql.run_read_only(analytics, "SELECT " + "-(" * 400 + "1" + ")" * 400)
    with pytest.raises(sql.QueryMalformed, match="nested too deeply"):
        sql.run_read_only(analytics, "SELECT " + "tuple(" * 200 + "1" + ")" * 200)


ACCEPTED = [
    "SELECT count() FROM crypto.market_tickers",
    "SELECT count() FROM market_tickers",  # unqualified: the current database is crypto
    "WITH t AS (SELECT symbol FROM crypto.price_seconds) SELECT count() FROM t",
    "SELECT symbol FROM crypto.market_tickers UNION ALL SELECT symbol FROM crypto.price_seconds",
    "SELECT sumIf(number, number > 2), countDistinct(number), quantileExactIf(0.5)(number, 1) FROM numbers(10)",
    "SELECT arrayMap(x -> x * 2, [1, 2]), CASE WHEN 1 THEN 'a' END, toStartOfInterval(now(), INTERVAL 5 MINUTE)",
    "SELECT m.symbol FROM crypto.market_tickers AS m WHERE m.symbol IN (SELECT symbol FROM crypto.price_seconds)",
    "SELECT 'SELECT file(''x'') FROM system.users SETTINGS readonly=0'",  # only a string
    "SELECT number FROM numbers(3) ORDER BY number -- a note; not a statement",
]


@pytest.mark.parametrize("query", ACCEPTED)
def test_analysts_queries_over_crypto_are_accepted_and_run(analytics, query):
    sql.run_read_only(analytics, query)


def test_nothing_was_written_by_the_refused_forms(engine):
    plain, _ = engine
    assert plain.query("SELECT count() FROM crypto.market_tickers").result_rows == [(0,)]
    assert plain.query("SELECT count() FROM system.tables WHERE database = 'crypto'").result_rows[0][0] >= 3


@pytest.mark.parametrize(
    ("limits", "query", "error"),
    [
        (sql.SqlLimits(max_result_rows=10), "SELECT number FROM numbers(1000)", "TOO_MANY_ROWS_OR_BYTES"),
        (  # checked per block of rows (constant columns count little), so the answer spans several blocks
            sql.SqlLimits(max_result_bytes=100_000, max_result_rows=10**9),
            "SELECT repeat(toString(number), 10) FROM numbers(1000000)",
            "TOO_MANY_ROWS_OR_BYTES",
        ),
        (sql.SqlLimits(max_rows_to_read=1000), "SELECT count() FROM numbers(1000000)", "TOO_MANY_ROWS"),
        (
            sql.SqlLimits(max_memory_bytes=20_000_000),
            "SELECT length(groupArray(number)) FROM numbers(50000000)",
            "MEMORY_LIMIT_EXCEEDED",
        ),
        (
            sql.SqlLimits(max_execution_s=1, max_rows_to_read=10**15),
            "SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) = 0",
            "TIMEOUT_EXCEEDED",
        ),
    ],
    ids=["result rows", "result bytes", "rows read", "memory", "execution time"],
)
def test_a_query_over_a_limit_is_stopped_with_the_limit_named(analytics, limits, query, error):
    with pytest.raises(clickhouse_connect.driver.exceptions.DatabaseError, match=error):
        sql.run_read_only(analytics, query, limits)


def test_every_allowed_function_is_a_function_of_the_engine(engine):
    plain, _ = engine
    names = {row[0] for row in plain.query("SELECT name FROM system.functions").result_rows}
    assert sql_functions.ALLOWED - sql_functions.SYNTAX - sql_functions.TABLE_FUNCTIONS <= names
    assert sql_functions.TABLE_FUNCTIONS <= {
        row[0] for row in plain.query("SELECT name FROM system.table_functions").result_rows
    }


def test_no_allowed_function_is_a_table_function_or_reads_outside(engine):
    plain, _ = engine
    table_functions = {row[0].lower() for row in plain.query("SELECT name FROM system.table_functions").result_rows}
    allowed = {name.lower() for name in sql_functions.ALLOWED - sql_functions.TABLE_FUNCTIONS}
    assert allowed & table_functions == set()
    forbidden = {"file", "url", "s3", "hdfs", "remote", "cluster", "mysql", "postgresql", "jdbc", "executable",
                 "input", "dictget", "joinget", "getsetting", "hostname", "currentuser", "sleep", "catboostevaluate",
                 "hascolumnintable", "__getscalar", "filesystemavailable", "getmacro", "globalvariable"}
    assert allowed & forbidden == set()


def test_no_other_function_of_the_engine_is_reachable_through_an_allowed_name(engine):
    # Names are compared case-insensitively and aggregates take combinators: whatever the engine has under a
    # name the check accepts must be an allowed function, an alias of one, or a combination of one.
    plain, _ = engine
    rows = plain.query("SELECT name, alias_to FROM system.functions").result_rows
    allowed = {name.lower() for name in sql_functions.ALLOWED}
    reachable = [
        (name, alias_to)
        for name, alias_to in rows
        if sql.function_allowed(name) and name.lower() not in allowed and alias_to.lower() not in allowed
    ]
    assert reachable == []


def test_readonly_is_sent_only_to_a_session_that_is_not_read_only_already(analytics):
    # chDB sessions are not read-only: every query carries readonly=1. Compose's analytics profile is
    # readonly=2, where changing readonly is refused, so the limits go without it.
    assert sql.query_settings(analytics, sql.SqlLimits())["readonly"] == 1
    assert "readonly" not in sql.SqlLimits().settings(readonly=False)
    assert sql.SqlLimits(max_threads=1).settings(readonly=False)["max_threads"] == 1
