"""Read-only SQL of analysts: checking, running on ClickHouse, and formatting results.

Shared by ``POST /v1/sql`` (etl/app.py) and the ``crypto-mesh sql`` command. Two layers keep a query
read-only: :func:`check_read_only` refuses anything but one SELECT/WITH/SHOW/DESCRIBE/DESC/EXPLAIN
statement (and ``INTO OUTFILE``, which ClickHouse executes even in readonly mode), and :func:`run_read_only`
runs it with the ClickHouse setting ``readonly=1``, which makes the server refuse writes, DDL, table
functions and setting changes.

The lexical rules (comments ``--``, ``# ``, ``#!``, nested ``/* */``; literals ``'...'`` with ``\\``
escapes and ``''``, identifiers ``"..."`` and `` `...` ``, heredocs ``$tag$...$tag$``) are ClickHouse's
("Syntax" page of the ClickHouse SQL reference).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

from clickhouse_connect.driver.client import Client

from crypto_mesh import jsonutil

#: First keywords of the statements analysts may run.
READ_ONLY_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})

_HEREDOC_TAG = re.compile(r"\$([A-Za-z0-9_]*)\$")
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")
_TRAILING = re.compile(r"[\s;]+$")
_INTO_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


class QueryRefused(ValueError):
    """A query that is not a single read-only statement (answered 403 by ``POST /v1/sql``)."""


class QueryResult(NamedTuple):
    """Result of a query: column names, ClickHouse type names (``"Decimal(38, 18)"``), rows of Python
    values. A tuple, so ``columns, types, rows = result`` works."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


def _lex(query: str) -> tuple[str, str]:
    """``query`` without comments, and its skeleton: the same with the inside of literals blanked.

    Raises :class:`QueryRefused` for an unterminated literal or comment.
    """
    text: list[str] = []
    skeleton: list[str] = []
    i, n = 0, len(query)
    while i < n:
        char = query[i]
        pair = query[i : i + 2]
        if pair in ("--", "# ", "#!"):
            end = query.find("\n", i)
            i = n if end < 0 else end
            text.append(" ")
            skeleton.append(" ")
        elif pair == "/*":
            depth, i = 1, i + 2
            while depth:
                if i >= n:
                    raise QueryRefused("unterminated /* comment")
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            text.append(" ")
            skeleton.append(" ")
        elif char in "'\"`":
            end = _quoted_end(query, i)
            text.append(query[i:end])
            skeleton.append(char * 2)
            i = end
        elif char == "$" and (tag := _HEREDOC_TAG.match(query, i)):
            close = query.find(tag.group(0), tag.end())
            if close < 0:
                raise QueryRefused("unterminated heredoc literal")
            end = close + len(tag.group(0))
            text.append(query[i:end])
            skeleton.append("''")
            i = end
        else:
            text.append(char)
            skeleton.append(char)
            i += 1
    return "".join(text), "".join(skeleton)


def _quoted_end(query: str, start: int) -> int:
    """Index just after the literal or quoted identifier opening at ``start`` (backslash escapes; a doubled
    quote is two adjacent literals to this scan, which gives the same extent)."""
    quote, i = query[start], start + 1
    while i < len(query):
        if query[i] == "\\":
            i += 2
        elif query[i] == quote:
            return i + 1
        else:
            i += 1
    raise QueryRefused(f"unterminated {quote} literal")


def check_read_only(query: str) -> str:
    """Return ``query`` ready to run (comments and trailing ``;`` removed) if it is one read-only statement.

    Raises :class:`QueryRefused` (a ``ValueError``) if it is empty, holds more than one statement, does not
    start with SELECT, WITH, SHOW, DESCRIBE, DESC or EXPLAIN (after comments and opening parentheses), uses
    ``INTO OUTFILE``, or has an unterminated literal or comment.
    """
    text, skeleton = _lex(query)
    text, skeleton = _TRAILING.sub("", text).lstrip(), _TRAILING.sub("", skeleton).lstrip()
    if not skeleton:
        raise QueryRefused("the query is empty")
    if ";" in skeleton:
        raise QueryRefused("only one statement is allowed")
    first = _FIRST_WORD.match(skeleton)
    keyword = first.group(1).upper() if first else ""
    if keyword not in READ_ONLY_KEYWORDS:
        raise QueryRefused(f"only {', '.join(sorted(READ_ONLY_KEYWORDS))} statements are allowed")
    if _INTO_OUTFILE.search(skeleton):
        raise QueryRefused("INTO OUTFILE is not allowed")
    return text


#: Defaults of the limits of :func:`run_read_only` (the ETL passes ``ETL_SQL_MAX_ROWS`` and
#: ``ETL_SQL_MAX_EXECUTION_S``).
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_EXECUTION_S = 30


def run_read_only(
    client: Client,
    query: str,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_execution_s: int = DEFAULT_MAX_EXECUTION_S,
) -> QueryResult:
    """Check ``query`` with :func:`check_read_only`, then run it with ``readonly=1`` and the given limits.

    Blocking (clickhouse-connect): the ETL calls it on its ClickHouse thread. Raises :class:`QueryRefused`
    for a query that is not one read-only statement; a result of more than ``max_rows`` rows, a run longer
    than ``max_execution_s`` seconds and any other ClickHouse error raise
    ``clickhouse_connect.driver.exceptions.DatabaseError`` with the server's message.
    """
    result = client.query(
        check_read_only(query),
        settings={
            "readonly": 1,
            "max_result_rows": max_rows,
            "result_overflow_mode": "throw",
            "max_execution_time": max_execution_s,
        },
    )
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
