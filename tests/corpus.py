"""The behaviour-event corpus: raw records and the verdict the v1 contract gives each.

One list, replayed in two places: `tests/unit/test_contracts.py` holds
`profiling.events.decode_event` and `schemas/behavior_event.v1.json` to these
verdicts, and an integration test sends the same bytes through a live worker.
So every valid `ts` lies well before `NOW_MS` and before the real date, and the
future `ts` values are 2100 or later; every valid case has its own `event_id`.

`schema_agrees=False` marks the few rules JSON Schema cannot state: the clock
bound, the byte size, integers written as floats, and duplicate keys (a JSON
parser keeps the last value; the decoder also checks the earlier ones).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

NOW_MS: Final = 1_748_736_000_000  # 2025-06-01T00:00:00Z
TS: Final = 1_700_000_000_000  # 2023-11-14T22:13:20Z
MIN_TS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
FAR_FUTURE_TS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z
DROP: Final[Any] = object()  # a field value meaning "leave the field out"

# The smallest valid event of each type (the per-type required field included).
_BASE: Final[dict[str, dict[str, Any]]] = {
    "view": {"item_id": "sku-1"},
    "click": {"item_id": "sku-2"},
    "search": {"query": "running shoes"},
    "add_to_cart": {"item_id": "sku-3"},
    "remove_from_cart": {"item_id": "sku-3"},
    "purchase": {"amount": 59.9},
    "review": {"item_id": "sku-4"},
    "login": {},
}


@dataclass(frozen=True)
class Case:
    """One raw record and the error code it must get (None: a valid event)."""

    name: str
    raw: bytes
    error: str | None
    schema_agrees: bool = True


def fields(name: str, kind: str = "view", **changes: Any) -> dict[str, Any]:
    """A valid event dict of `kind` with `changes` applied (`DROP` removes a field)."""
    body: dict[str, Any] = {"event_id": f"corpus-{name}", "user_id": "corpus-user", "type": kind}
    body["ts"] = TS
    body.update(_BASE[kind])
    body.update(changes)
    return {k: v for k, v in body.items() if v is not DROP}


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def ok(name: str, kind: str = "view", **changes: Any) -> Case:
    return Case(name, encode(fields(name, kind, **changes)), None)


def bad(name: str, error: str, kind: str = "view", **changes: Any) -> Case:
    return Case(name, encode(fields(name, kind, **changes)), error)


def runtime_only(name: str, error: str, kind: str = "view", **changes: Any) -> Case:
    """A case whose rule JSON Schema cannot state: the schema accepts it."""
    return Case(name, encode(fields(name, kind, **changes)), error, schema_agrees=False)


def with_raw(
    name: str, error: str | None, tail: bytes, agrees: bool = True, **changes: Any
) -> Case:
    """A login event (with `changes`) and raw JSON bytes spliced in before the closing brace."""
    head = encode(fields(name, "login", **changes))[:-1]
    return Case(name, head + b"," + tail + b"}", error, agrees)


def _padded(name: str, size: int) -> bytes:
    """A valid event padded by an unknown string field to exactly `size` bytes."""
    head = encode(fields(name, "login"))[:-1] + b',"padding":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def _wide(name: str, n_fields: int) -> bytes:
    body = fields(name, "login")
    body.update({f"x{i}": i for i in range(n_fields - len(body))})
    return encode(body)


_DEEP_ARRAY: Final = b"[" * 5000 + b"]" * 5000
_DEEP_OBJECT: Final = b'{"a":' * 5000 + b"1" + b"}" * 5000
_EVERY_FIELD: Final = {
    "session_id": "s-1",
    "device_id": "d-1",
    "item_id": "sku-9",
    "order_id": "o-1",
    "brand": "Acme",
    "title": "Acme phone 12",
    "query": "phone",
    "category": "electronics.smartphone",
    "text": "fine",
    "rating": 4,
    "price": 199.5,
    "amount": 399.0,
    "quantity": 2,
    "currency": "EUR",
    "payment_method": "card",
    "card_fp": "fp-3f2a",
    "ip": "203.0.113.7",
    "country": "DE",
    "success": True,
}

VALID: Final = [
    *(ok(f"type_{kind}", kind) for kind in _BASE),
    ok(
        "purchase_full",
        "purchase",
        order_id="o-7",
        price=29.95,
        quantity=2,
        amount=59.9,
        currency="EUR",
        payment_method="card",
        card_fp="fp-1",
        ip="198.51.100.4",
        country="FR",
    ),
    ok("review_full", "review", rating=5, text="Great battery, sturdy case.", title="Phone case"),
    ok("login_failed", "login", success=False, ip="2001:db8::1", device_id="d-7"),
    ok("search_with_category", "search", category="sport.shoes", session_id="s-2"),
    ok("every_field", "view", **_EVERY_FIELD),
    ok(
        "optional_null",
        "view",
        brand=None,
        session_id=None,
        price=None,
        rating=None,
        country=None,
        success=None,
    ),
    ok("optional_empty_strings", "view", brand="", title="", category="", session_id=""),
    ok(
        "unknown_fields",
        "click",
        referrer="newsletter",
        ab={"arm": "b", "ids": [1, 2.5, None]},
        flags=[True, False],
        note=None,
    ),
    ok(
        "unicode_text",
        "review",
        title="東京 スマートフォン 📱",
        text="Très bien — עברית ✓",
        user_id="użytkownik-ß",
    ),
    ok("unicode_max_length", "view", user_id="😀" * 128, item_id="é" * 128),
    ok(
        "max_lengths",
        "search",
        event_id="e" * 64,
        user_id="u" * 128,
        query="q" * 512,
        title="t" * 512,
        category="c" * 256,
        text="x" * 4096,
        ip="9" * 64,
        brand="b" * 128,
        session_id="s" * 128,
        device_id="d" * 128,
        order_id="o" * 128,
        payment_method="p" * 128,
        card_fp="f" * 128,
    ),
    ok("quantity_max", "add_to_cart", quantity=10_000),
    ok("quantity_min", "add_to_cart", quantity=1),
    ok("price_max", "view", price=1e7),
    ok("price_zero", "view", price=0),
    ok("price_integer_literal", "view", price=10),
    ok("amount_max", "purchase", amount=10_000_000),
    ok("amount_zero", "purchase", amount=0.0),
    ok("rating_min", "review", rating=1),
    ok("ts_min", "login", ts=MIN_TS),
    ok("ts_recent", "login", ts=NOW_MS - 31 * 86_400_000),
    Case("fields_64", _wide("fields_64", 64), None),
    # More colons than fields allowed, in a nested object and in a text: still 64 fields.
    Case(
        "fields_64_nested",
        _wide("fields_64_nested", 63)[:-1] + b',"zz":' + _wide("in", 70) + b"}",
        None,
    ),
    Case(
        "fields_64_colons",
        _wide("fields_64_colons", 63)[:-1] + b',"title":"' + b":" * 80 + b'"}',
        None,
    ),
    Case("size_64kib_exactly", _padded("size_64kib_exactly", 64 * 1024), None),
    Case("pretty_printed", json.dumps(fields("pretty_printed", "click"), indent=2).encode(), None),
    Case(
        "ascii_escapes",
        encode(fields("ascii_escapes", "search", query="caf\u00e9"))
        .replace("é".encode(), b"\\u00e9")
        .replace(b'"ts"', b'"\\u0074s"'),
        None,
    ),
    with_raw("price_negative_zero", None, b'"price":-0'),
    with_raw("unknown_huge_number", None, b'"zz":1e400'),
    with_raw("unknown_nested_100", None, b'"zz":' + b"[" * 100 + b"]" * 100),
]

INVALID: Final = [
    # Not JSON at all.
    Case("empty_bytes", b"", "invalid_json"),
    Case("whitespace_only", b" \n", "invalid_json"),
    Case("garbage", b"hello", "invalid_json"),
    Case("truncated", encode(fields("truncated"))[:-7], "invalid_json"),
    Case("trailing_comma", encode(fields("trailing_comma"))[:-1] + b",}", "invalid_json"),
    Case("single_quotes", b"{'event_id':'e','user_id':'u','type':'login','ts':1}", "invalid_json"),
    Case("trailing_data", encode(fields("trailing_data")) * 2, "invalid_json"),
    Case("utf8_bom", b"\xef\xbb\xbf" + encode(fields("utf8_bom")), "invalid_json"),
    with_raw("nan_literal", "invalid_json", b'"price":NaN'),
    with_raw("infinity_literal", "invalid_json", b'"price":Infinity'),
    with_raw("minus_infinity_unknown", "invalid_json", b'"zz":-Infinity'),
    with_raw("raw_control_char", "invalid_json", b'"title":"a\tb"'),
    with_raw("lone_surrogate", "invalid_json", b'"title":"\\ud800"'),
    with_raw("lone_surrogate_unknown", "invalid_json", b'"zz":"\\udfff"'),
    # Not UTF-8.
    with_raw("not_utf8_known", "not_utf8", b'"brand":"\xff\xfe"'),
    with_raw("not_utf8_unknown", "not_utf8", b'"zz":"\xff"'),
    with_raw("not_utf8_key", "not_utf8", b'"\xff":1'),
    with_raw("latin1_text", "not_utf8", b'"title":"caf\xe9"'),
    with_raw("utf8_overlong", "not_utf8", b'"title":"\xc0\xaf"'),
    with_raw("utf8_surrogate", "not_utf8", b'"title":"\xed\xa0\x80"'),
    # Shape and size.
    with_raw("deep_array_5000", "too_deep", b'"zz":' + _DEEP_ARRAY),
    with_raw("deep_object_5000", "too_deep", b'"zz":' + _DEEP_OBJECT),
    Case("top_array", encode([fields("top_array")]), "not_object"),
    Case("top_string", b'"view"', "not_object"),
    Case("top_number", b"17", "not_object"),
    Case("top_null", b"null", "not_object"),
    Case("top_true", b"true", "not_object"),
    Case("fields_65", _wide("fields_65", 65), "too_many_fields"),
    Case(
        "fields_65_spaced", _wide("fields_65_spaced", 65).replace(b":", b" : "), "too_many_fields"
    ),
    bad("too_large_text", "too_large", "review", text="x" * 70_000),
    Case(
        "too_large_padding",
        _padded("too_large_padding", 64 * 1024 + 1),
        "too_large",
        schema_agrees=False,
    ),
    # Required fields.
    *(
        bad(f"missing_{name}", "missing_field", **{name: DROP})
        for name in ("event_id", "user_id", "type", "ts")
    ),
    *(
        bad(f"{kind}_missing_item_id", "missing_field", kind, item_id=DROP)
        for kind in ("view", "click", "add_to_cart", "remove_from_cart", "review")
    ),
    bad("view_null_item_id", "missing_field", item_id=None),
    bad("view_empty_item_id", "missing_field", item_id=""),
    bad("search_missing_query", "missing_field", "search", query=DROP),
    bad("search_empty_query", "missing_field", "search", query=""),
    bad("purchase_missing_amount", "missing_field", "purchase", amount=DROP),
    bad("purchase_null_amount", "missing_field", "purchase", amount=None),
    bad("empty_event_id", "empty_field", event_id=""),
    bad("empty_user_id", "empty_field", user_id=""),
    # Wrong types.
    bad("ts_string", "wrong_type", ts=str(TS)),
    bad("ts_bool", "wrong_type", ts=True),
    bad("ts_fraction", "wrong_type", ts=1.5),
    bad("ts_null", "wrong_type", ts=None),
    bad("event_id_null", "wrong_type", event_id=None),
    bad("user_id_number", "wrong_type", user_id=42),
    bad("type_null", "wrong_type", type=None),
    bad("type_number", "wrong_type", type=1),
    bad("item_id_number", "wrong_type", item_id=7),
    bad("title_object", "wrong_type", title={"en": "x"}),
    bad("query_array", "wrong_type", "search", query=["a"]),
    bad("price_string", "wrong_type", price="9.99"),
    bad("amount_bool", "wrong_type", "purchase", amount=True),
    bad("rating_string", "wrong_type", "review", rating="5"),
    bad("quantity_null", "wrong_type", quantity=None),
    bad("currency_null", "wrong_type", currency=None),
    bad("success_string", "wrong_type", "login", success="yes"),
    # JSON Schema counts an integral float as an integer; the decoder wants an integer literal.
    runtime_only("ts_integral_float", "wrong_type", ts=float(TS)),
    with_raw("ts_exponent", "wrong_type", b'"ts":1.7e12', False, ts=DROP),
    runtime_only("rating_integral_float", "wrong_type", "review", rating=3.0),
    # Out of range.
    bad("ts_before_2000", "out_of_range", ts=MIN_TS - 1),
    bad("ts_negative", "out_of_range", ts=-1),
    with_raw("ts_1e400", "out_of_range", b'"ts":1e400', ts=DROP),
    with_raw("price_1e400", "out_of_range", b'"price":1e400'),
    with_raw("amount_1e400", "out_of_range", b'"amount":1e400'),
    with_raw("amount_minus_1e400", "out_of_range", b'"amount":-1e400'),
    bad("price_negative", "out_of_range", price=-0.01),
    bad("price_over_max", "out_of_range", price=10_000_000.01),
    bad("amount_negative", "out_of_range", "purchase", amount=-1),
    bad("quantity_zero", "out_of_range", quantity=0),
    bad("quantity_over_max", "out_of_range", quantity=10_001),
    bad("quantity_huge", "out_of_range", quantity=10**30),
    bad("rating_zero", "out_of_range", "review", rating=0),
    bad("rating_six", "out_of_range", "review", rating=6),
    bad("event_id_65", "out_of_range", event_id="e" * 65),
    bad("user_id_129", "out_of_range", user_id="u" * 129),
    bad("user_id_129_emoji", "out_of_range", user_id="😀" * 129),
    bad("item_id_129", "out_of_range", item_id="i" * 129),
    bad("title_513", "out_of_range", title="t" * 513),
    bad("query_513", "out_of_range", "search", query="q" * 513),
    bad("category_257", "out_of_range", category="c" * 257),
    bad("text_4097", "out_of_range", "review", text="x" * 4097),
    bad("ip_65", "out_of_range", ip="1" * 65),
    bad("card_fp_129", "out_of_range", "purchase", card_fp="f" * 129),
    # Invalid values.
    bad("type_unknown", "invalid_value", type="refund"),
    bad("type_upper_case", "invalid_value", type="VIEW"),
    bad("type_empty", "invalid_value", type=""),
    bad("currency_lower_case", "invalid_value", currency="usd"),
    bad("currency_two_letters", "invalid_value", currency="US"),
    bad("currency_four_letters", "invalid_value", currency="USDT"),
    bad("currency_trailing_newline", "invalid_value", currency="USD\n"),
    bad("country_three_letters", "invalid_value", country="USA"),
    bad("country_lower_case", "invalid_value", country="us"),
    bad("country_digit", "invalid_value", country="U1"),
    bad("country_trailing_newline", "invalid_value", country="US\n"),
    # The clock bound: the schema has no static maximum for ts.
    runtime_only("ts_year_2100", "ts_in_future", ts=FAR_FUTURE_TS),
    runtime_only("ts_huge", "ts_in_future", ts=10**23),
    # Duplicate keys: a JSON parser keeps the last; the decoder also rejects an invalid earlier one.
    with_raw(
        "duplicate_key_first_invalid",
        "invalid_value",
        b'"type":"refund","type":"login"',
        False,
        type=DROP,
    ),
]

CASES: Final[list[Case]] = [*VALID, *INVALID]
