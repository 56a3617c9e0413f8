"""Administrative commands on profiles: the `profile-commands` topic.

`erase` (GDPR, DESIGN.md §9) removes every key of a user, publishes a
tombstone (a `null` value under the user's key) on `profile-updates`, and
suppresses re-creation from events older than the erase: the user's state is
replaced by a marker holding the erasure time, and the fold drops any event
of theirs older than it (`Profile.erased_before`), counting it as
`suppressed`. Events at or after that time build a new profile, which keeps
the marker. The erasure time is the command record's Kafka timestamp, so a
replayed command erases nothing new (`Erasure.REPEATED`); a record without
one is dead-lettered (`UNTIMED`).

`merge` folds `from_user_id`'s profile into `user_id`'s (`profiling.merging`),
then erases `from_user_id` as above (a tombstone, a marker). It is safe to
crash anywhere in it and replay: the profile merged in is first set aside
under its own hash tag as `from_user_id` is erased (one script), so a worker
that folds `from_user_id`'s events meanwhile finds the marker, never a half
merged profile; the merge's digest then joins `user_id`'s dedupe window and
last merges (`Profile.merges`, which no number of later events pushes out)
with the merged write (compare-and-set), and the profile aside is dropped
last. A replay finds the profile still aside, or the digest already there.
`from_user_id`'s marker names `user_id`: their events older than the merge
that arrive after it (a worker may read the command before them, from another
topic) are forwarded to `user_id`, or to whoever holds its profile now where
it was merged on in turn (`profiling.forwarding`), not suppressed. It
also keeps their watermarks and dedupe window a while (`merged_marker`), so
their events merged already, read again, are not counted a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final, Protocol

import msgspec

from profiling.errors import StoreConflictError
from profiling.events import INVALID_COMMAND, KEY_MISMATCH, Rejection, decode_record
from profiling.merging import merge_marker, merge_profiles, merged_already
from profiling.messages import change_message
from profiling.pipeline import (
    MAX_WRITE_ATTEMPTS,
    BatchResult,
    SourceRecord,
    Stages,
    alert_messages,
    dead_letter_for,
)
from profiling.profile import Profile, ProfileParams
from profiling.store import Erasure, ProfileStore, Write
from profiling.vectors import VectorParams

MAX_USER_ID_CHARS = 128  # the events' user_id bound (DESIGN.md §3)
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_USER_ID_CHARS)]


class Erase(msgspec.Struct, frozen=True, tag_field="command", tag="erase"):
    user_id: UserId


class Merge(msgspec.Struct, frozen=True, tag_field="command", tag="merge"):
    from_user_id: UserId
    user_id: UserId


Command = Erase | Merge
_decoder = msgspec.json.Decoder(Command)

# A command's time is its record's Kafka timestamp: the one time that is the same on
# every replay. A record without one (-1, from a producer older than Kafka 0.10's
# record format) has no such time: the worker's clock would give a replay another,
# and a replayed erase would then erase a profile rebuilt since from newer events,
# a replayed merge merge it again. Such a command is refused, never guessed at.
UNTIMED: Final = (
    "the record has no timestamp (-1): a command takes its time from its record, so "
    "that a replay does the same; send it again from a producer that stamps records"
)


class CommandRecord(SourceRecord, Protocol):
    """A consumed command record: its Kafka timestamp is the command's time (none, -1:
    the command is refused, `UNTIMED`)."""

    @property
    def timestamp(self) -> int: ...


def decode_command(raw: bytes | None) -> Command | Rejection:
    """A command, or why the record is not one."""
    return decode_record(_decoder, raw, INVALID_COMMAND)


async def apply_commands(
    records: Sequence[CommandRecord],
    store: ProfileStore,
    now_ms: int,
    params: ProfileParams,
    stages: Stages,
) -> BatchResult:
    """Carry out a batch's command records in order.

    The result holds the users erased (a tombstone each, `BatchResult.erased`),
    the change message of each user merged into, counts by (command, outcome)
    (`BatchResult.commands`) and dead letters for the bad records.
    """
    result = BatchResult()
    for record in records:
        command = decode_command(record.value)
        if not isinstance(command, Rejection) and record.key != command.user_id.encode():
            command = Rejection(KEY_MISMATCH, "record key must be the command's user_id (UTF-8)")
        elif isinstance(command, Merge) and command.from_user_id == command.user_id:
            command = Rejection(INVALID_COMMAND, "a merge needs two users: from_user_id is user_id")
        elif record.timestamp < 0:
            command = Rejection(INVALID_COMMAND, UNTIMED)
        if isinstance(command, Rejection):
            result.dead_letters.append((record.key, dead_letter_for(record, command, now_ms)))
            result.errors[command.error] += 1
            result.commands["invalid", "dead_lettered"] += 1
            continue
        at_ms = record.timestamp  # the record's own: a replay finds the same erasure
        if isinstance(command, Erase):
            erasure = await store.erase(command.user_id, at_ms)
            result.commands["erase", erasure.value] += 1
            await _tombstone(command.user_id, erasure, store, stages, result)
        else:
            erasure, outcome = await _merge(command, at_ms, store, now_ms, params, stages, result)
            result.commands["merge", outcome] += 1
            await _tombstone(command.from_user_id, erasure, store, stages, result)
    return result


async def _tombstone(
    user_id: str, erasure: Erasure, store: ProfileStore, stages: Stages, result: BatchResult
) -> None:
    """The erased user's tombstone; after it, when a replayed command finds a profile
    built since from newer events, that profile's change message again.

    The first tombstone may never have been acked, so a replay sends it again; a
    reader that saw the rebuilt profile meanwhile would then drop it, and the
    change message that follows gives it back.
    """
    # Tombstones go out before a batch's change messages (a profile rebuilt since is
    # newer than its erasure), so a change message of this user from an earlier
    # command of the batch, a merge into them, would come after it: dropped, as the
    # tombstone says what is left of it.
    result.changes = [(user, body) for user, body in result.changes if user != user_id]
    result.erased.append(user_id)
    if erasure is Erasure.REPEATED:
        (current,) = (await store.load([user_id])).values()
        if not current.is_new:
            _publish(current, result, stages)


async def _merge(  # noqa: PLR0917 - one command's whole context
    command: Merge,
    at_ms: int,
    store: ProfileStore,
    now_ms: int,
    params: ProfileParams,
    stages: Stages,
    result: BatchResult,
) -> tuple[Erasure, str]:
    """Fold `from_user_id` into `user_id` (see the module doc): what erasing
    `from_user_id` found, and the outcome's name."""
    erasure, taken = await store.set_aside(command.from_user_id, at_ms, command.user_id)
    if taken is None and erasure is not Erasure.REPEATED:
        return erasure, erasure.value  # nothing to merge: erased, as asked
    marker = merge_marker(command.from_user_id, at_ms)
    interests = stages.interests
    vectors = interests.params if interests is not None else VectorParams()
    models = interests.model_ids if interests is not None else ()
    outcome = Erasure.REPEATED.value
    for _attempt in range(MAX_WRITE_ATTEMPTS):
        # As Redis holds it, not as this worker last wrote it: a worker that held the
        # partition meanwhile may have merged it already (then this is a replay, and a
        # stale copy without the merge's digest would publish nothing).
        (known,) = (await store.load([command.user_id], cached=False)).values()
        if merged_already(known, marker):  # merged before a crash: publish again
            if known.is_new:  # the marker of `user_id`, merged on or erased since
                break  # its tombstone went out: a message now would bring it back
            _publish(known, result, stages)
            # With the alerts of the account's last two writes, as a replayed batch
            # sends them: the merge's own (the visitor's, maybe never acked) are among
            # them unless the account wrote twice since.
            result.alerts += alert_messages(known.alerts_before + known.alerts)
            break
        if taken is None:  # a replay with nothing aside, and never merged
            break
        merged = merge_profiles(
            known, taken, marker, params=params, vectors=vectors, now_ms=now_ms, models=models
        )
        if not await store.save([Write(merged, known.version, (), known.updated)]):
            _publish(merged, result, stages)
            result.alerts += alert_messages(merged.alerts)  # the visitor's, maybe never acked
            result.users_written += 1
            outcome = "merged"
            break
    else:
        raise StoreConflictError(f"merge into {command.user_id!r} kept losing the version race")
    if taken is not None:
        await store.drop_aside(command.from_user_id)
    return erasure, outcome


def _publish(profile: Profile, result: BatchResult, stages: Stages) -> None:
    """The change message of `profile` as stored (again, on a replay: readers keep the
    highest version, so a repeat is harmless)."""
    threshold = stages.models.alert_threshold if stages.models is not None else 0.8
    body = change_message(profile, profile.unpublished, stages.vector_in_updates, threshold)
    result.changes.append((profile.user_id, body))
