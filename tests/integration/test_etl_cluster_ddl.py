"""Every statement of the migrations' cluster form (``ETL_CLICKHOUSE_CLUSTER``) is one ClickHouse parses:
chDB's parser (the server's) reads each with ``formatQuery`` and gives back the same statement kind, target
and ``ON CLUSTER``. Running them needs a cluster with ClickHouse Keeper (compose profile ``cluster``)."""

import clickhouse_connect

from etl.migrate import CLUSTER_LEDGER_DDL, cluster_statements, load_migrations

CLUSTER = "crypto_cluster"


def test_clickhouse_parses_every_cluster_statement(clickhouse_url):
    statements = [statement.format(cluster=CLUSTER) for statement in CLUSTER_LEDGER_DDL]
    statements += [s for group in cluster_statements(load_migrations(), CLUSTER) for s in group]
    client = clickhouse_connect.get_client(dsn=clickhouse_url)
    try:
        for statement in statements:
            formatted = client.query("SELECT formatQuerySingleLine({s:String})", parameters={"s": statement})
            [[text]] = formatted.result_rows
            head = " ".join(statement.split()[:6])
            assert text.startswith(head.split(" ON CLUSTER")[0]), (statement, text)
            assert f"ON CLUSTER {CLUSTER}" in text, text
    finally:
        client.close()
