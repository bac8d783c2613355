"""Validation shared by the decoders of Kafka records (:mod:`etl.tickers`, :mod:`etl.seconds`), and the shape
of a loaded table (:class:`TableSpec`).

A decoder turns one record value into a tuple of column values that ClickHouse parses exactly: decimals stay
decimal *strings* (ClickHouse reads them into ``Decimal(38, s)`` without rounding, so no ``Decimal`` object is
built per value), times stay Unix milliseconds (``int``), ids and symbols are canonical strings. The common
forms are checked with one regular expression each; any other form is handed to the project's one parser
(:func:`crypto_mesh.decimals.parse_decimal`, :func:`uuid.UUID`) and rewritten canonically, so the fast path
accepts nothing the reference parsers would refuse.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context, Decimal

import pyarrow as pa
import pyarrow.compute as pc

from crypto_mesh import jsonutil
from crypto_mesh.binance import SYMBOL_PATTERN
from crypto_mesh.decimals import DecimalFieldError, parse_decimal

#: DateTime64 holds years 1900 to 2299; times before the epoch are not market data.
MAX_TIME_MS = (
    int((datetime(2299, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1000
)
MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_QUANTIZE = Context(prec=80)
_decimal_patterns: dict[tuple[int, bool], re.Pattern[str]] = {}


class InvalidRecord(ValueError):
    """A Kafka record that is not valid for its topic; the message says which field and why (it becomes the
    ``reason`` of the dead-letter record)."""


@dataclass(frozen=True, slots=True)
class JsonField:
    """Where one column of a loaded table comes from in the record JSON, for the columnar decoder
    (:mod:`etl.columnar`).

    ``key``: the JSON member; ``json_type``: how Arrow's JSON reader parses it (``string``, ``int64`` or
    ``uint64``; any other JSON type makes the reader fail, and the records go to the per-record decoder);
    ``arrow_type``: the column's type in the inserted table (``timestamp[ms, UTC]`` → ``DateTime64(3,
    'UTC')``, ``decimal128(38, s)`` → ``Decimal(38, s)``); ``accepts``: parsed values → a boolean array (pyarrow.compute) that
    is true only where the per-record decoder would take the value as it is (null where the member is
    missing or ``null``); ``default``: for an optional member, the value a missing or ``null`` one reads as
    (``None``: the member is required). Build them with :func:`uuid_field`, :func:`symbol_field`,
    :func:`time_field`, :func:`decimal_field`, :func:`int_field`, :func:`text_field` and :func:`flag_field`.
    """

    key: str
    json_type: pa.DataType
    arrow_type: pa.DataType
    accepts: Callable[[pa.ChunkedArray], pa.ChunkedArray]
    default: object = None


def _full_match(regex: str) -> Callable[[pa.ChunkedArray], pa.ChunkedArray]:
    anchored = f"^(?:{regex})$"  # RE2: "$" is the end of the text, as for re.fullmatch
    return lambda values: pc.match_substring_regex(values, anchored)


def _between(minimum: int, maximum: int) -> Callable[[pa.ChunkedArray], pa.ChunkedArray]:
    def accepts(values: pa.ChunkedArray) -> pa.ChunkedArray:
        low, high = pa.scalar(minimum, values.type), pa.scalar(maximum, values.type)
        return pc.and_(pc.greater_equal(values, low), pc.less_equal(values, high))

    return accepts


def uuid_field(key: str) -> JsonField:
    """A canonical (lowercase, hyphenated) UUID string, as :func:`message_id` takes it unchanged."""
    return JsonField(key, pa.string(), pa.string(), _full_match(_UUID.pattern))


def symbol_field(key: str) -> JsonField:
    """A normalised symbol, as :func:`symbol` takes it unchanged."""
    return JsonField(key, pa.string(), pa.string(), _full_match(SYMBOL_PATTERN.pattern))


def time_field(key: str, whole_second: bool = False) -> JsonField:
    """Unix milliseconds between 1970 and 2299 (:func:`time_ms`); with ``whole_second``, a multiple of 1000."""
    in_range = _between(0, MAX_TIME_MS)
    if not whole_second:
        return JsonField(key, pa.int64(), pa.timestamp("ms", tz="UTC"), in_range)

    def accepts(values: pa.ChunkedArray) -> pa.ChunkedArray:
        return pc.and_(in_range(values), pc.equal(pc.multiply(pc.divide(values, 1000), 1000), values))

    return JsonField(key, pa.int64(), pa.timestamp("ms", tz="UTC"), accepts)


def decimal_field(key: str, scale: int, nonnegative: bool = False) -> JsonField:
    """A plain decimal string that fits ``Decimal(38, scale)``, as :func:`decimal_text` takes it unchanged."""
    return JsonField(
        key, pa.string(), pa.decimal128(38, scale), _full_match(decimal_regex(scale, nonnegative))
    )


def int_field(key: str, minimum: int, maximum: int, arrow_type: pa.DataType) -> JsonField:
    """A JSON integer in ``[minimum, maximum]`` (:func:`integer`), stored as ``arrow_type``."""
    json_type = pa.uint64() if maximum > 2**63 - 1 else pa.int64()
    return JsonField(key, json_type, arrow_type, _between(minimum, maximum))


def flag_field(key: str) -> JsonField:
    """An optional JSON boolean, ``false`` when missing or ``null`` (:func:`flag`), stored as ``bool``."""
    return JsonField(key, pa.bool_(), pa.bool_(), pc.is_valid, default=False)


def flag(message: dict, name: str) -> bool:
    """An optional JSON boolean: ``true`` or ``false``, ``false`` when missing or ``null``."""
    raw = message.get(name)
    if raw is None:
        return False
    if type(raw) is not bool:
        raise InvalidRecord(f"{name!r} must be true or false")
    return raw


def text_field(key: str, max_chars: int) -> JsonField:
    """A string of 1 to ``max_chars`` characters (:func:`text`); the columnar path takes printable ASCII
    only, and leaves any other text to the per-record decoder."""
    return JsonField(key, pa.string(), pa.string(), _full_match(rf"[\x20-\x7e]{{1,{max_chars}}}"))


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A table the consumer loads: its name, columns (in the order of a decoded tuple), where each column
    comes from in the record JSON (``fields``, one per column, same order), and ``decode``, the per-record
    decoder that takes any valid record and names what is wrong with an invalid one."""

    table: str
    columns: tuple[str, ...]
    fields: tuple[JsonField, ...]
    decode: Callable[[bytes | None], tuple]

    def __post_init__(self) -> None:
        if len(self.fields) != len(self.columns):
            raise ValueError(f"{self.table}: {len(self.columns)} columns but {len(self.fields)} fields")

    @property
    def arrow_types(self) -> tuple[pa.DataType, ...]:
        """Arrow type of each column, in order."""
        return tuple(field.arrow_type for field in self.fields)


