"""Behaviour events: the v1 wire contract, decoded and validated in one pass.

`decode_event` turns the raw bytes of one Kafka record into an `Event` or a
`Rejection` (an error code plus a human-readable detail) and never raises: a
bad record is a value to route to the dead-letter topic, not an exception that
stops a worker. The rules mirror `schemas/behavior_event.v1.json`; a corpus
test holds both to the same verdicts.

msgspec decodes straight into a typed struct, checking types, lengths and
ranges on the way (about 1 µs per event); the few rules a struct cannot
express (field count, per-type required fields, the "not in the future" bound)
are checked afterwards, and so are the country and currency codes: msgspec
checks a `pattern` by calling Python's `re`, which took half the decode.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import product
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

MAX_EVENT_BYTES: Final = 64 * 1024
MAX_FIELDS: Final = 64
MIN_TS_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
FUTURE_SLACK_MS: Final = 86_400_000  # events may be at most one day ahead of the clock

EVENT_TYPES: Final = (
    "view",
    "click",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "review",
    "login",
)
EventType = Literal[
    "view", "click", "search", "add_to_cart", "remove_from_cart", "purchase", "review", "login"
]
NEEDS_ITEM: Final = frozenset({"view", "click", "add_to_cart", "remove_from_cart", "review"})


def _text(max_length: int, min_length: int = 0) -> Any:
    return Annotated[str, msgspec.Meta(min_length=min_length, max_length=max_length)]


Money = Annotated[float, msgspec.Meta(ge=0, le=1e7)]


class Event(msgspec.Struct, frozen=True, gc=False):
    """One validated behaviour event (DESIGN.md §3). Unknown fields are dropped.

    The fields are in the order producers write them (who, when and where, then the
    item, the order, and the fields of fewer types), not the schema's: msgspec looks a
    key up from the field after the last one it found, so keys in field order are
    found at the first try (in the schema's order, a view's took 50 more tries).
    """

    event_id: _text(64, 1)  # type: ignore[valid-type]
    user_id: _text(128, 1)  # type: ignore[valid-type]
    type: EventType
    ts: Annotated[int, msgspec.Meta(ge=MIN_TS_MS)]
    session_id: _text(128) | None = None  # type: ignore[valid-type]
    device_id: _text(128) | None = None  # type: ignore[valid-type]
    country: str | None = None  # 2 letters A-Z: `check_rules`
    item_id: _text(128) | None = None  # type: ignore[valid-type]
    title: _text(512) | None = None  # type: ignore[valid-type]
    category: _text(256) | None = None  # type: ignore[valid-type]
    brand: _text(128) | None = None  # type: ignore[valid-type]
    price: Money | None = None
    currency: str = "USD"  # 3 letters A-Z: `check_rules`
    quantity: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    amount: Money | None = None
    order_id: _text(128) | None = None  # type: ignore[valid-type]
    payment_method: _text(128) | None = None  # type: ignore[valid-type]
    ip: _text(64) | None = None  # type: ignore[valid-type]
    card_fp: _text(128) | None = None  # type: ignore[valid-type]
    query: _text(512) | None = None  # type: ignore[valid-type]
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None
    text: _text(4096) | None = None  # type: ignore[valid-type]
    success: bool | None = None
    # Set by a worker that forwarded the event from a user merged into another
    # (`profile-commands`): the user it was first sent under.
    forwarded_from: _text(128, 1) | None = None  # type: ignore[valid-type]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record is not a valid event. `error` is a stable, machine-readable code."""

    error: str
    detail: str


