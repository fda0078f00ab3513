"""The door: whether the bytes a producer sends can become exactly one row of
its table, and why not when they cannot. A port of the Rust `event` module
(`src/event/`: `accept`, `json_text`, `check`, `schema`, `time`), so a Python
producer refuses an event for the same reason, with the same code, as the
workers would, and stores byte for byte the same record.

This module owns those rules on the Python side and nothing else: no Redis,
no spooling. The case corpus `schemas/door_cases.json` is the one source of
truth both implementations are tested against; where this file and the Rust
code seem to disagree, the corpus decides and the other side is fixed.

An accepted event is the producer's JSON with the whitespace outside strings
removed (tokens, number text and key order kept), so a record is one line
and an indented copy equals the compact one. The only other change is the
missing timestamp: the arrival time (milliseconds, `Z`) in place of a `null`,
or as a new first field. Which fields a kind has, and their types, come from
`_rules.json`, generated from `schemas/` by `tools/gen_rules.py`.

Standard library only; Python 3.9+.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Dict, List, NoReturn, Optional, Tuple, Union

__all__ = [
    "TRANSACTIONS",
    "PREDICTIONS",
    "KINDS",
    "MAX_EVENT_BYTES",
    "MAX_ID_BYTES",
    "MAX_DEPTH",
    "EARLIEST_EVENT_TIME",
    "MAX_EVENT_AHEAD",
    "CODES",
    "Rejected",
    "Accepted",
    "accept",
    "check_id",
    "id_field",
    "timestamp_field",
    "minify",
]

#: Kind names, as `EventKind::name()`.
TRANSACTIONS = "transactions"
PREDICTIONS = "predictions"
KINDS = (TRANSACTIONS, PREDICTIONS)

#: `FLIT_MAX_EVENT_BYTES`' default (`DoorRules::default()`).
MAX_EVENT_BYTES = 1024 * 1024
#: Longest id accepted, in UTF-8 bytes (ids become Redis keys).
MAX_ID_BYTES = 256
#: Deepest nesting of objects and arrays accepted (`json_text::MAX_DEPTH`).
MAX_DEPTH = 64

_UTC = timezone.utc
#: `TimeWindow::default()`: BigQuery's first day partition ...
EARLIEST_EVENT_TIME = datetime(1960, 1, 1, tzinfo=_UTC)
#: ... and at most a day ahead of the clock.
MAX_EVENT_AHEAD = timedelta(hours=24)

#: `Rejection::CODES`: every reason code the door gives.
CODES = (
    "missing_data",
    "too_large",
    "invalid_json",
    "duplicate_key",
    "too_deep",
    "not_an_object",
    "missing_id",
    "id_not_string",
    "empty_id",
    "id_too_long",
    "id_bad_character",
    "missing_field",
    "invalid_type",
    "invalid_timestamp",
    "timestamp_out_of_range",
)


class Rejected(ValueError):
    """Why an event was refused: `code` (one of `CODES`, the dead-letter
    reason and metric label), `field` (the field it is about, or None), and
    `str(e)`, the reason in words (the Rust `Rejection` Display text)."""

    def __init__(self, code: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"Rejected(code={self.code!r}, field={self.field!r}, message={self.message!r})"

    def __reduce__(self) -> Tuple[type, Tuple[str, str, Optional[str]]]:
        # ValueError pickles its args only; keep code and field across processes.
        return (Rejected, (self.code, self.message, self.field))


@dataclass(frozen=True)
class Accepted:
    """An event that passed the door."""

    #: The record id (the id field's decoded text).
    id: str
    #: The record as sent to the stream and stored: the producer's JSON
    #: minified, with the arrival stamp when it had no time of its own.
    payload: str
    #: The event time (the partition column), aware, in UTC.
    event_time: datetime
    #: The payload carries the arrival stamp.
    stamped: bool


# ---------------------------------------------------------------------------
# The rules of each kind, generated from schemas/.


@dataclass(frozen=True)
class _Field:
    name: str
    type: str
    required: bool


@dataclass(frozen=True)
class _Kind:
    id_field: str
    timestamp_field: str
    fallback_time_field: Optional[str]
    fields: Tuple[_Field, ...]


def _load_rules() -> Dict[str, _Kind]:
    text = resources.files(__package__ or "flit_cache").joinpath("_rules.json").read_text(
        encoding="utf-8"
    )
    kinds = {}
    for name, rules in json.loads(text)["kinds"].items():
        kinds[name] = _Kind(
            id_field=rules["id_field"],
            timestamp_field=rules["timestamp_field"],
            fallback_time_field=rules["fallback_time_field"],
            fields=tuple(
                _Field(f["name"], f["type"], bool(f["required"])) for f in rules["fields"]
            ),
        )
    if set(kinds) != set(KINDS):
        raise RuntimeError("flit_cache/_rules.json does not describe both kinds; regenerate it")
    return kinds


_RULES = _load_rules()


def _kind(kind: str) -> _Kind:
    rules = _RULES.get(kind) if isinstance(kind, str) else None
    if rules is None:
        # A programming error, not a verdict on an event: not a Rejected.
        raise ValueError(f"unknown event kind {kind!r}: expected {TRANSACTIONS} or {PREDICTIONS}")
    return rules


def id_field(kind: str) -> str:
    """The field of an event of `kind` that carries its id."""
    return _kind(kind).id_field


def timestamp_field(kind: str) -> str:
    """The event-time field of `kind` (the partition column)."""
    return _kind(kind).timestamp_field


# ---------------------------------------------------------------------------
# json_text: minify, and one pass that refuses what serde_json refuses.

_STRUCTURAL = frozenset(b"{}[],:")
# A maximal run of anything but whitespace outside strings: bytes and whole
# strings (ending at their quote, at a final lone backslash, or unterminated
# at the end). Between two runs there is only whitespace.
_MINIFY_RUN = re.compile(rb'(?:[^" \t\n\r]+|"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\)?)+', re.S)
_ANY_WHITESPACE = re.compile(rb"[ \t\n\r]")


def minify(data: bytes) -> bytes:
    """`json_text::minify`: removes JSON whitespace outside strings. A run of
    whitespace between two value characters stays as one space: valid JSON
    never has one there, and joining `1 2` into `12` would turn invalid JSON
    into valid JSON."""
    if not _ANY_WHITESPACE.search(data):
        return bytes(data)
    out: List[bytes] = []
    end = 0
    for run in _MINIFY_RUN.finditer(data):
        start = run.start()
        # `out` holds a run before: whitespace lies between it and this one.
        if out and data[end - 1] not in _STRUCTURAL and data[start] not in _STRUCTURAL:
            out.append(b" ")
        out.append(run.group())
        end = run.end()
    return b"".join(out)


class _Invalid(Exception):
    """Not JSON, with words close to serde_json's."""

    def __init__(self, message: str, text: str, at: int) -> None:
        line = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        super().__init__(f"{message} at line {line} column {column}")