def load_object(value: bytes | None) -> dict:
    """The JSON object of a record value; :class:`InvalidRecord` if there is none or it is not an object."""
    if value is None:
        raise InvalidRecord("record has no value")
    return jsonutil.loads_object(value, InvalidRecord, "value")


def field(message: dict, name: str) -> object:
    try:
        return message[name]
    except KeyError:
        raise InvalidRecord(f"missing field {name!r}") from None


def message_id(message: dict) -> str:
    """``message_id`` as a canonical (lowercase, hyphenated) UUID string."""
    raw = field(message, "message_id")
    if type(raw) is str and _UUID.fullmatch(raw):
        return raw
    if not isinstance(raw, str):
        raise InvalidRecord("'message_id' must be a UUID string")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidRecord("'message_id' must be a UUID string") from None


def symbol(message: dict, name: str = "s") -> str:
    """A symbol normalised as :func:`crypto_mesh.binance.normalize_symbol` does (2-20 ASCII letters or digits,
    lowercase)."""
    raw = field(message, name)
    if type(raw) is str:
        if SYMBOL_PATTERN.fullmatch(raw):
            return raw
        normalized = raw.strip().lower()
        if SYMBOL_PATTERN.fullmatch(normalized):
            return normalized
    raise InvalidRecord(f"{name!r}: symbol must be 2 to 20 ASCII letters or digits, e.g. btcusdt")


