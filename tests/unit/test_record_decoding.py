"""Labels and commands share the events' outer checks: size, UTF-8, depth, JSON.

A record of `fraud-labels` or `profile-commands` that is not JSON gets the code a
behaviour event with the same defect gets, and never an exception: one such
record must not stop a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiling.commands import decode_command
from profiling.events import MAX_EVENT_BYTES, Rejection, decode_event
from profiling.labels import apply_labels, decode_label
from profiling.messages import dead_letter
from profiling.models import ProfileModels
from profiling.pipeline import Record
from profiling.store import InMemoryProfileStore
from tests.corpus import NOW_MS
from tests.schemas import validator

LABEL = b'{"event_id":"e","user_id":"u","label":1,"ts":1700000000000'
COMMAND = b'{"command":"erase","user_id":"u"'
EVENT = b'{"event_id":"e","user_id":"u","type":"login","ts":1700000000000'
DECODERS: dict[str, tuple[bytes, Callable[[bytes], Any]]] = {
    "label": (LABEL, decode_label),
    "command": (COMMAND, decode_command),
    "event": (EVENT, lambda raw: decode_event(raw, NOW_MS)),
}

# (name, bytes spliced in before the closing brace, the code every decoder gives)
DEFECTS: list[tuple[str, bytes, str]] = [
    ("deep_array_2000", b',"x":' + b"[" * 2000 + b"]" * 2000, "too_deep"),
    ("deep_object_2000", b',"x":' + b'{"a":' * 2000 + b"1" + b"}" * 2000, "too_deep"),
    ("not_utf8_unknown", b',"x":"\xff"', "not_utf8"),
    ("not_utf8_key", b',"\xff":1', "not_utf8"),
    ("latin1_unknown", b',"x":"caf\xe9"', "not_utf8"),
    ("nan_unknown", b',"x":NaN', "invalid_json"),
    ("lone_surrogate_unknown", b',"x":"\\ud800"', "invalid_json"),
    ("trailing_comma", b",", "invalid_json"),
    ("too_large", b',"x":"' + b"x" * MAX_EVENT_BYTES + b'"', "too_large"),
]


@pytest.mark.parametrize("contract", sorted(DECODERS))
@pytest.mark.parametrize(("defect", "tail", "error"), DEFECTS, ids=[d[0] for d in DEFECTS])
def test_a_record_that_is_not_json_gets_the_events_code(
    contract: str, defect: str, tail: bytes, error: str
) -> None:
    head, decode = DECODERS[contract]
    verdict = decode(head + tail + b"}")
    assert isinstance(verdict, Rejection), f"{defect} accepted"
    assert verdict.error == error, verdict.detail


@pytest.mark.parametrize("contract", sorted(DECODERS))
@pytest.mark.parametrize("tail", [b',"x":"\\ud800"', b',"x":"ab\\ud800c"', b',"x":"\\\\\\ud800"'])
def test_a_lone_surrogate_near_the_end_is_said_so_not_called_truncated(
    contract: str, tail: bytes
) -> None:
    """msgspec reads six bytes past a high surrogate's escape for its low half: fewer
    left, and it called the whole record truncated."""
    head, decode = DECODERS[contract]
    verdict = decode(head + tail + b"}")
    assert isinstance(verdict, Rejection) and verdict.error == "invalid_json", verdict
    assert "lone utf-16 surrogate \\ud800" in verdict.detail, verdict.detail
    assert "truncated" not in verdict.detail
    letter = dead_letter(
        verdict, topic="t", partition=0, offset=1, key=b"u", value=head + tail, now_ms=NOW_MS
    )
    validator("dead_letter.v1").validate(orjson.loads(letter))


@pytest.mark.parametrize("contract", sorted(DECODERS))
@pytest.mark.parametrize("tail", [b',"x":"\\ud800', b',"x":"\\ud800\\udc00"', b',"x":"\\\\ud800"'])
def test_a_record_cut_short_is_still_called_truncated(contract: str, tail: bytes) -> None:
    """Cut short after a lone surrogate, or with none (a pair, an escaped backslash)."""
    head, decode = DECODERS[contract]
    verdict = decode(head + tail)
    assert isinstance(verdict, Rejection) and verdict.error == "invalid_json", verdict
    assert verdict.detail == "Input data was truncated"


@pytest.mark.parametrize("contract", sorted(DECODERS))
@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\xef\xbb\xbf{}", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"x":"\xff"} trailing', "not_utf8"),
        (b'{"x":1} trailing', "invalid_json"),
    ],
)
def test_whole_records_that_are_not_json(contract: str, raw: bytes, error: str) -> None:
    _, decode = DECODERS[contract]
    verdict = decode(raw)
    assert isinstance(verdict, Rejection) and verdict.error == error, verdict


@pytest.mark.parametrize(
    ("decode", "raw"),
    [
        (decode_label, b'{"label":7,"x":NaN}'),
        (decode_label, b'{"label":7,"event_id":"e","user_id":"u","ts":1'),
        (decode_command, b'{"command":"nuke","user_id":"u","x":"\\udfff"}'),
        (decode_command, b'{"command":"erase"} x'),
    ],
)
def test_bad_json_is_invalid_json_even_after_a_broken_field(
    decode: Callable[[bytes], Any], raw: bytes
) -> None:
    verdict = decode(raw)
    assert isinstance(verdict, Rejection) and verdict.error == "invalid_json", verdict


@given(st.binary(max_size=200))
def test_label_and_command_decoders_never_raise(raw: bytes) -> None:
    decode_label(raw)
    decode_command(raw)


async def test_label_dead_letters_are_counted_by_error_code() -> None:
    deep = b'{"event_id":"e","user_id":"u","label":1,"ts":1,"x":' + b"[" * 2000 + b"]" * 2000
    values = [b"{oops", b'{"event_id":"e","user_id":"u","label":7,"ts":1}', deep + b"}"]
    batch = [Record("fraud-labels", 0, offset, b"u", value) for offset, value in enumerate(values)]
    result = await apply_labels(batch, InMemoryProfileStore(), ProfileModels(), NOW_MS)
    assert result.errors == {"invalid_json": 1, "invalid_label": 1, "too_deep": 1}
    assert sum(result.errors.values()) == len(result.dead_letters) == result.outcomes["invalid"]