# Error codes, stable across releases: consumers of the DLQ switch on them.
TOO_LARGE: Final = "too_large"
NOT_UTF8: Final = "not_utf8"
INVALID_JSON: Final = "invalid_json"
TOO_DEEP: Final = "too_deep"
NOT_OBJECT: Final = "not_object"
TOO_MANY_FIELDS: Final = "too_many_fields"
MISSING_FIELD: Final = "missing_field"
EMPTY_FIELD: Final = "empty_field"
WRONG_TYPE: Final = "wrong_type"
OUT_OF_RANGE: Final = "out_of_range"
INVALID_VALUE: Final = "invalid_value"
TS_IN_FUTURE: Final = "ts_in_future"
KEY_MISMATCH: Final = "key_mismatch"
INVALID_LABEL: Final = "invalid_label"  # a fraud-labels record that is JSON but not a label
INVALID_COMMAND: Final = "invalid_command"  # a profile-commands record that is JSON but no command
INTERNAL_ERROR: Final = "internal_error"  # valid, but the worker failed on it: replay after a fix
ERROR_CODES: Final = (
    TOO_LARGE,
    NOT_UTF8,
    INVALID_JSON,
    TOO_DEEP,
    NOT_OBJECT,
    TOO_MANY_FIELDS,
    MISSING_FIELD,
    EMPTY_FIELD,
    WRONG_TYPE,
    OUT_OF_RANGE,
    INVALID_VALUE,
    TS_IN_FUTURE,
    KEY_MISMATCH,
    INVALID_LABEL,
    INVALID_COMMAND,
    INTERNAL_ERROR,
)

_decoder: Final = msgspec.json.Decoder(Event)
_field_counter: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
# The shortest JSON object with MAX_FIELDS + 1 distinct keys ({"a":0,"b":0,...})
# is longer than this, so smaller records need no field count.
_FIELD_COUNT_MIN_BYTES: Final = 6 * (MAX_FIELDS + 1)


def decode_event(raw: bytes, now_ms: int) -> Event | Rejection:
    """Decode and validate one record value against the v1 contract; never raises."""
    if len(raw) > MAX_EVENT_BYTES:
        return _too_large(raw)
    try:
        event = _decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        rejection = _rejection(raw, exc, _classify_validation)
        if rejection.error == OUT_OF_RANGE and rejection.detail.endswith("at `$.ts`"):
            return _ts_too_old(raw, rejection, now_ms)
        return rejection
    if not raw.isascii():
        # msgspec skips unknown fields without checking their UTF-8. Inline, not
        # `_utf8_error`: the call costs a valid event about 3%.
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _not_json(raw, exc)
    # Every member of every object has its colon, so a record with few colons (a scan
    # in C) cannot have too many fields: most long ones (a review's text) need no count.
    if len(raw) >= _FIELD_COUNT_MIN_BYTES and raw.count(b":") > MAX_FIELDS:
        n_fields = len(_field_counter.decode(raw))
        if n_fields > MAX_FIELDS:
            return Rejection(TOO_MANY_FIELDS, f"{n_fields} fields > {MAX_FIELDS}")
    return check_rules(event, now_ms)


def check_rules(event: Event, now_ms: int) -> Event | Rejection:
    """Rules that span fields or depend on the clock, and the two code formats."""
    if event.country is not None and event.country not in _ALPHA2:
        return Rejection(INVALID_VALUE, "`country` must be 2 letters A-Z (ISO 3166-1 alpha-2)")
    if event.currency != "USD" and event.currency not in _ALPHA3:
        return Rejection(INVALID_VALUE, "`currency` must be 3 letters A-Z (ISO 4217)")
    if event.ts > now_ms + FUTURE_SLACK_MS:
        detail = f"ts {event.ts} is more than a day ahead of {now_ms}"
        return Rejection(TS_IN_FUTURE, detail + _unit_hint(event.ts, now_ms, "it"))
    kind = event.type
    if kind in NEEDS_ITEM and not event.item_id:
        return Rejection(MISSING_FIELD, f"`item_id` is required for {kind}")
    if kind == "search" and not event.query:
        return Rejection(MISSING_FIELD, "`query` is required for search")
    if kind == "purchase" and event.amount is None:
        return Rejection(MISSING_FIELD, "`amount` is required for purchase")
    # `price` and `amount` need no check of their own for NaN or infinity: JSON has no
    # literal for either, and a number too large for a float decodes as infinite,
    # which `Money`'s upper bound refuses (out_of_range).
    return event


# Every code of two and of three letters A-Z (676 and 17,576 of them, 1.4 MB, 5 ms to
# build): a set lookup per event instead of a function call and four string methods.
_ALPHA2: Final = frozenset(map("".join, product(string.ascii_uppercase, repeat=2)))
_ALPHA3: Final = frozenset(map("".join, product(string.ascii_uppercase, repeat=3)))


