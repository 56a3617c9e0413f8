"""`profile-commands`: the decoder against the schema, and erase through the engine."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from profiling.commands import Erase, Merge, apply_commands, decode_command
from profiling.events import Rejection
from profiling.pipeline import Record, apply_batch
from profiling.profile import Profile, ProfileParams
from profiling.store import InMemoryProfileStore, Write
from tests.schemas import schema_accepts, validator

NOW = 1_750_000_000_000
ERASED_AT = NOW - 3_600_000
COMMANDS = "profile-commands"
EVENTS = "behavior-events"


def command(body: Any, key: bytes | None = b"u", *, offset: int = 0, ts: int = ERASED_AT) -> Record:
    value = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    return Record(COMMANDS, 0, offset, key, value, ts)


def event(event_id: str, ts: int, offset: int, user: str = "u") -> Record:
    body = {"event_id": event_id, "user_id": user, "type": "login", "ts": ts}
    return Record(EVENTS, 0, offset, user.encode(), orjson.dumps(body))


# (body, the decoder's error code or None); the schema must agree on every one.
CASES: list[tuple[bytes, str | None]] = [
    (b'{"command":"erase","user_id":"u"}', None),
    (b'{"command":"erase","user_id":"u","reason":"GDPR art. 17"}', None),  # extras ignored
    (b'{"command":"merge","from_user_id":"anon-1","user_id":"u"}', None),
    (b'{"command":"erase"}', "invalid_command"),
    (b'{"command":"erase","user_id":""}', "invalid_command"),
    (b'{"command":"erase","user_id":"' + b"x" * 129 + b'"}', "invalid_command"),
    (b'{"command":"erase","user_id":7}', "invalid_command"),
    (b'{"command":"merge","user_id":"u"}', "invalid_command"),
    (b'{"command":"delete","user_id":"u"}', "invalid_command"),
    (b'{"user_id":"u"}', "invalid_command"),
    (b'["erase","u"]', "invalid_command"),
    (b'{"command":"erase","user_id":"u"', "invalid_json"),
]


@pytest.mark.parametrize(("raw", "error"), CASES)
def test_decoder_and_schema_agree(raw: bytes, error: str | None) -> None:
    verdict = decode_command(raw)
    if error is None:
        assert isinstance(verdict, Erase | Merge)
    else:
        assert isinstance(verdict, Rejection) and verdict.error == error
    assert schema_accepts("profile_command.v1", raw) == (error is None)


def test_erase_removes_the_profile_and_suppresses_older_events() -> None:
    store = InMemoryProfileStore()
    params = ProfileParams()

    async def scenario() -> None:
        before = await apply_batch([event("e1", ERASED_AT - 10, 0)], store, params, lambda: NOW)
        assert before.outcomes["applied"] == 1

        done = await apply_commands([command({"command": "erase", "user_id": "u"})], store, NOW)
        assert done.erased == ["u"] and done.commands == {"erased": 1}
        assert await store.read_profile("u") is None

        late = [event("e0", ERASED_AT - 1, 1), event("e2", ERASED_AT, 2), event("e3", NOW, 3)]
        after = await apply_batch(late, store, params, lambda: NOW)
        assert after.outcomes["suppressed"] == 1
        assert after.outcomes["applied"] == 2
        profile = (await store.load(["u"]))["u"]
        assert (profile.version, profile.events, profile.first_seen) == (1, 2, ERASED_AT)
        assert profile.erased_before == ERASED_AT

        # The command again (a replay): nothing is touched, the tombstone is sent again.
        again = await apply_commands([command({"command": "erase", "user_id": "u"})], store, NOW)
        assert again.erased == ["u"] and again.commands == {"repeated": 1}
        assert (await store.load(["u"]))["u"] == profile

        older = await apply_batch([event("e4", ERASED_AT - 5, 4)], store, params, lambda: NOW)
        assert older.outcomes["suppressed"] == 1 and not older.changes

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (command(b"not json"), "invalid_json"),
        (command(None), "invalid_json"),
        (command({"command": "erase", "user_id": "u"}, key=b"v"), "key_mismatch"),
        (command({"command": "erase", "user_id": "u"}, key=None), "key_mismatch"),
        (command({"command": "forget", "user_id": "u"}), "invalid_command"),
        (command({"command": "merge", "from_user_id": "a", "user_id": "u"}), "unsupported_command"),
    ],
)
def test_a_bad_command_is_a_dead_letter_and_touches_nothing(record: Record, error: str) -> None:
    store = InMemoryProfileStore()

    async def scenario() -> None:
        await store.save([Write(Profile("u", version=1, events=1), 0)])
        done = await apply_commands([record], store, NOW)
        assert done.erased == [] and done.commands == {"dead_lettered": 1}
        ((key, body),) = done.dead_letters
        letter = orjson.loads(body)
        validator("dead_letter.v1").validate(letter)
        assert key == record.key and letter["error"] == error
        assert (letter["topic"], letter["offset"]) == (COMMANDS, 0)
        assert await store.read_profile("u") is not None

    asyncio.run(scenario())


def test_a_record_without_a_timestamp_erases_at_the_clock() -> None:
    store = InMemoryProfileStore()
    untimed = command({"command": "erase", "user_id": "u"}, ts=-1)
    done = asyncio.run(apply_commands([untimed], store, NOW))
    assert done.commands == {"absent": 1}
    assert asyncio.run(store.load(["u"]))["u"].erased_before == NOW