class _Duplicate(Exception):
    pass


class _TooDeep(Exception):
    pass


_STRING_CHUNK = re.compile(r'[^"\\\x00-\x1f]*')
# A key without escapes and its colon, the common case, in one match.
_PLAIN_KEY = re.compile(r'"([^"\\\x00-\x1f]*)":')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS = {"t": "true", "f": "false", "n": "null"}


def _chunk_end(text: str, at: int) -> int:
    """Where the run of plain string characters from `at` ends (the
    pattern matches the empty run, so there is always a match)."""
    found = _STRING_CHUNK.match(text, at)
    return found.end() if found else at


# Where one top-level field's value lies in the text: key, start, end.
_Span = Tuple[str, int, int]


class _Reader:
    """One left-to-right pass over minified text, refusing what the Rust
    `json_text::object_fields` refuses, at the same point: serde_json's
    grammar (no NaN, paired surrogate escapes, numbers within a double as
    serde_json computes them), a key repeated in one object (seen as soon as
    the key is read, before its value), and nesting deeper than MAX_DEPTH
    (seen at the bracket). The first problem met decides the reason.

    Only for `minify`'s output: whitespace outside strings is left there only
    between two value characters, which is always where serde_json wants
    `,` `:` `]` `}` or the end and fails at the next character; failing at
    the whitespace itself gives the same verdict."""

    __slots__ = ("text", "n")

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)

    def fail(self, message: str, at: int) -> NoReturn:
        raise _Invalid(message, self.text, at)

    def document(self) -> Tuple[bool, List[_Span]]:
        fields: List[_Span] = []
        is_object = self.text.startswith("{")
        i = self.value(0, 0, fields if is_object else None)
        if i < self.n:
            self.fail("trailing characters", i)
        return is_object, fields

    def value(self, i: int, depth: int, fields: Optional[List[_Span]] = None) -> int:
        if i >= self.n:
            self.fail("EOF while parsing a value", i)
        c = self.text[i]
        if c == '"':
            return self.string(i)[0]
        if c == "{":
            return self.object(i + 1, depth, fields)
        if c == "[":
            return self.array(i + 1, depth)
        if c == "-" or "0" <= c <= "9":
            return self.number(i)
        word = _LITERALS.get(c)
        if word is None:
            self.fail("expected value", i)
        if not self.text.startswith(word, i):
            self.fail("expected ident", i)
        return i + len(word)

    def string(self, i: int) -> Tuple[int, str]:
        """The string starting at the quote at `i`: where it ends, and its text."""
        text, n = self.text, self.n
        j = _chunk_end(text, i + 1)
        if j < n and text[j] == '"':
            return j + 1, text[i + 1 : j]
        parts = [text[i + 1 : j]]
        while True:
            if j >= n:
                self.fail("EOF while parsing a string", j)
            c = text[j]
            if c == '"':
                return j + 1, "".join(parts)
            if c != "\\":
                self.fail("control character (\\u0000-\\u001F) found while parsing a string", j)
            j += 1
            if j >= n:
                self.fail("EOF while parsing a string", j)
            e = text[j]
            if e in _ESCAPES:
                parts.append(_ESCAPES[e])
                j += 1
            elif e == "u":
                j, code = self.hex4(j + 1)
                if 0xDC00 <= code <= 0xDFFF:
                    self.fail("lone leading surrogate in hex escape", j)
                if 0xD800 <= code <= 0xDBFF:
                    # serde_json, decoding to a String, wants the pair.
                    if not text.startswith("\\u", j):
                        self.fail("unexpected end of hex escape", j)
                    j, low = self.hex4(j + 2)
                    if not 0xDC00 <= low <= 0xDFFF:
                        self.fail("lone leading surrogate in hex escape", j)
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                parts.append(chr(code))
            else:
                self.fail("invalid escape", j)
            end = _chunk_end(text, j)
            parts.append(text[j:end])
            j = end

    def hex4(self, j: int) -> Tuple[int, int]:
        if not _HEX4.match(self.text, j):
            if j + 4 > self.n:
                self.fail("EOF while parsing a string", self.n)
            self.fail("invalid escape", j)
        return j + 4, int(self.text[j : j + 4], 16)

    def number(self, i: int) -> int:
        m = _NUMBER.match(self.text, i)
        if m is None:
            self.fail("invalid number", i)
        # An integer of u64 size is kept as one; anything else becomes a
        # double, and serde_json refuses one that overflows.
        if (m.group(1) or m.group(2) or m.end() - i > 20) and not _serde_f64_in_range(m.group()):
            self.fail("number out of range", i)
        return m.end()

    def array(self, i: int, depth: int) -> int:
        if depth >= MAX_DEPTH:
            raise _TooDeep()
        text, n = self.text, self.n
        if i < n and text[i] == "]":
            return i + 1
        while True:
            i = self.value(i, depth + 1)
            if i >= n:
                self.fail("EOF while parsing a list", i)
            c = text[i]
            if c == "]":
                return i + 1
            if c != ",":
                self.fail("expected `,` or `]`", i)
            i += 1
            if i < n and text[i] == "]":
                self.fail("trailing comma", i)

    def object(self, i: int, depth: int, fields: Optional[List[_Span]]) -> int:
        if depth >= MAX_DEPTH:
            raise _TooDeep()
        text, n = self.text, self.n
        seen = set()
        if i < n and text[i] == "}":
            return i + 1
        while True:
            plain = _PLAIN_KEY.match(text, i)
            if plain is not None:
                key = plain.group(1)
                if key in seen:
                    raise _Duplicate(key)
                i = plain.end()
            else:
                if i >= n:
                    self.fail("EOF while parsing an object", i)
                if text[i] != '"':
                    self.fail("key must be a string", i)
                i, key = self.string(i)
                if key in seen:
                    raise _Duplicate(key)
                if i >= n:
                    self.fail("EOF while parsing an object", i)
                if text[i] != ":":
                    self.fail("expected `:`", i)
                i += 1
            seen.add(key)
            start = i
            i = self.value(i, depth + 1)
            if fields is not None:
                fields.append((key, start, i))
            if i >= n:
                self.fail("EOF while parsing an object", i)
            c = text[i]
            if c == "}":
                return i + 1
            if c != ",":
                self.fail("expected `,` or `}`", i)
            i += 1
            if i < n and text[i] == "}":
                self.fail("trailing comma", i)