# A `ts` out of range that is a time in range in another unit: what producers send
# when they take `time.time()`, `Date.now() * 1000` or a nanosecond clock for
# milliseconds. The divisor to milliseconds when the unit is finer; the factor, coarser.
_OTHER_UNITS: Final = (("seconds", 1, 1000), ("microseconds", 1000, 1), ("nanoseconds", 10**6, 1))


class _TsOnly(msgspec.Struct):
    ts: int


_ts_only: Final = msgspec.json.Decoder(_TsOnly)


def _ts_too_old(raw: bytes, rejection: Rejection, now_ms: int) -> Rejection:
    """`rejection` (ts below 2000-01-01) saying so when the ts is seconds, not milliseconds."""
    try:
        ts = _ts_only.decode(raw).ts  # JSON already: only the type of `ts` was refused
    except (msgspec.DecodeError, RecursionError):
        return rejection
    return Rejection(rejection.error, rejection.detail + _unit_hint(ts, now_ms, str(ts)))


def _unit_hint(ts: int, now_ms: int, subject: str) -> str:
    """`; <subject> looks like seconds since the epoch: ts is in milliseconds (…)` when
    `ts`, read in another unit, is a time the contract takes; else nothing."""
    for unit, divisor, factor in _OTHER_UNITS:
        ms = ts // divisor * factor
        if MIN_TS_MS <= ms <= now_ms + FUTURE_SLACK_MS:
            return f"; {subject} looks like {unit} since the epoch: ts is in milliseconds ({ms})"
    return ""


# The checks every contract shares (size, UTF-8, depth, JSON), for `decode_event` and
# `decode_record` alike. They run once a typed decoder has failed, so a valid record
# pays for none of them.


def _too_large(raw: bytes) -> Rejection:
    return Rejection(TOO_LARGE, f"{len(raw)} bytes > {MAX_EVENT_BYTES}")


def _utf8_error(raw: bytes) -> Rejection | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(NOT_UTF8, f"invalid UTF-8 at byte {exc.start}")
    return None


def _rejection(
    raw: bytes, exc: Exception, breaks_contract: Callable[[str], Rejection]
) -> Rejection:
    """Why a typed decoder refused `raw`; `breaks_contract` names JSON that breaks the
    contract (a `msgspec.ValidationError`)."""
    if isinstance(exc, msgspec.ValidationError):
        # msgspec stops at the first field it cannot accept, before it has read the
        # rest: a record that is not JSON further on is refused as such, not for a field.
        return _malformed(raw) or breaks_contract(str(exc))
    return _not_json(raw, exc)


def _not_json(raw: bytes, exc: Exception) -> Rejection:
    """The code for a decoder error that is about the bytes, not about a field."""
    if isinstance(exc, RecursionError):
        return Rejection(TOO_DEEP, "nesting exceeds the decoder's depth limit")
    if isinstance(exc, UnicodeDecodeError):
        return Rejection(NOT_UTF8, f"invalid UTF-8 at byte {exc.start}")
    return _utf8_error(raw) or Rejection(INVALID_JSON, _json_error(raw, str(exc)))


_TRUNCATED: Final = "Input data was truncated"
# A JSON escape: of a UTF-16 surrogate (group 1: its hex digits), or any other one, so
# that `\\ud800` (an escaped backslash, then `ud800`) is no surrogate.
_ESCAPE: Final = re.compile(rb"\\(?:u([dD][89a-fA-F][0-9a-fA-F]{2})|.)", re.DOTALL)


def _json_error(raw: bytes, message: str) -> str:
    """msgspec's word for why `raw` is not JSON, unless it is wrong: a lone surrogate
    escape (`\ud800` with no low half after it) fewer than six bytes from the end is
    "truncated" to msgspec, which reads that far ahead for the low half."""
    if message != _TRUNCATED or (lone := _lone_surrogate(raw)) is None:
        return message
    start, end = lone.span()
    try:  # the record is truncated for that escape only if, with a whole one, it is not
        _any_json.decode(raw[:start] + b"\\ufffd" + raw[end:])
    except (msgspec.DecodeError, RecursionError) as exc:
        if str(exc) == _TRUNCATED:
            return message
    escape = lone[0].decode()
    return f"JSON is malformed: lone utf-16 surrogate {escape}, half of a pair (byte {start})"


