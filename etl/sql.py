"""Analysts' SQL: checking it on ClickHouse's own parse, running it within limits, and formatting results.

Shared by ``POST /v1/sql`` (etl/app.py) and the ``crypto-mesh sql`` command. A query runs only if
:func:`check_query` accepts the syntax tree that ClickHouse itself parses from it: ``parseQueryToJSON``
(ClickHouse 26.8+, "Other functions" of the reference), called on the same client and engine that will run
the query (chDB in embedded mode, the server with ``MESH_CLICKHOUSE_URL`` or in compose), with the query
passed as a bound string literal, so parsing executes nothing. Accepted:

- one ``SELECT`` (``WITH``, ``UNION``/``INTERSECT``/``EXCEPT``, subqueries, joins, window functions, lambdas),
  without ``SETTINGS``, ``FORMAT``, ``INTO OUTFILE`` or query parameters (``{name:Type}``);
- tables only of the ``crypto`` database: ``crypto.<table>``, or an unqualified name, which resolves to a
  ``WITH`` name or to ``crypto.<table>`` because the client's current database is ``crypto``
  (:func:`analytics_client`); no identifier names another database (``system``, ``default``,
  ``information_schema``), and no table function but ``numbers``;
- functions only of the allow-list :mod:`etl.sql_functions` (aggregates also with combinators).

Every node type and every key of a node that is not listed here is refused, so what a newer ClickHouse adds
is refused until it is reviewed. The accepted text is then run as it was checked, on the same client, with
the limits of :class:`SqlLimits` (``readonly=1``, time, memory, rows and bytes read and returned, threads).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from crypto_mesh import jsonutil
from etl import sql_functions

#: The database analysts read; the analytics client's current database.
ANALYTICS_DATABASE = "crypto"
#: Databases other than ``crypto`` that exist in chDB and in a server (compared case-insensitively): an
#: identifier starting with one of them (``x IN system.users``) is refused.
OTHER_DATABASES = frozenset({"system", "default", "information_schema", "_temporary_and_external_tables"})

#: Node types (``"type"`` of ``parseQueryToJSON``) an accepted query may hold, each with the keys it may
#: carry. ``Function``, ``TableIdentifier`` and ``Identifier`` are also checked by name.
ALLOWED_NODES: dict[str, frozenset[str]] = {
    "SelectWithUnionQuery": frozenset(
        {"union_mode", "list_of_modes", "list_of_selects", "is_outfile_append", "is_outfile_truncate",
         "is_into_outfile_with_stdout"}
    ),
    "SelectIntersectExceptQuery": frozenset({"children", "final_operator"}),
    "SelectQuery": frozenset(
        {"with", "select", "tables", "prewhere", "where", "group_by", "having", "window", "qualify", "order_by",
         "limit_by_offset", "limit_by_length", "limit_by", "limit_offset", "limit_length", "interpolate",
         "distinct", "group_by_with_totals", "group_by_with_rollup", "group_by_with_cube",
         "group_by_with_grouping_sets", "group_by_all", "order_by_all", "limit_with_ties", "limit_by_all",
         "distinct_on"}
    ),
    "ExpressionList": frozenset({"children"}),
    "Subquery": frozenset({"children", "alias", "cte_name"}),
    "WithElement": frozenset({"name", "subquery", "aliases", "is_materialized"}),
    "TablesInSelectQuery": frozenset({"children"}),
    "TablesInSelectQueryElement": frozenset({"table_expression", "table_join", "array_join"}),
    "TableExpression": frozenset(
        {"database_and_table_name", "table_function", "subquery", "final", "sample_size", "sample_offset"}
    ),
    "TableJoin": frozenset({"locality", "strictness", "kind", "on_expression", "using_expression_list"}),
    "ArrayJoin": frozenset({"kind", "expression_list"}),
    "SampleRatio": frozenset({"ratio"}),
    "Literal": frozenset({"value", "alias", "custom_type"}),
    "Function": frozenset(
        {"name", "arguments", "parameters", "alias", "window_name", "window_definition", "is_operator",
         "is_lambda_function", "kind", "nulls_action", "is_compound_name", "is_window_function",
         "compute_after_window_functions"}
    ),
    "Identifier": frozenset({"name", "name_parts", "alias"}),
    "TableIdentifier": frozenset({"name", "name_parts", "alias"}),
    "Asterisk": frozenset({"transformers"}),
    "QualifiedAsterisk": frozenset({"qualifier", "transformers"}),
    "ColumnsRegexpMatcher": frozenset({"pattern", "transformers"}),
    "ColumnsListMatcher": frozenset({"column_list", "transformers"}),
    "QualifiedColumnsRegexpMatcher": frozenset({"qualifier", "pattern", "transformers"}),
    "QualifiedColumnsListMatcher": frozenset({"qualifier", "column_list", "transformers"}),
    "ColumnsTransformerList": frozenset({"children"}),
    "ColumnsExceptTransformer": frozenset({"children", "is_strict", "pattern"}),
    "ColumnsReplaceTransformer": frozenset({"children", "is_strict"}),
    "ColumnsReplaceTransformerReplacement": frozenset({"name", "children"}),
    "OrderByElement": frozenset(
        {"direction", "nulls_direction", "nulls_direction_was_explicitly_specified", "with_fill", "collation",
         "fill_from", "fill_to", "fill_step", "fill_staleness", "children", "expression"}
    ),
    "InterpolateElement": frozenset({"column", "expr"}),
    "WindowDefinition": frozenset(
        {"parent_window_name", "partition_by", "order_by", "frame_is_default", "frame_type", "frame_begin_type",
         "frame_begin_offset", "frame_begin_preceding", "frame_end_type", "frame_end_offset",
         "frame_end_preceding"}
    ),
    "WindowListElement": frozenset({"name", "definition"}),
}

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
_ALLOWED_LOWER = {name.lower() for name in sql_functions.ALLOWED}
_AGGREGATE_LOWER = {name.lower() for name in sql_functions.AGGREGATE}
_COMBINATORS_LOWER = tuple(combinator.lower() for combinator in sql_functions.AGGREGATE_COMBINATORS)


class QueryRejected(ValueError):
    """A query that is not run; see its two kinds below. The message is one line."""


class QueryMalformed(QueryRejected):
    """ClickHouse cannot parse the query (answered 400 by ``POST /v1/sql``)."""


class QueryRefused(QueryRejected):
    """The query parses but is not one SELECT over ``crypto`` with allowed functions (answered 403)."""


class QueryResult(NamedTuple):
    """Result of a query: column names, ClickHouse type names (``"Decimal(38, 18)"``), rows of Python
    values. A tuple, so ``columns, types, rows = result`` works."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class SqlLimits:
    """Limits of one analytics query (ClickHouse settings; "Restrictions on Query Complexity" of the
    ClickHouse reference). Going over any of them stops the query with an error naming the limit.

    - ``max_execution_s``: ``max_execution_time`` (s).
    - ``max_memory_bytes``: ``max_memory_usage`` of the query (bytes).
    - ``max_result_rows`` / ``max_result_bytes``: size of the answer (``result_overflow_mode=throw``, so an
      answer is never silently cut).
    - ``max_rows_to_read``: rows read from tables and ``numbers()`` (``read_overflow_mode=throw``).
    - ``max_threads``: threads of the query, so that one query cannot take every core from ingestion.

    The ETL's defaults are its settings ``ETL_SQL_*`` (etl/settings.py); compose's ``analytics`` profile
    holds the same values (``crypto-mesh secrets``).
    """

    max_execution_s: int = 30
    max_memory_bytes: int = 1_000_000_000
    max_result_rows: int = 10_000
    max_result_bytes: int = 32 * 1024 * 1024
    max_rows_to_read: int = 2_000_000_000
    max_threads: int = 2

    def settings(self, readonly: bool = True) -> dict[str, Any]:
        """The ClickHouse settings of a query under these limits, with ``readonly=1`` unless ``readonly`` is
        false (a session already read-only, whose ``readonly`` cannot be changed: compose's ``analytics``
        profile has ``readonly=2``, which lets the client send these limits within its constraints)."""
        return {
            **({"readonly": 1} if readonly else {}),
            "max_execution_time": self.max_execution_s,
            "timeout_overflow_mode": "throw",
            "max_memory_usage": self.max_memory_bytes,
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
            "result_overflow_mode": "throw",
            "max_rows_to_read": self.max_rows_to_read,
            "read_overflow_mode": "throw",
            "max_threads": self.max_threads,
        }