_U64_MAX = 2**64 - 1
_I32_MAX = 2**31 - 1
_I32_MIN = -(2**31)
_POW10 = tuple(float(f"1e{e}") for e in range(309))


def _serde_f64_in_range(token: str) -> bool:
    """Whether serde_json 1.0 (without `float_roundtrip`, as flit-cache builds
    it) reads the JSON number `token` without "number out of range". Its
    reading is not correctly rounded near the largest double, so this follows
    its steps: a u64 significand (later digits dropped), a decimal exponent,
    and one multiplication by a power of ten."""
    try:
        value = float(token)
    except (ValueError, OverflowError):  # pragma: no cover - grammar checked
        return False
    if abs(value) < 1e300:
        # Dropped digits only make serde_json's value smaller: no overflow.
        return True
    s, i, n = token, int(token[0] == "-"), len(token)
    significand = int(s[i])
    i += 1
    exponent = 0
    if significand != 0:
        while i < n and s[i].isdigit():
            digit = int(s[i])
            if significand * 10 + digit > _U64_MAX:
                # parse_long_integer: further digits only count in the exponent.
                while i < n and s[i].isdigit():
                    exponent += 1
                    i += 1
                break
            significand = significand * 10 + digit
            i += 1
    if i < n and s[i] == ".":
        i += 1
        while i < n and s[i].isdigit():
            digit = int(s[i])
            if significand * 10 + digit > _U64_MAX:
                while i < n and s[i].isdigit():  # parse_decimal_overflow
                    i += 1
                break
            significand = significand * 10 + digit
            exponent -= 1
            i += 1
    if i < n and s[i] in "eE":
        i += 1
        positive_exp = True
        if s[i] in "+-":
            positive_exp = s[i] == "+"
            i += 1
        exp = 0
        while i < n:
            exp = exp * 10 + int(s[i])
            i += 1
            if exp > _I32_MAX:
                # parse_exponent_overflow: infinity is an error, zero is zero.
                return significand == 0 or not positive_exp
        exponent = exponent + exp if positive_exp else exponent - exp
        exponent = max(_I32_MIN, min(_I32_MAX, exponent))
    # f64_from_parts
    f = float(significand)
    while True:
        if abs(exponent) <= 308:
            if exponent >= 0:
                f *= _POW10[abs(exponent)]
                if math.isinf(f):
                    return False
            break
        if f == 0.0:
            break
        if exponent >= 0:
            return False
        f /= 1e308
        exponent += 308
    return True


