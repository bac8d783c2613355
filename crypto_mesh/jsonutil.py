"""The one JSON codec of the project: orjson, with ``Decimal`` written as a plain decimal string.

Money and prices never pass through float: ``Decimal("61837.63")`` is written as ``"61837.63"`` (never in
exponent form), and readers parse such strings with ``Decimal``.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def decimal_str(value: Decimal) -> str:
    """``value`` in positional notation (``Decimal("1E-8")`` → ``"0.00000001"``)."""
    return format(value, "f")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Encode ``value`` as UTF-8 JSON bytes; ``Decimal`` becomes a decimal string, datetimes RFC 3339."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_UTC_Z)


def dumps_str(value: Any) -> str:
    """Like :func:`dumps`, as ``str``."""
    return dumps(value).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON; raises :class:`JSONDecodeError` (a ``ValueError``) on malformed input."""
    return orjson.loads(data)


def loads_object(
    data: bytes | bytearray | memoryview | str, error: Callable[[str], Exception], what: str
) -> dict[str, Any]:
    """Decode JSON that must be an object, e.g. ``loads_object(raw, MalformedFrame, "frame")``.

    Raises ``error(f"{what} is not JSON: <reason>")`` on malformed input and ``error(f"{what} is not a JSON
    object")`` for any other JSON value: each reader's own error, with one wording everywhere.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise error(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise error(f"{what} is not a JSON object")
    return value


def fragment(value: Any) -> orjson.Fragment:
    """``value`` encoded once as JSON, written as is wherever the fragment appears in a value given to
    :func:`dumps`: for a part that many messages share, or that one message repeats many times.

    Kept as a copy of exactly its size: the bytes :func:`dumps` returns hold on to orjson's whole output
    buffer (4 KiB however short the JSON), which is fine for a message sent and dropped but not for one kept.
    """
    return orjson.Fragment(exact_copy(dumps(value)))


def exact_copy(encoded: bytes) -> bytes:
    """``encoded`` (a result of :func:`dumps`) copied into bytes of exactly its length, to be kept for long
    (see :func:`fragment`)."""
    return bytes(memoryview(encoded))