def function_allowed(name: str) -> bool:
    """Whether a function of this name (as written, any case) may be called: listed in
    :mod:`etl.sql_functions`, or an allowed aggregate function followed by combinators (``sumIf``,
    ``uniqExactIfOrNull``)."""
    return name.lower() in _ALLOWED_LOWER or _aggregate_with_combinators(name.lower())


def _aggregate_with_combinators(lower: str) -> bool:
    if lower in _AGGREGATE_LOWER:
        return True
    return any(
        lower.endswith(suffix) and len(lower) > len(suffix) and _aggregate_with_combinators(lower[: -len(suffix)])
        for suffix in _COMBINATORS_LOWER
    )


def check_tree(tree: dict[str, Any]) -> None:
    """Accept the ``parseQueryToJSON`` tree of one SELECT over ``crypto`` calling allowed functions (module
    docstring). Raises :class:`QueryRefused` naming the first construct that is not allowed."""
    if not isinstance(tree, dict) or tree.get("type") != "SelectWithUnionQuery":
        kind = str(tree.get("type", "?")) if isinstance(tree, dict) else "?"
        raise QueryRefused(f"only SELECT queries are allowed, not {kind.removesuffix('Query')}")
    _check_node(tree)


def _check_node(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _check_node(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind is None:  # a value, e.g. a literal's {"field_type", "value"}
        for value in node.values():
            _check_node(value)
        return
    if kind == "SetQuery" or (kind == "SelectQuery" and "settings" in node):
        raise QueryRefused("SETTINGS clauses are not allowed")
    if kind == "QueryParameter":
        raise QueryRefused("query parameters ({name:Type}) are not allowed")
    if kind == "SelectWithUnionQuery":
        if "out_file" in node or any(node.get(flag) for flag in ("is_outfile_append", "is_outfile_truncate",
                                                                   "is_into_outfile_with_stdout")):
            raise QueryRefused("INTO OUTFILE is not allowed")
        if "format_ast" in node:
            raise QueryRefused("FORMAT clauses are not allowed (crypto-mesh sql has --format)")
        if "settings_ast" in node:
            raise QueryRefused("SETTINGS clauses are not allowed")
    allowed_keys = ALLOWED_NODES.get(kind) if isinstance(kind, str) else None
    if allowed_keys is None:
        raise QueryRefused(f"{kind} is not allowed in an analytics query")
    unknown = sorted(set(node) - allowed_keys - {"type"})
    if unknown:
        raise QueryRefused(f"{kind} with {', '.join(unknown)} is not allowed in an analytics query")
    if kind == "Function":
        name = node.get("name")
        if not isinstance(name, str) or not function_allowed(name):
            raise QueryRefused(f"function {name} is not allowed (docs/ANALYTICS.md lists the allowed ones)")
    elif kind == "TableIdentifier":
        parts = node.get("name_parts") or [node.get("name")]
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != ANALYTICS_DATABASE):
            raise QueryRefused(
                f"table {node.get('name')} is not allowed: only tables of the {ANALYTICS_DATABASE} database"
            )
    elif kind == "Identifier":
        parts = node.get("name_parts") or [node.get("name")]
        if len(parts) > 1 and str(parts[0]).lower() in OTHER_DATABASES:
            raise QueryRefused(
                f"{node.get('name')} is not allowed: only tables of the {ANALYTICS_DATABASE} database"
            )
    for key, value in node.items():
        if key != "type":
            _check_node(value)


def check_query(client: Client, query: str, limits: SqlLimits | None = None) -> None:
    """Have ClickHouse parse ``query`` (``parseQueryToJSON`` on ``client``, with the query as a bound
    literal: nothing of it is executed) and accept it only as one SELECT over ``crypto`` with allowed
    functions (module docstring).

    Raises :class:`QueryMalformed` if ClickHouse cannot parse it (or it holds several statements),
    :class:`QueryRefused` for a query that parses but is not allowed, and
    ``clickhouse_connect.driver.exceptions.OperationalError`` if ClickHouse cannot be reached.
    """
    if not query.strip():
        raise QueryMalformed("the query is empty")
    try:
        parsed = client.query(
            "SELECT parseQueryToJSON({query:String})",
            parameters={"query": query},
            settings=query_settings(client, limits or SqlLimits()),
        )
    except OperationalError:
        raise
    except DatabaseError as exc:
        message = one_line(str(exc)).split(": In scope SELECT parseQueryToJSON", 1)[0]
        if "(BAD_ARGUMENTS)" in str(exc):  # a statement without a JSON form: DESCRIBE, INSERT ... VALUES
            raise QueryRefused(f"only SELECT queries are allowed ({message})") from None
        raise QueryMalformed(f"the query does not parse: {message}") from None
    try:
        check_tree(json.loads(parsed.result_rows[0][0]))
    except RecursionError:  # ClickHouse parses up to max_parser_depth (1000) levels; Python walks fewer
        raise QueryRefused("the query is nested too deeply") from None


def query_settings(client: Client, limits: SqlLimits) -> dict[str, Any]:
    """:meth:`SqlLimits.settings` for ``client``'s session: ``readonly=1`` is added only if the session is
    not read-only already (chDB, or a user without a read-only profile)."""
    readonly = client.server_settings.get("readonly")
    return limits.settings(readonly=readonly is None or readonly.value == "0")


def one_line(message: str) -> str:
    """``message`` on one line (ClickHouse's messages may span several)."""
    return " ".join(message.split())


def analytics_client(url: str) -> Client:
    """A clickhouse-connect client for analysts' queries on ``url`` (``chdb:///dir`` or
    ``http://analytics:pass@host:8123``) whose current database is ``crypto``, so that an unqualified table
    name resolves there. Values of ``DateTime64(3, 'UTC')`` come back aware. Raises clickhouse-connect's
    errors or ``OSError`` if ClickHouse cannot be reached."""
    return clickhouse_connect.get_client(dsn=url, tz_mode="aware", database=ANALYTICS_DATABASE)


def run_read_only(client: Client, query: str, limits: SqlLimits | None = None) -> QueryResult:
    """Check ``query`` with :func:`check_query`, then run that same text on ``client`` within ``limits``.

    ``client`` must be an :func:`analytics_client` (current database ``crypto``); the text executed is the
    text checked (clickhouse-connect only drops trailing semicolons and appends ``FORMAT Native``). Blocking: the ETL
    calls it on its analytics thread. Raises :class:`QueryMalformed` / :class:`QueryRefused`; a query over
    a limit and any other ClickHouse error raise ``clickhouse_connect.driver.exceptions.DatabaseError`` with
    the server's message (``TIMEOUT_EXCEEDED``, ``TOO_MANY_ROWS_OR_BYTES``, ``MEMORY_LIMIT_EXCEEDED``).
    """
    if client.database != ANALYTICS_DATABASE:
        raise ValueError(f"analytics queries need a client on database {ANALYTICS_DATABASE}")
    limits = limits or SqlLimits()
    check_query(client, query, limits)
    try:
        result = client.query(query, settings=query_settings(client, limits))
    except RecursionError:  # clickhouse-connect decodes nested types recursively
        raise QueryMalformed("the result is nested too deeply to be decoded") from None
    return QueryResult(
        columns=list(result.column_names),
        types=[column_type.name for column_type in result.column_types],
        rows=[list(row) for row in result.result_rows],
    )


def json_value(value: Any) -> Any:
    """``value`` made encodable by :func:`crypto_mesh.jsonutil.dumps` without losing digits.

    Decimals stay ``Decimal`` (written as decimal strings); datetimes become aware (a naive one is UTC) and
    are written RFC 3339; integers beyond 64 bits (Int128, UInt256) become strings, since JSON readers parse
    numbers as doubles or 64-bit integers; UUIDs and IP addresses become strings; bytes become UTF-8 text
    (invalid bytes replaced); tuples become lists and map keys strings.
    """
    if value is None or isinstance(value, (bool, str, float, Decimal, date, time)):
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (UUID, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    return str(value)


def result_json(result: QueryResult) -> bytes:
    """The ``POST /v1/sql`` answer: ``{"columns": [...], "types": [...], "rows": [[...]]}`` as JSON bytes."""
    return jsonutil.dumps(
        {"columns": result.columns, "types": result.types, "rows": [json_value(row) for row in result.rows]}
    )


def cell_text(value: Any) -> str:
    """Text of one value for a terminal or CSV: ``NULL`` for None, decimals positional, datetimes RFC 3339,
    lists and maps as JSON, anything else ``str``."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return jsonutil.decimal_str(value)
    if isinstance(value, (date, time)):
        return jsonutil.dumps_str(json_value(value))[1:-1]  # orjson's RFC 3339 text, without the quotes
    if isinstance(value, (list, tuple, dict)):
        return jsonutil.dumps_str(json_value(value))
    return str(json_value(value))


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table for a terminal: a header, a rule, one line per row, then ``(n rows)``.

    Columns are padded to their widest cell; cells are rendered by :func:`cell_text`, so rows may hold Python
    values or the JSON values of a ``POST /v1/sql`` answer.
    """
    header = [str(column) for column in columns]
    body = [[cell_text(value) for value in row] for row in rows]
    widths = [len(name) for name in header]
    for row in body:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = [
        " | ".join(name.ljust(width) for name, width in zip(header, widths, strict=True)).rstrip(),
        "-+-".join("-" * width for width in widths),
    ]
    lines += [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in body
    ]
    lines.append(f"({len(body)} row{'' if len(body) == 1 else 's'})")
    return "\n".join(lines) + "\n"


def format_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """RFC 4180 CSV: a header line, then one line per row (cells by :func:`cell_text`, NULL as empty)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow("" if value is None else cell_text(value) for value in row)
    return out.getvalue()


def format_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A JSON array with one object per row mapping column name → value (decimals as strings, datetimes
    RFC 3339), e.g. ``[{"symbol":"btcusdt","records":42}]``.

    With two columns of one name, the later one wins: alias them in the query.
    """
    return jsonutil.dumps_str(
        [{column: json_value(value) for column, value in zip(columns, row, strict=True)} for row in rows]
    )