# ---------------------------------------------------------------------------
# time: BigQuery's TIMESTAMP literal, as microseconds since the Unix epoch
# (ints, so year 0 and year 10000 can be read and then refused as out of
# range, which datetime cannot hold).

_DAY_US = 86_400 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Proleptic Gregorian, any year (H. Hinnant's algorithm).
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> Tuple[int, int, int]:
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _valid_date(year: int, month: int, day: int) -> bool:
    if not 1 <= month <= 12 or day < 1:
        return False
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return day <= (29 if leap else 28)
    return day <= (30 if month in (4, 6, 9, 11) else 31)


_FIRST_US = _days_from_civil(1, 1, 1) * _DAY_US
_LAST_US = (_days_from_civil(9999, 12, 31) + 1) * _DAY_US - 1


# `time::parse_timestamp`'s cursor as one pattern. Every group of 1 to n
# digits is followed by a non-digit or the end, so a match never takes fewer
# digits than the greedy cursor would: both accept the same texts.
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})[Tt ]([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})"
    r"(?:\.([0-9]{1,6}))?(?:[Zz]|([+-])([0-9]{1,2})(?::([0-9]{2}))?)?"
)


def _parse_timestamp(text: str) -> Optional[int]:
    """`time::parse_timestamp`: a date and a time joined by T or a space, up
    to six fractional digits, and an offset, Z or none (UTC); microseconds
    since the epoch, possibly outside BigQuery's range. None if not a literal."""
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    fraction = m.group(7)
    micros = int(fraction) * 10 ** (6 - len(fraction)) if fraction else 0
    offset = 0
    if m.group(8):
        hours, minutes = int(m.group(9)), int(m.group(10) or 0)
        if hours > 14 or minutes > 59:
            return None
        offset = (hours * 3600 + minutes * 60) * (-1 if m.group(8) == "-" else 1)
    # A second of 60 (a leap second) is not a time BigQuery stores.
    if not _valid_date(year, month, day) or hour > 23 or minute > 59 or second > 59:
        return None
    local = _days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    return (local - offset) * 1_000_000 + micros


