"""Outgoing message bodies: profile changes and dead letters (schemas/*.v1.json)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, Final

from profiling import jsonout
from profiling.events import Rejection
from profiling.profile import Profile
from profiling.risk import risk_band
from profiling.rounding import round6


def change_message(
    profile: Profile,
    changed: Iterable[str],
    with_vector: bool = False,
    alert_threshold: float = 0.8,
) -> bytes:
    """A `profile_update.v1` body: the fields downstream consumers act on."""
    changed = frozenset(changed)
    # prev_segment is the segment the previous message carried: it differs only when
    # the segment moved since then (a move is always published at once).
    prev_segment = profile.prev_segment if "segment" in changed else profile.segment
    body: dict[str, Any] = {
        "user_id": profile.user_id,
        "version": profile.version,
        "updated": profile.updated,
        "changed": sorted(changed),
        "segment": profile.segment,
        "prev_segment": prev_segment,
        "risk": profile.risk,
        "risk_band": risk_band(profile.risk, alert_threshold),
        "events": profile.events,
        "spend": round6(profile.spend),
        "orders": profile.orders,
        "last_seen": profile.last_seen,
        "categories": profile.top_categories(),
    }
    if with_vector and profile.interest is not None and profile.interest.vec_long is not None:
        body["vec_long"] = base64.b64encode(profile.interest.vec_long).decode("ascii")
    return jsonout.dumps(body)


# Below aiokafka's and Kafka's default request and message limits (1 MiB), with room
# for the record's overhead: a dead letter the broker refused would be retried for ever.
# The dead letter's Kafka key (the refused record's) counts against it.
DEAD_LETTER_MAX_BYTES: Final = 1_000_000


def dead_letter(
    rejection: Rejection,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    now_ms: int,
) -> bytes:
    """A `dead_letter.v1` body: why a record was refused and the record itself, intact.

    The value and the key go as text when they are UTF-8, else as base64
    (DESIGN.md §3). What would take the dead letter (with `key` as its Kafka
    key) past `DEAD_LETTER_MAX_BYTES` goes as base64 when that is shorter (text
    full of control characters, six bytes each in JSON), else is left out, the
    value first, then the key's copy in the body (`value_encoding` /
    `key_encoding` "omitted"; the detail says so): the record is then read at
    its topic, partition and offset, while the topic keeps it.
    """
    value_text, encoding = _as_text(value)
    key_text, key_encoding = _as_text(key)
    body = {
        "error": rejection.error,
        "detail": rejection.detail[:1000],
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "ts": now_ms,
        "key": key_text,
        "key_encoding": key_encoding,
        "value": value_text,
        "value_encoding": encoding,
    }
    room = DEAD_LETTER_MAX_BYTES - len(key or b"")
    document = jsonout.dumps(body)
    # Base64 for each part where it is shorter, both before anything is left out: text
    # of a key full of control characters must not cost the value its place.
    for part, raw in (("value", value), ("key", key)):
        if len(document) <= room:
            break
        if raw is None or body[f"{part}_encoding"] != "text":
            continue
        coded = _base64(raw)
        if len(coded) + 2 < len(jsonout.dumps(body[part])):
            body.update({part: coded, f"{part}_encoding": "base64"})
            document = jsonout.dumps(body)
    left_out = []
    for part, raw in (("value", value), ("key", key)):
        if len(document) <= room:
            break
        if raw is None:  # a null value: nothing of it to leave out, the key may still be
            continue
        body.update({part: None, f"{part}_encoding": "omitted"})
        left_out.append(f"the {len(raw)}-byte {part}")
        note = f" ({' and '.join(left_out)} left out: too large for a dead letter)"
        body["detail"] = rejection.detail[: 1000 - len(note)] + note
        document = jsonout.dumps(body)
    return document


def _as_text(raw: bytes | None) -> tuple[str | None, str]:
    if raw is None:
        return None, "text"
    try:
        return raw.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return _base64(raw), "base64"


def _base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
