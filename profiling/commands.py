"""Administrative commands on profiles: the `profile-commands` topic.

`erase` (GDPR, DESIGN.md §9) removes every key of a user, publishes a
tombstone (a `null` value under the user's key) on `profile-updates`, and
suppresses re-creation from events older than the erase: the user's state is
replaced by a marker holding the erasure time, and the fold drops any event
of theirs older than it (`Profile.erased_before`), counting it as
`suppressed`. Events at or after that time build a new profile, which keeps
the marker. The erasure time is the command record's Kafka timestamp, so a
replayed command erases nothing new (`Erasure.REPEATED`).

`merge` is part of the wire contract (`schemas/profile_command.v1.json`) but
not applied yet: its records become `unsupported_command` dead letters, whole,
to be replayed once a version applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Protocol

import msgspec

from profiling.events import (
    INVALID_COMMAND,
    INVALID_JSON,
    KEY_MISMATCH,
    UNSUPPORTED_COMMAND,
    Rejection,
)
from profiling.pipeline import BatchResult, SourceRecord, dead_letter_for
from profiling.store import ProfileStore

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class Erase(msgspec.Struct, frozen=True, tag_field="command", tag="erase"):
    user_id: UserId


class Merge(msgspec.Struct, frozen=True, tag_field="command", tag="merge"):
    from_user_id: UserId
    user_id: UserId


Command = Erase | Merge
_decoder = msgspec.json.Decoder(Command)


class CommandRecord(SourceRecord, Protocol):
    """A consumed command record: its Kafka timestamp is the command's time."""

    @property
    def timestamp(self) -> int: ...


def decode_command(raw: bytes | None) -> Command | Rejection:
    """A command, or why the record is not one."""
    if raw is None:
        return Rejection(INVALID_JSON, "record has no value (null)")
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return Rejection(INVALID_COMMAND, str(exc))
    except msgspec.DecodeError as exc:
        return Rejection(INVALID_JSON, str(exc))


async def apply_commands(
    records: Sequence[CommandRecord], store: ProfileStore, now_ms: int
) -> BatchResult:
    """Carry out a batch's command records in order: the users erased (a tombstone each,
    `BatchResult.erased`), counts by outcome (`BatchResult.commands`: erased, absent,
    repeated, dead_lettered) and dead letters for the bad ones."""
    result = BatchResult()
    for record in records:
        command = decode_command(record.value)
        if isinstance(command, Erase) and record.key != command.user_id.encode():
            command = Rejection(KEY_MISMATCH, "record key must be the command's user_id (UTF-8)")
        elif isinstance(command, Merge):
            command = Rejection(UNSUPPORTED_COMMAND, "merge is not applied by this version")
        if isinstance(command, Rejection):
            result.dead_letters.append((record.key, dead_letter_for(record, command, now_ms)))
            result.commands["dead_lettered"] += 1
            continue
        # The record's time, so that a replay finds the same erasure; a record
        # without one (timestamp -1) takes the worker's clock.
        at_ms = record.timestamp if record.timestamp >= 0 else now_ms
        erasure = await store.erase(command.user_id, at_ms)
        result.commands[erasure.value] += 1
        result.erased.append(command.user_id)
    return result