def _format_us(us: int, digits: int) -> str:
    """chrono's `to_rfc3339_opts(_, true)` in UTC, `digits` fractional
    digits (3: Millis, 6: Micros), truncated."""
    days, rest = divmod(us, _DAY_US)
    year, month, day = _civil_from_days(days)
    seconds, micros = divmod(rest, 1_000_000)
    y = f"{year:04d}" if 0 <= year <= 9999 else f"{year:+05d}"
    fraction = f"{micros:06d}"[:digits]
    return (
        f"{y}-{month:02d}-{day:02d}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
        f"{seconds % 60:02d}.{fraction}Z"
    )


def _to_us(at: datetime) -> int:
    # A naive datetime is UTC, as the door reads a time without an offset.
    if at.tzinfo is None:
        at = at.replace(tzinfo=_UTC)
    return (at - _EPOCH) // timedelta(microseconds=1)


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


# ---------------------------------------------------------------------------
# check: the id, each field of the kind's schema, and the event time.

_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_JSON_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
# Rust's char::is_whitespace (Unicode White_Space) or char::is_control (Cc);
# and surrogates, which a Python str may hold but a key cannot.
_BAD_ID_CHARACTER = re.compile(
    "[\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ud800-\udfff]"
)
# Rust's str::trim_start (White_Space), for chrono's date parsing.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_EXPECTED = {
    "STRING": "STRING (a JSON string)",
    "INT64": "INT64 (a whole number, or a string holding one)",
    "FLOAT64": "FLOAT64 (a finite number, or a string holding one)",
    "BOOL": "BOOL (true or false)",
    "DATE": "DATE (a string such as 2026-11-20)",
    "TIMESTAMP": "TIMESTAMP",
    "JSON": "JSON",
}


def _shorten(text: str) -> str:
    """At most 64 characters of `text`, for messages."""
    return text if len(text) <= 64 else text[:64] + "\u2026"


def _describe(raw: str) -> str:
    first = raw[:1]
    if first == "{":
        return "an object"
    if first == "[":
        return "an array"
    if first == '"':
        return f"a string ({_shorten(raw)})"
    if first in ("t", "f"):
        return "a boolean"
    return f"a number ({_shorten(raw)})"


def _decode_string(raw: str) -> str:
    """The text of a JSON string token (already checked by the reader)."""
    inner = raw[1:-1]
    return inner if "\\" not in inner else json.loads(raw)


def _check_id_text(field: str, value: str) -> None:
    if value == "":
        raise Rejected("empty_id", f"`{field}` is empty", field)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise Rejected(
            "id_too_long", f"`{field}` is {size} bytes, over the limit of {MAX_ID_BYTES}", field
        )
    if _BAD_ID_CHARACTER.search(value):
        raise Rejected(
            "id_bad_character", f"`{field}` contains whitespace or control characters", field
        )


def check_id(kind: str, id: str) -> None:  # noqa: A002 - the brief's name
    """Raises Rejected unless `id` is an acceptable record id of `kind`
    (`check_id_text`): not empty, at most MAX_ID_BYTES of UTF-8, no
    whitespace or control characters. For ids given to lookups."""
    field = _kind(kind).id_field
    if not isinstance(id, str):
        raise Rejected("id_not_string", f"`{field}` is not a string", field)
    _check_id_text(field, id)


def _invalid_timestamp(field: str, raw: str) -> Rejected:
    return Rejected(
        "invalid_timestamp",
        f"`{field}` is not a time BigQuery reads ({_shorten(raw)}): expected a date and time "
        "such as 2026-11-20T14:30:00.123456, with T or a space, up to 6 fractional digits, "
        "and an offset, Z or none (UTC)",
        field,
    )