def time_ms(message: dict, name: str) -> int:
    """Unix milliseconds between 1970 and 2299 (a JSON integer; ``true`` is not a time)."""
    raw = field(message, name)
    if type(raw) is not int or not 0 <= raw <= MAX_TIME_MS:
        raise InvalidRecord(f"{name!r} must be Unix milliseconds between 1970 and 2299")
    return raw


def integer(message: dict, name: str, minimum: int, maximum: int) -> int:
    """A JSON integer in ``[minimum, maximum]``."""
    raw = field(message, name)
    if type(raw) is not int or not minimum <= raw <= maximum:
        raise InvalidRecord(f"{name!r} must be an integer from {minimum} to {maximum}")
    return raw


def decimal_text(message: dict, name: str, scale: int, nonnegative: bool = False) -> str:
    """A decimal string that fits ``Decimal(38, scale)``, as text ClickHouse parses exactly.

    Plain positional strings (``"61837.63"``) are checked by a regular expression and returned as they are;
    any other form (exponent, trailing zeros past the scale, leading ``+``) goes through
    :func:`crypto_mesh.decimals.parse_decimal` and is rewritten with exactly ``scale`` places. Raises
    :class:`InvalidRecord` for anything ``parse_decimal`` refuses.
    """
    raw = field(message, name)
    if type(raw) is str and _decimal_pattern(scale, nonnegative).fullmatch(raw):
        return raw
    try:
        value = parse_decimal(
            raw, minimum="nonnegative" if nonnegative else "any", scale=scale, integer_digits=38 - scale
        )
    except DecimalFieldError as exc:
        raise InvalidRecord(f"{name!r} {exc} (column Decimal(38, {scale}))") from None
    # Exact: parse_decimal has checked that no non-zero digit lies beyond the scale.
    return format(value.quantize(Decimal(1).scaleb(-scale), context=_QUANTIZE), "f")


def _decimal_pattern(scale: int, nonnegative: bool) -> re.Pattern[str]:
    key = (scale, nonnegative)
    pattern = _decimal_patterns.get(key)
    if pattern is None:
        pattern = re.compile(decimal_regex(scale, nonnegative))
        _decimal_patterns[key] = pattern
    return pattern


def decimal_regex(scale: int, nonnegative: bool = False) -> str:
    """Regular expression of the plain positional decimals that fit ``Decimal(38, scale)`` (no exponent, no
    ``+``, at most ``38 - scale`` integer digits and ``scale`` places)."""
    sign = "" if nonnegative else "-?"
    return rf"{sign}[0-9]{{1,{38 - scale}}}(?:\.[0-9]{{1,{scale}}})?"


def plain_decimals(*regexes: str) -> re.Pattern[str]:
    """One pattern for several plain decimals joined by tabs, so that a record's decimals are checked in one
    call (``"\t".join(values)``). A value holding a tab cannot pass: it would add a field, and every other
    value adds at least one."""
    return re.compile("\t".join(regexes))


def is_uuid(value: object) -> bool:
    """True for a canonical (lowercase, hyphenated) UUID string."""
    return type(value) is str and _UUID.fullmatch(value) is not None


def is_symbol(value: object) -> bool:
    """True for an already normalised symbol."""
    return type(value) is str and SYMBOL_PATTERN.fullmatch(value) is not None


def text(message: dict, name: str, max_chars: int) -> str:
    raw = field(message, name)
    if not isinstance(raw, str) or not 0 < len(raw) <= max_chars:
        raise InvalidRecord(f"{name!r} must be a string of 1 to {max_chars} characters")
    return raw