def _lone_surrogate(raw: bytes) -> re.Match[bytes] | None:
    """The first surrogate escape of `raw` that is not one half of a pair."""
    high = None  # a high half whose low half would be the next escape
    for escape in _ESCAPE.finditer(raw):
        unit = escape[1]
        is_high = unit is not None and unit[1:2] in b"89abAB"
        is_low = unit is not None and not is_high
        if high is not None:
            if is_low and escape.start() == high.end():
                high = None
                continue
            return high
        if is_low:
            return escape
        high = escape if is_high else None
    return high


# Any JSON value; a number too large for a float stays text, so it is no error here.
_any_json: Final = msgspec.json.Decoder(float_hook=str)


def _malformed(raw: bytes) -> Rejection | None:
    """Why `raw` is not strict JSON in UTF-8 (all of it, not just up to an error), or None."""
    try:
        _any_json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        return _not_json(raw, exc)
    return None if raw.isascii() else _utf8_error(raw)


def _classify_validation(message: str) -> Rejection:
    if message.startswith("Expected `object`"):
        return Rejection(NOT_OBJECT, message)
    if message.startswith("Object missing required field"):
        return Rejection(MISSING_FIELD, message)
    if message.startswith("Invalid enum value") or "matching regex" in message:
        return Rejection(INVALID_VALUE, message)
    if "of length >= 1 " in message:
        return Rejection(EMPTY_FIELD, message)
    if message.startswith("Expected `") and (" >= " in message or " <= " in message):
        return Rejection(OUT_OF_RANGE, message)
    if "of length" in message or "out of range" in message:
        return Rejection(OUT_OF_RANGE, message)
    return Rejection(WRONG_TYPE, message)


T = TypeVar("T")


def decode_record(
    decoder: msgspec.json.Decoder[T], raw: bytes | None, invalid: str
) -> T | Rejection:
    """A record value of another contract (labels, commands) through its decoder, or why
    not: `invalid` for JSON that breaks the contract, else the code `decode_event` gives
    (`too_large`, `not_utf8`, `too_deep`, `invalid_json`); never raises."""
    if raw is None:
        return Rejection(INVALID_JSON, "record has no value (null)")
    if len(raw) > MAX_EVENT_BYTES:
        return _too_large(raw)
    try:
        record = decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        return _rejection(raw, exc, partial(Rejection, invalid))
    # msgspec skips unknown fields without checking their UTF-8.
    if not raw.isascii() and (not_utf8 := _utf8_error(raw)) is not None:
        return not_utf8
    return record


# The event's fields in the schema's order (schemas/behavior_event.v1.json), the
# order a forwarded event's body has always had its keys in: not `Event`'s.
_SCHEMA_ORDER: Final = (
    "event_id", "user_id", "type", "ts", "session_id", "device_id", "item_id", "order_id",
    "brand", "title", "query", "category", "text", "rating", "price", "amount", "quantity",
    "currency", "payment_method", "card_fp", "ip", "country", "success", "forwarded_from",
)  # fmt: skip
if sorted(_SCHEMA_ORDER) != sorted(Event.__struct_fields__):
    raise TypeError("_SCHEMA_ORDER must name every field of Event once")


def forwarded_event(event: Event, user_id: str) -> bytes:
    """`event` sent again under `user_id`, marked with the user it was first sent under.

    Fields the event does not set are left out, as a producer leaves them out,
    and so is `ip`: the body is kept in the profile's state until its send is
    acked, and an IP is never stored raw (DESIGN.md §3); no profile uses it.
    """
    fields = {name: getattr(event, name) for name in _SCHEMA_ORDER}
    body = {name: value for name, value in fields.items() if value is not None and name != "ip"}
    body["user_id"] = user_id
    body["forwarded_from"] = event.forwarded_from or event.user_id
    return msgspec.json.encode(body)


def encode_event(fields: dict[str, Any]) -> bytes:
    """Serialise an event dict the way producers should (compact UTF-8 JSON)."""
    return msgspec.json.encode(fields)