def _chrono_date(text: str) -> Optional[Tuple[int, int, int]]:
    """chrono's `NaiveDate::parse_from_str(text, "%Y-%m-%d")`: whitespace
    skipped before each number, a year of 1 to 4 digits or signed and longer,
    month and day of 1 or 2 digits, nothing after."""
    s = text

    def number(s: str, most: int) -> Optional[Tuple[str, int]]:
        count = 0
        while count < min(most, len(s)) and "0" <= s[count] <= "9":
            count += 1
        return None if count == 0 else (s[count:], int(s[:count]))

    s = s.lstrip(_RUST_WHITESPACE)
    sign = 1
    if s[:1] in ("-", "+"):
        sign = -1 if s[0] == "-" else 1
        got = number(s[1:], len(s))
    else:
        got = number(s, 4)
    if got is None or not got[0].startswith("-"):
        return None
    s, year = got[0][1:], sign * got[1]
    got = number(s.lstrip(_RUST_WHITESPACE), 2)
    if got is None or not got[0].startswith("-"):
        return None
    s, month = got[0][1:], got[1]
    got = number(s.lstrip(_RUST_WHITESPACE), 2)
    if got is None or got[0]:
        return None
    day = got[1]
    return (year, month, day) if _valid_date(year, month, day) else None


def _check_value(field: _Field, raw: str, bounds: Tuple[int, int]) -> Optional[int]:
    """`check::column_value`: refuses `raw` unless its column takes it;
    returns the time (microseconds) of a TIMESTAMP."""
    is_string = raw.startswith('"')
    kind = field.type

    def wrong() -> Rejected:
        return Rejected(
            "invalid_type",
            f"`{field.name}` is {_describe(raw)}, the column is {_EXPECTED[kind]}",
            field.name,
        )

    if kind == "JSON":
        return None
    if kind == "STRING":
        if not is_string:
            raise wrong()
        return None
    if kind == "BOOL":
        if raw not in ("true", "false"):
            raise wrong()
        return None
    if kind in ("FLOAT64", "INT64"):
        # A number, or a string holding exactly one (no padding, no NaN).
        number = _decode_string(raw) if is_string else raw
        if kind == "INT64":
            fits = (
                len(number) <= 20
                and _JSON_INTEGER.fullmatch(number) is not None
                and -(2**63) <= int(number) < 2**63
            )
        else:
            fits = _JSON_NUMBER.fullmatch(number) is not None and math.isfinite(float(number))
        if not fits:
            raise wrong()
        return None
    if kind == "DATE":
        text = _decode_string(raw) if is_string else ""
        date = _chrono_date(text) if len(text.encode("utf-8")) == 10 else None
        first_day, last_day = bounds[0] // _DAY_US, bounds[1] // _DAY_US
        if date is None or not first_day <= _days_from_civil(*date) <= last_day:
            raise wrong()
        return None
    if kind == "TIMESTAMP":
        at = _parse_timestamp(_decode_string(raw)) if is_string else None
        if at is None:
            raise _invalid_timestamp(field.name, raw)
        if not bounds[0] <= at <= bounds[1]:
            window = f"{_format_us(bounds[0], 6)} to {_format_us(bounds[1], 6)}"
            raise Rejected(
                "timestamp_out_of_range",
                f"`{field.name}` is {_shorten(raw)}, outside the accepted window ({window})",
                field.name,
            )
        return at
    raise RuntimeError(f"_rules.json names type {kind}, which the door does not know")


def _fields(text: str) -> Dict[str, Tuple[int, int]]:
    """`json_text::object_fields`: the top-level fields' value spans."""
    try:
        is_object, spans = _Reader(text).document()
    except _Invalid as e:
        raise Rejected("invalid_json", f"not valid JSON: {e}") from None
    except _Duplicate as e:
        key = _shorten(str(e.args[0]))
        raise Rejected("duplicate_key", f"the key `{key}` appears twice in one object") from None
    except _TooDeep:
        raise Rejected(
            "too_deep", f"JSON is nested deeper than {MAX_DEPTH} objects and arrays"
        ) from None
    if not is_object:
        raise Rejected("not_an_object", "JSON value is not an object")
    return {key: (start, end) for key, start, end in spans}


# ---------------------------------------------------------------------------
# accept


