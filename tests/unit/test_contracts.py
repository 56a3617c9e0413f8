"""The v1 wire contracts: decoder and JSON Schemas give the same verdicts.

The corpus (tests/corpus.py) fixes the decoder's error code for every record
and the schema's yes/no wherever JSON Schema can state the rule; hypothesis then
checks generated events, and single-rule breakages of them, against both.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema_rs
import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiling.events import (
    ERROR_CODES,
    EVENT_TYPES,
    FUTURE_SLACK_MS,
    INTERNAL_ERROR,
    INVALID_COMMAND,
    INVALID_LABEL,
    KEY_MISMATCH,
    MIN_TS_MS,
    NEEDS_ITEM,
    Event,
    Rejection,
    decode_event,
    forwarded_event,
)
from profiling.labels import Label, decode_label
from profiling.messages import DEAD_LETTER_MAX_BYTES, dead_letter
from tests.corpus import CASES, NOW_MS, Case, encode
from tests.schemas import SCHEMA_DIR, load_schema, schema_accepts, validator

EVENT = "behavior_event.v1"
REAL_DATE_MS = 1_795_824_000_000  # 2026-11-28: valid corpus events must predate the real clock
SCHEMA_NAMES = sorted(path.stem for path in SCHEMA_DIR.glob("*.json"))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_decoder_verdict(case: Case) -> None:
    verdict = decode_event(case.raw, NOW_MS)
    if case.error is None:
        assert isinstance(verdict, Event), verdict
    else:
        assert isinstance(verdict, Rejection), f"accepted, expected {case.error}"
        assert verdict.error == case.error, verdict.detail


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_schema_verdict(case: Case) -> None:
    accepted = schema_accepts(EVENT, case.raw)
    if case.schema_agrees:
        assert accepted == (case.error is None)
    else:  # a runtime-only rule: the flag must mark a real disagreement
        assert accepted and case.error is not None


def test_corpus_is_replayable() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    valid = [json.loads(case.raw) for case in CASES if case.error is None]
    assert len({event["event_id"] for event in valid}) == len(valid)
    assert all(MIN_TS_MS <= event["ts"] < min(NOW_MS, REAL_DATE_MS) for event in valid)
    assert {event["type"] for event in valid} == set(EVENT_TYPES)
    # Every code decode_event can give is exercised; the key check and a failure of the
    # worker's own live in the pipeline, and labels and commands have their own decoders.
    not_decoders = {
        KEY_MISMATCH,
        INVALID_LABEL,
        INVALID_COMMAND,
        INTERNAL_ERROR,
    }
    assert {case.error for case in CASES} - {None} == set(ERROR_CODES) - not_decoders


def test_future_bound_is_one_day_after_the_clock() -> None:
    base = {"event_id": "e", "user_id": "u", "type": "login"}
    edge = encode({**base, "ts": NOW_MS + FUTURE_SLACK_MS})
    past_edge = encode({**base, "ts": NOW_MS + FUTURE_SLACK_MS + 1})
    assert isinstance(decode_event(edge, NOW_MS), Event)
    assert decode_event(past_edge, NOW_MS) == Rejection(
        "ts_in_future", f"ts {NOW_MS + FUTURE_SLACK_MS + 1} is more than a day ahead of {NOW_MS}"
    )


@pytest.mark.parametrize(
    ("ts", "error", "unit", "ms"),
    [
        (1_700_000_000, "out_of_range", "seconds", 1_700_000_000_000),
        (1_700_000_000_123_456, "ts_in_future", "microseconds", 1_700_000_000_123),
        (1_700_000_000_123_456_789, "ts_in_future", "nanoseconds", 1_700_000_000_123),
    ],
)
def test_a_ts_in_another_unit_keeps_its_code_and_says_ts_is_milliseconds(
    ts: int, error: str, unit: str, ms: int
) -> None:
    """`time.time()` or a microsecond clock sent as `ts`: the dead letter says what the
    producer got wrong, not only the bound it broke, and is still a dead letter."""
    raw = encode({"event_id": "e", "user_id": "u", "type": "login", "ts": ts})
    verdict = decode_event(raw, NOW_MS)
    assert isinstance(verdict, Rejection) and verdict.error == error, verdict
    assert f"looks like {unit} since the epoch: ts is in milliseconds ({ms})" in verdict.detail
    body = dead_letter(
        verdict, topic="behavior-events", partition=0, offset=1, key=b"u", value=raw,
        now_ms=NOW_MS,
    )  # fmt: skip
    validator("dead_letter.v1").validate(orjson.loads(body))


@pytest.mark.parametrize("ts", [1, -5, MIN_TS_MS - 1, 10**23])
def test_a_ts_that_is_no_time_in_any_unit_gets_no_unit_hint(ts: int) -> None:
    raw = encode({"event_id": "e", "user_id": "u", "type": "login", "ts": ts})
    verdict = decode_event(raw, NOW_MS)
    assert isinstance(verdict, Rejection), verdict
    assert verdict.error in ("out_of_range", "ts_in_future")
    assert "looks like" not in verdict.detail


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_2020_12(name: str) -> None:
    schema = load_schema(name)
    jsonschema_rs.meta.validate(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(name)
    assert schema["title"] and schema["description"]
    assert not _undescribed(schema)


def _undescribed(schema: Any, path: str = "") -> list[str]:
    """Paths of properties without a description (conditionals under allOf aside)."""
    if isinstance(schema, list):
        return [p for i, item in enumerate(schema) for p in _undescribed(item, f"{path}/{i}")]
    if not isinstance(schema, dict):
        return []
    properties = schema.get("properties", {})
    missing = [f"{path}/{key}" for key, sub in properties.items() if "description" not in sub]
    nested = [(k, v) for k, v in schema.items() if k != "allOf"]
    return missing + [p for k, v in nested for p in _undescribed(v, f"{path}/{k}")]


def test_schema_files_are_the_six_contracts() -> None:
    assert SCHEMA_NAMES == [
        "behavior_event.v1",
        "dead_letter.v1",
        "fraud_alert.v1",
        "fraud_label.v1",
        "profile_command.v1",
        "profile_update.v1",
    ]


def test_dead_letter_error_codes_are_the_decoders() -> None:
    assert load_schema("dead_letter.v1")["properties"]["error"]["enum"] == list(ERROR_CODES)


def test_a_dead_letter_with_a_huge_key_stays_within_the_limit_with_that_key() -> None:
    key = b"\xff" * 600_000  # not UTF-8: base64 in the body, a third larger
    body = dead_letter(
        Rejection("key_mismatch", "record key must be the event's user_id"),
        topic="behavior-events", partition=0, offset=1, key=key, value=b"{}", now_ms=NOW_MS,
    )  # fmt: skip
    assert len(body) + len(key) <= DEAD_LETTER_MAX_BYTES  # the Kafka key is the same bytes
    letter = orjson.loads(body)
    validator("dead_letter.v1").validate(letter)
    assert (letter["key"], letter["key_encoding"]) == (None, "omitted")
    assert (letter["value"], letter["value_encoding"]) == (None, "omitted")
    assert "600000-byte key left out" in letter["detail"]


def test_a_dead_letter_of_a_null_value_with_a_huge_key_stays_within_the_limit() -> None:
    key = b"k" * 600_000  # a record with no value (a tombstone) under a huge key
    body = dead_letter(
        Rejection("invalid_json", "record has no value (null)"),
        topic="behavior-events", partition=0, offset=1, key=key, value=None, now_ms=NOW_MS,
    )  # fmt: skip
    assert len(body) + len(key) <= DEAD_LETTER_MAX_BYTES  # the Kafka key is the same bytes
    letter = orjson.loads(body)
    validator("dead_letter.v1").validate(letter)
    assert (letter["key"], letter["key_encoding"]) == (None, "omitted")
    assert letter["value"] is None
    assert "600000-byte key left out" in letter["detail"]


def test_a_dead_letter_keeps_its_value_when_the_keys_base64_makes_room() -> None:
    # Each as JSON text is 1 MB (6 bytes per control character); both as base64 fit.
    key, value = b"\x01" * 170_000, b"\x01" * 170_000
    body = dead_letter(
        Rejection("key_mismatch", "record key must be the event's user_id"),
        topic="behavior-events", partition=0, offset=1, key=key, value=value, now_ms=NOW_MS,
    )  # fmt: skip
    assert len(body) + len(key) <= DEAD_LETTER_MAX_BYTES
    letter = orjson.loads(body)
    validator("dead_letter.v1").validate(letter)
    assert (letter["value_encoding"], letter["key_encoding"]) == ("base64", "base64")
    assert base64.b64decode(letter["value"]) == value
    assert base64.b64decode(letter["key"]) == key
    assert "left out" not in letter["detail"]


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (b'{"type":"view","title":"\\"quoted\\""}', "text"),
        ("é".encode() * 100, "text"),
        (b'["","","",""]', "text"),  # UTF-8: text, though base64 would be shorter
        (b"\x00\x01 ctrl", "text"),  # control characters too, while the letter fits
        (b"\x01" * 200_000, "base64"),  # 6 bytes each as JSON text: 1.2 MB
        (b"\xff\xfe", "base64"),
        (b"x" * 2_000_000, "omitted"),  # no broker would take the dead letter
    ],
)
def test_a_dead_letter_carries_its_record_within_a_brokers_message_limit(
    value: bytes, encoding: str
) -> None:
    body = dead_letter(
        Rejection("too_large", "record too large"),
        topic="behavior-events", partition=3, offset=7, key=b"u", value=value, now_ms=NOW_MS,
    )  # fmt: skip
    assert len(body) <= DEAD_LETTER_MAX_BYTES
    letter = orjson.loads(body)
    validator("dead_letter.v1").validate(letter)
    assert letter["value_encoding"] == encoding
    if encoding == "omitted":
        assert letter["value"] is None and "left out" in letter["detail"]
    else:
        written = letter["value"].encode()
        assert (written if encoding == "text" else base64.b64decode(written)) == value


_DEEP = b"[" * 5000 + b"]" * 5000

# A record that is not JSON is refused as such even when a field before the defect breaks
# a rule: the decoder stops at that field, so the rest is checked before the field's code.
NOT_JSON_AFTER_A_FIELD_ERROR: list[tuple[str, bytes, str]] = [
    ("not_utf8_then_ts_too_old", b'{"zz":"\xff","ts":1}', "not_utf8"),
    ("not_utf8_then_empty_id", b'{"zz":"\xff","event_id":""}', "not_utf8"),
    ("unknown_type_then_not_utf8", b'{"type":"refund","title":"caf\xe9"}', "not_utf8"),
    ("missing_fields_then_not_utf8", b'{"type":"login","zz":"\xff"}', "not_utf8"),
    ("unknown_type_then_nan", b'{"type":"refund","price":NaN}', "invalid_json"),
    ("unknown_type_then_surrogate", b'{"type":"refund","title":"\\ud800"}', "invalid_json"),
    ("unknown_type_then_truncated", b'{"type":"refund","ts":17000', "invalid_json"),
    ("missing_fields_then_garbage", b'{"type":"login"} garbage', "invalid_json"),
    ("not_object_then_garbage", b"[1,2] x", "invalid_json"),
    ("unknown_type_then_deep", b'{"type":"refund","zz":' + _DEEP + b"}", "too_deep"),
]


@pytest.mark.parametrize(
    ("raw", "error"),
    [case[1:] for case in NOT_JSON_AFTER_A_FIELD_ERROR],
    ids=[case[0] for case in NOT_JSON_AFTER_A_FIELD_ERROR],
)
def test_not_json_is_refused_before_any_field_rule(raw: bytes, error: str) -> None:
    verdict = decode_event(raw, NOW_MS)
    assert isinstance(verdict, Rejection) and verdict.error == error, verdict
    assert not schema_accepts(EVENT, raw)


def test_a_huge_number_is_still_json_after_a_field_error() -> None:
    raw = b'{"type":"refund","zz":1e400,"event_id":"e","user_id":"u","ts":1700000000000}'
    assert decode_event(raw, NOW_MS) == Rejection(
        "invalid_value", "Invalid enum value 'refund' - at `$.type`"
    )


# The label decoder against the label schema, as the corpus holds the event decoder to its own.
LABEL = "fraud_label.v1"


def _label(label: bytes = b"1", ts: bytes = b"1700000000000", tail: bytes = b"") -> bytes:
    return b'{"event_id":"e","user_id":"u","label":' + label + b',"ts":' + ts + tail + b"}"


LABEL_CASES: list[tuple[str, bytes, str | None, bool]] = [  # name, raw, error, schema agrees
    ("fraud", _label(), None, True),
    ("legitimate", _label(b"0", b"946684800000"), None, True),
    ("extra_field", _label(tail=b',"source":"chargeback"'), None, True),
    ("label_two", _label(b"2"), "invalid_label", True),
    ("label_true", _label(b"true"), "invalid_label", True),
    ("label_string", _label(b'"1"'), "invalid_label", True),
    ("ts_before_2000", _label(ts=b"946684799999"), "invalid_label", True),
    ("empty_user_id", _label().replace(b'"u"', b'""'), "invalid_label", True),
    ("no_event_id", _label().replace(b'"event_id":"e",', b""), "invalid_label", True),
    ("top_array", b"[" + _label() + b"]", "invalid_label", True),
    ("label_float", _label(b"1.0"), "invalid_label", False),
    ("ts_exponent", _label(ts=b"1.7e12"), "invalid_label", False),
    ("ts_integral_float", _label(ts=b"1700000000000.0"), "invalid_label", False),
    ("truncated", _label()[:-1], "invalid_json", True),
    ("nan_unknown", _label(tail=b',"x":NaN'), "invalid_json", True),
    ("not_utf8_unknown", _label(tail=b',"x":"\xff"'), "not_utf8", True),
    ("deep_unknown", _label(tail=b',"x":' + _DEEP), "too_deep", True),
    ("too_large", _label(tail=b',"x":"' + b"x" * 65_536 + b'"'), "too_large", False),
]


@pytest.mark.parametrize(
    ("raw", "error", "agrees"),
    [case[1:] for case in LABEL_CASES],
    ids=[case[0] for case in LABEL_CASES],
)
def test_label_decoder_and_schema_verdicts(raw: bytes, error: str | None, agrees: bool) -> None:
    verdict = decode_label(raw)
    if error is None:
        assert isinstance(verdict, Label), verdict
    else:
        assert isinstance(verdict, Rejection) and verdict.error == error, verdict
    accepted = schema_accepts(LABEL, raw)
    if agrees:
        assert accepted == (error is None)
    else:  # a runtime-only rule: the schema's $comment must name it
        assert accepted and error is not None
        assert f"`{error}`" in load_schema(LABEL)["$comment"]


def test_label_schema_says_its_integers_must_be_integer_literals() -> None:
    schema = load_schema(LABEL)
    for name in ("label", "ts"):
        assert "integer literal" in schema["properties"][name]["$comment"]
    assert "65536 bytes (`too_large`)" in schema["$comment"]


# One valid example per other contract, then single changes that must break it.
EXAMPLES: dict[str, dict[str, Any]] = {
    "fraud_label.v1": {"event_id": "e", "user_id": "u", "label": 1, "ts": 1_700_000_000_000},
    "profile_command.v1": {"command": "merge", "from_user_id": "anon-1", "user_id": "u"},
    "fraud_alert.v1": {
        "alert_id": "a",
        "user_id": "u",
        "event_id": "e",
        "ts": 1_700_000_000_000,
        "risk": 0.93,
        "threshold": 0.9,
        "reasons": [{"feature": "amount_z", "contribution": 0.4}],
        "model_version": "hst-1",
    },
    "profile_update.v1": {
        "user_id": "u",
        "version": 3,
        "updated": 1_700_000_000_500,
        "changed": ["count:view", "events"],
        "segment": None,
        "prev_segment": None,
        "risk": None,
        "risk_band": None,
        "events": 3,
        "spend": 0.0,
        "orders": 0,
        "last_seen": 1_700_000_000_000,
        "categories": [["sport.shoes", 1.5]],
        "vec_long": "AACAPw==",
    },
    "dead_letter.v1": {
        "error": "not_utf8",
        "detail": "invalid UTF-8 at byte 0",
        "topic": "behavior-events",
        "partition": 0,
        "offset": 7,
        "ts": 1_700_000_000_000,
        "key": None,
        "key_encoding": "text",
        "value": "/w==",
        "value_encoding": "base64",
    },
}
BREAKAGES: list[tuple[str, dict[str, Any]]] = [
    ("fraud_label.v1", {"label": 2}),
    ("fraud_label.v1", {"label": True}),
    ("profile_command.v1", {"from_user_id": None}),
    ("profile_command.v1", {"command": "delete"}),
    ("fraud_alert.v1", {"risk": 1.5}),
    ("fraud_alert.v1", {"reasons": [{"feature": "amount_z"}]}),
    ("profile_update.v1", {"risk_band": "extreme"}),
    ("profile_update.v1", {"categories": [["a", 1.0, 2]]}),
    ("profile_update.v1", {"vec_long": "not base64!"}),
    ("profile_update.v1", {"model": "minilm"}),
    ("dead_letter.v1", {"error": "bad"}),
    ("dead_letter.v1", {"value_encoding": "hex"}),
    ("dead_letter.v1", {"key_encoding": None}),
]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_other_contract_example_is_valid(name: str) -> None:
    validator(name).validate(EXAMPLES[name])


@pytest.mark.parametrize(("name", "changes"), BREAKAGES)
def test_other_contract_breakage_is_invalid(name: str, changes: dict[str, Any]) -> None:
    message = {**EXAMPLES[name], **changes}
    message = {key: value for key, value in message.items() if value is not None}
    assert not validator(name).is_valid(message)


# --- generated events -------------------------------------------------------------------------


def _text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(min_size=min_size, max_size=max_size)


_money = st.one_of(st.integers(0, 10_000_000), st.floats(0, 1e7, allow_nan=False))
_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    **{name: _text(128) for name in ("session_id", "device_id", "order_id", "brand")},
    **{name: _text(128) for name in ("payment_method", "card_fp")},
    "item_id": _text(128),
    "title": _text(512),
    "query": _text(512),
    "category": _text(256),
    "text": _text(4096),
    "rating": st.integers(1, 5),
    "price": _money,
    "amount": _money,
    "quantity": st.integers(1, 10_000),
    "currency": st.from_regex(r"\A[A-Z]{3}\Z"),
    "ip": _text(64),
    "country": st.from_regex(r"\A[A-Z]{2}\Z"),
    "success": st.booleans(),
}
_unknown = st.dictionaries(
    st.text(max_size=8).map(lambda key: f"x-{key}"),
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    max_size=20,
)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(EVENT_TYPES))
    event: dict[str, Any] = {
        "event_id": draw(_text(64, 1)),
        "user_id": draw(_text(128, 1)),
        "type": kind,
        "ts": draw(st.integers(MIN_TS_MS, NOW_MS)),
    }
    event.update(draw(st.fixed_dictionaries({}, optional=_OPTIONAL)))
    if kind in NEEDS_ITEM:
        event["item_id"] = draw(_text(128, 1))
    if kind == "search":
        event["query"] = draw(_text(512, 1))
    if kind == "purchase":
        event["amount"] = draw(_money)
    event.update(draw(_unknown))
    return event


_BREAKAGES: list[tuple[str, Any]] = [
    ("event_id", None),
    ("user_id", None),
    ("type", None),
    ("ts", None),
    ("event_id", ""),
    ("type", "refund"),
    ("ts", MIN_TS_MS - 1),
    ("ts", "1700000000000"),
    ("quantity", 0),
    ("quantity", 10_001),
    ("rating", 6),
    ("price", -1),
    ("amount", 1e7 + 1),
    ("currency", "usd"),
    ("currency", "EU"),
    ("currency", "ΣΩΔ"),  # upper-case letters, not A-Z
    ("country", "DEU"),
    ("country", "De"),
    ("country", "D1"),
    ("country", "ÄB"),
    ("title", "t" * 513),
    ("success", 1),
    ("forwarded_from", ""),
    ("forwarded_from", 7),
    ("forwarded_from", "f" * 129),
]


@given(valid_events())
def test_generated_valid_events_pass_both(event: dict[str, Any]) -> None:
    raw = encode(event)
    assert isinstance(decode_event(raw, NOW_MS), Event)
    assert schema_accepts(EVENT, raw)


@given(valid_events())
def test_a_forwarded_event_is_the_same_event_under_the_other_user(event: dict[str, Any]) -> None:
    decoded = decode_event(encode(event), NOW_MS)
    assert isinstance(decoded, Event)
    raw = forwarded_event(decoded, "account-1")
    assert schema_accepts(EVENT, raw)
    again = decode_event(raw, NOW_MS)
    assert again == msgspec.structs.replace(
        decoded, user_id="account-1", forwarded_from=decoded.user_id, ip=None
    )  # the IP left out: the body is kept in Redis until sent
    assert decode_event(forwarded_event(again, "account-2"), NOW_MS) == msgspec.structs.replace(
        decoded, user_id="account-2", forwarded_from=decoded.user_id, ip=None
    )  # the first user stays


@given(valid_events(), st.sampled_from(_BREAKAGES))
def test_one_broken_rule_fails_both(event: dict[str, Any], breakage: tuple[str, Any]) -> None:
    name, value = breakage
    if value is None:
        event.pop(name)  # None here means: drop the required field
    else:
        event[name] = value
    raw = encode(event)
    assert isinstance(decode_event(raw, NOW_MS), Rejection)
    assert not schema_accepts(EVENT, raw)