def accept(
    kind: str,
    data: Union[bytes, str],
    *,
    now: Optional[datetime] = None,
    arrival: Optional[datetime] = None,
    max_event_bytes: int = MAX_EVENT_BYTES,
    earliest: Optional[datetime] = None,
    max_ahead: Optional[timedelta] = None,
) -> Accepted:
    """Checks one event of `kind` as the Rust `event::accept` does, and
    returns the record to send; raises Rejected with the reason otherwise.

    `now` is the clock the time window is read against (default: the current
    UTC time); `arrival` is stamped into an event without a time of its own
    (default: `now`, as the Rust Producer does). The window runs from
    `earliest` (default 1960-01-01 UTC) to `max_ahead` past `now` (default 24
    hours), never beyond BigQuery's range. Naive datetimes are UTC. A `str`
    is sent as UTF-8. An unknown `kind` is a ValueError, not a Rejected."""
    rules = _kind(kind)
    if isinstance(data, str):
        # surrogatepass: a lone surrogate gets the invalid_json a producer's
        # bytes would get, not an encoding error.
        data = data.encode("utf-8", "surrogatepass")
    elif isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError(f"an event is bytes or str, not {type(data).__name__}")
    now_us = _to_us(now) if now is not None else _to_us(datetime.now(_UTC))
    arrival_us = _to_us(arrival) if arrival is not None else now_us
    earliest_us = _to_us(earliest if earliest is not None else EARLIEST_EVENT_TIME)
    ahead = MAX_EVENT_AHEAD if max_ahead is None else max_ahead
    # TimeWindow::bounds: within BigQuery's range whatever the settings say.
    bounds = (
        max(earliest_us, _FIRST_US),
        min(now_us + ahead // timedelta(microseconds=1), _LAST_US),
    )

    if len(data) > max_event_bytes:
        raise Rejected(
            "too_large", f"event is {len(data)} bytes, over the limit of {max_event_bytes} bytes"
        )
    minified = minify(data)
    try:
        original = minified.decode("utf-8")
    except UnicodeDecodeError as e:
        # Rust's Utf8Error words.
        if e.reason == "unexpected end of data":
            why = f"incomplete utf-8 byte sequence from index {e.start}"
        else:
            why = f"invalid utf-8 sequence of {e.end - e.start} bytes from index {e.start}"
        raise Rejected("invalid_json", f"not valid JSON: not UTF-8 ({why})") from None

    fields = _fields(original)

    def raw_of(name: str) -> Optional[str]:
        span = fields.get(name)
        return None if span is None else original[span[0] : span[1]]

    id_name = rules.id_field
    raw_id = raw_of(id_name)
    if raw_id is None or raw_id == "null":
        raise Rejected("missing_id", f"`{id_name}` is missing", id_name)
    if not raw_id.startswith('"'):
        raise Rejected("id_not_string", f"`{id_name}` is not a string", id_name)
    record_id = _decode_string(raw_id)
    _check_id_text(id_name, record_id)

    time_name = rules.timestamp_field
    times: Dict[str, Tuple[str, int]] = {}
    event_us: Optional[int] = None
    null_at: Optional[int] = None
    for field in rules.fields:
        raw = raw_of(field.name)
        if raw is None or raw == "null":
            if field.required and field.name not in (time_name, id_name):
                raise Rejected(
                    "missing_field", f"`{field.name}` is missing; the table requires it", field.name
                )
            if field.name == time_name and raw is not None:
                null_at = fields[field.name][0]
            continue
        if field.name == id_name:
            continue
        at = _check_value(field, raw, bounds)
        if at is not None:
            times.setdefault(field.name, (raw, at))
        if field.name == time_name:
            if at is None:  # the schema made it no TIMESTAMP; Rust refuses it so
                raise _invalid_timestamp(field.name, raw)
            event_us = at

    stamped = False
    if event_us is not None:
        payload = original
    else:
        fallback = times.get(rules.fallback_time_field or "")
        if fallback is not None:
            # A transaction without _timestamp lands on the day it happened,
            # its own time copied as written.
            value, event_us = fallback
        else:
            value = json.dumps(_format_us(arrival_us, 3))
            event_us, stamped = arrival_us, True
        if null_at is not None:
            payload = original[:null_at] + value + original[null_at + 4 :]
        else:
            # Minified, so the object starts with its brace and holds the id.
            payload = "{" + json.dumps(time_name) + ":" + value + "," + original[1:]
        # The limit holds for what is stored and sent on, stamp included.
        size = len(payload.encode("utf-8"))
        if size > max_event_bytes:
            raise Rejected(
                "too_large", f"event is {size} bytes, over the limit of {max_event_bytes} bytes"
            )
    return Accepted(id=record_id, payload=payload, event_time=_from_us(event_us), stamped=stamped)
