"""Where profiles live: the `ProfileStore` protocol, its storage layout, an in-memory twin.

The layout (documented for readers in `schemas/redis_profile.md`) is two keys
per user, both carrying the Redis Cluster hash tag `{user_id}` so they share a
shard and one Lua script can touch them atomically:

- `profile:{u}`        hash, the public profile every reader may rely on
- `profile-state:{u}`  internal bookkeeping: JSON (category scores, watermarks,
                       publication, ...), then a newline and the dedupe window's
                       8-byte event-id digests

and, for a user erased or merged away, the erasure marker apart from the state
(`profile-erased:{u}`), which outlives a profile built since and its TTL.

A write carries the version it was computed from and is refused when the stored
version moved on (compare-and-set): a worker that lost a partition, or any
other concurrent writer, cannot overwrite newer state.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from profiling import jsonout
from profiling.behaviour import Behaviour
from profiling.forwarding import Erased, Marker, earlier_erasures
from profiling.profile import Profile
from profiling.rounding import round6
from profiling.vectors import StoredInterest


def user_tag(user_id: str) -> str:
    """The user's part of each of their keys: `{<user_id>}`, a Redis Cluster hash tag,
    so that every key of a user lives in one slot.

    Redis ends a tag at its first `}`. An id that starts with one gives an empty
    tag (each key is then hashed whole, into slots of their own), and one with
    `}:` in it can make one user's key another's (`profile-scored:{a}:x}` is
    user `a}:x`'s index and user `a`'s event `x}`). Such ids, and those with
    `}=`, are tagged by their digest, the id itself after the tag:
    `{<32 hex digits>}=<user_id>`. No other id gives a key with `}=` after its
    first `}`, nor two of them one key; every other id, `}` or not, keeps
    `{<user_id>}`, whose tag is the same for all its keys.
    """
    if "}" not in user_id:  # the usual id: one search in C, no slice
        return f"{{{user_id}}}"
    if user_id[:1] != "}" and "}:" not in user_id and "}=" not in user_id:
        return f"{{{user_id}}}"
    return f"{{{hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()}}}={user_id}"


def user_of_key(key: str, prefix: str = "profile:") -> str:
    """The user id in one of their keys (`profile:{alice}` by default): `user_tag` undone."""
    tag = key[len(prefix) :]
    end = tag.find("}")
    if tag[end : end + 2] == "}=" and end == 33:
        return tag[end + 2 :]
    return tag[1:-1]


def legacy_keys(user_id: str) -> list[str]:
    """The keys a user whose tag is a digest had under `{<user_id>}` before: an erase
    removes them too (on a cluster they may lie in several slots). None for the rest.

    Their scored features are not among them: under the old names they may be
    another user's (`profile-scored:{a}:x}`), and they expire with their TTL.
    """
    if user_tag(user_id)[1:-1] == user_id or _DIGEST_TAGGED.match(f"{{{user_id}}}"):
        return []  # the second: its old names may be another user's keys now
    kinds = ("profile", "profile-state", "profile-erased", "profile-seen", "profile-aside",
             "profile-aside-state")  # fmt: skip
    return [f"{kind}:{{{user_id}}}" for kind in kinds]


_DIGEST_TAGGED: Final = re.compile(r"\{[0-9a-f]{32}\}=")


def profile_key(user_id: str) -> str:
    return f"profile:{user_tag(user_id)}"


def state_key(user_id: str) -> str:
    return f"profile-state:{user_tag(user_id)}"


def erased_key(user_id: str) -> str:
    """The user's erasure marker, kept apart from the state with the marker's own TTL."""
    return f"profile-erased:{user_tag(user_id)}"


def seen_key(user_id: str) -> str:
    """The dedupe window's key before it moved into the state (read once, then deleted)."""
    return f"profile-seen:{user_tag(user_id)}"


def aside_key(user_id: str) -> str:
    """A merged user's profile hash, kept aside until the merge is written."""
    return f"profile-aside:{user_tag(user_id)}"


def aside_state_key(user_id: str) -> str:
    return f"profile-aside-state:{user_tag(user_id)}"


def script_keys(user_id: str) -> tuple[str, str, str, str]:
    """The user's keys as the store's scripts take them: profile, state, the earlier
    dedupe key, erasure marker (one tag for the four)."""
    tag = user_tag(user_id)
    return f"profile:{tag}", f"profile-state:{tag}", f"profile-seen:{tag}", f"profile-erased:{tag}"


def scored_key(user_id: str, event_id: str) -> str:
    """Features of one scored event, kept (with a TTL) until its fraud label arrives:
    the user's index key, a colon, the event id (the save script relies on it)."""
    return f"{scored_index_key(user_id)}:{event_id}"


def scored_index_key(user_id: str) -> str:
    """The user's scored event ids, by expiry: what an erase finds their features by."""
    return f"profile-scored:{user_tag(user_id)}"


def scored_erasing_key(user_id: str) -> str:
    """The index of an erased user's scored features, until the erase has removed them
    (a profile rebuilt since starts an index of its own)."""
    return f"profile-scored-erasing:{user_tag(user_id)}"


@dataclass(frozen=True, slots=True)
class Write:
    """One user's new profile and the version it replaces.

    The write is refused unless the stored profile is still `expected_version`
    with the `updated` stamp `expected_updated` (0: any stamp). `keep_ttl`: the
    profile keeps the time it has left (`PROFILER_PROFILE_TTL_S`) instead of
    starting it again, for a write that is not the user's doing (the mark of a
    held-back change message as published): a profile expires after the user's
    last event, not after our last message.
    """

    profile: Profile
    expected_version: int
    scored: Sequence[tuple[str, bytes]] = ()  # (event_id, kept features) of scored events
    expected_updated: int = 0
    keep_ttl: bool = False


class Erasure(enum.Enum):
    """What `ProfileStore.erase` found."""

    ERASED = "erased"  # a profile was removed
    ABSENT = "absent"  # no profile: only the marker was written
    REPEATED = "repeated"  # already erased at or after that time (a replayed command)


ERASED_PREFIX: Final = b'{"erased":'  # a state that starts so carries an erasure time


def erasure_time(at_ms: int) -> int:
    """The time an erase at `at_ms` writes in its marker: at least 1 ms.

    A marker's time 0 reads as never erased (`Profile.erased_before`), and an
    erase at 0 would find the user erased at or after it already and touch
    nothing: a command record stamped 0 (a producer whose clock says 1970)
    still erases. No event is that old, so none is suppressed by it.
    """
    return max(at_ms, 1)


def erased_marker(
    at_ms: int, merged_into: str | None = None, earlier: Sequence[Erased] = ()
) -> bytes:
    """The state of a user erased at `at_ms` who has no profile (yet) since; for a merge,
    with the user merged into (`{"erased":<ms>,"into":<user_id>}`); with the user's
    erasures before (`"before":[[<ms>,<user_id> or null],...]`) when there were any."""
    return jsonout.dumps(_marker(at_ms, merged_into, earlier))


def merged_marker(
    at_ms: int, merged_into: str, state: bytes | None, earlier: Sequence[Erased] = ()
) -> bytes:
    """The state of a user merged into `merged_into` at `at_ms`, whose state was `state`:
    the marker, with their watermarks and dedupe window when they had a window.

    Their events the account holds now, read again (a replay, a producer's
    re-send), are then replays and duplicates here too, also those at or after
    the merge time (folded before the merge was read): else they would build a
    new profile of the visitor and count twice. Events older than the merge are
    forwarded as before. The Redis store keeps this state as long as a profile
    stays aside (a replay comes sooner), then the marker alone (`erased_marker`).
    """
    document, newline, seen = (state or b"").partition(b"\n")
    marker = erased_marker(at_ms, merged_into, earlier)
    if not newline:
        return marker
    watermarks = orjson.loads(document).get("wm", {})
    kept = {**_marker(at_ms, merged_into, earlier), "wm": watermarks}
    return jsonout.dumps(kept) + b"\n" + seen


def _marker(at_ms: int, merged_into: str | None, earlier: Sequence[Erased]) -> dict[str, object]:
    marker: dict[str, object] = {"erased": at_ms}
    if merged_into:
        marker["into"] = merged_into
    if earlier:
        marker["before"] = [list(erasure) for erasure in earlier]
    return marker


class ProfileStore(Protocol):
    """Batch-oriented profile storage: one round trip to load, one to write."""

    async def load(
        self, user_ids: Sequence[str], *, cached: bool = True, fold: bool = False
    ) -> dict[str, Profile]:
        """The stored profiles of these users (an empty `Profile` for a new one).

        `cached=False`: as the store holds them now, not as this process last wrote
        them (a store that keeps the profiles it wrote reads them again).
        `fold`: loaded for a batch to fold its events into, the loads a store that
        keeps profiles counts (`profiler_profile_loads`); not the reads of held-back
        changes or of commands.
        """
        ...

    async def save(self, writes: Sequence[Write]) -> list[str]:
        """Apply the writes; return the user ids whose write lost a version race."""
        ...

    async def read_profile(self, user_id: str) -> dict[str, str] | None:
        """The public profile fields as a reader sees them (vectors in base64), or None."""
        ...

    async def load_scored(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """Features kept for each (user_id, event_id) when it was scored; None once expired."""
        ...

    async def relabel_scored(self, values: Sequence[tuple[str, str, bytes]]) -> None:
        """Replace the features kept for each (user_id, event_id) with the value given (the
        same features with the label learnt from them), keeping their expiry; features
        gone meanwhile are not made again."""
        ...

    async def erase(self, user_id: str, at_ms: int) -> Erasure:
        """Remove every key of the user, leaving a marker that suppresses events older than
        `at_ms` (`erasure_time`: 0 erases as 1). Idempotent: a user already erased at or
        after `at_ms` is left alone."""
        ...

    async def set_aside(
        self, user_id: str, at_ms: int, merged_into: str
    ) -> tuple[Erasure, Profile | None]:
        """`erase` for a merge into `merged_into` (the marker names it: older events are
        forwarded there), keeping the profile aside until `drop_aside`: what `erase`
        found, and the profile aside or None. A replayed call (`Erasure.REPEATED`) finds
        the profile still aside, if it was not dropped yet. The features kept for the
        user's scored events move to `merged_into` (labels find them there), each with
        the time it had left."""
        ...

    async def merged_into(self, user_ids: Sequence[str]) -> dict[str, str]:
        """Of these users, those merged into another, and into whom (read from their
        stored state, never from a cache)."""
        ...

    async def markers(self, user_ids: Sequence[str]) -> dict[str, Marker]:
        """Of these users, those erased or merged away, with their marker (read from their
        stored state, never from a cache): a profile rebuilt since keeps it."""
        ...

    async def drop_aside(self, user_id: str) -> None:
        """Forget the profile `set_aside` kept (it is merged)."""
        ...


def decimal(value: float) -> str:
    """A number as the hash holds numbers: in decimal, its shortest form (Python's repr)
    where that has no exponent; 1e-05 is "0.00001" (the values are rounded to the
    millionth, so six places keep them whole)."""
    text = repr(value)
    if "e" not in text:
        return text
    return f"{value:.6f}".rstrip("0").rstrip(".")


def public_fields(profile: Profile, since: Profile | None = None) -> dict[str, str]:
    """The `profile:{u}` hash fields of a profile (DESIGN.md §3), as `public_items` lists
    them.

    With `since` (the profile whose fields the hash holds now), only the fields
    that may differ from it: each field is a function of the attributes it is
    compared on here, so the hash updated with these equals `public_fields(profile)`.
    """
    items = public_items(profile, since)
    return dict(zip(items[::2], items[1::2], strict=True))


def public_items(profile: Profile, since: Profile | None = None) -> list[str]:
    """`public_fields` flat, name then value: what the save script's HSET takes.

    Built flat, not as a dict flattened after: one write per user and batch
    spent about as much flattening the dict as building it.
    """
    items = [
        "version", str(profile.version),
        "updated", str(profile.updated),
        "events", str(profile.events),
    ]  # fmt: skip
    if since is None or profile.first_seen != since.first_seen:
        items += ("first_seen", str(profile.first_seen))
    if since is None or profile.last_seen != since.last_seen:
        items += ("last_seen", str(profile.last_seen))
    if since is None or profile.spend != since.spend:
        items += ("spend", decimal(round6(profile.spend)))
    if since is None or profile.orders != since.orders:
        items += ("orders", str(profile.orders))
    if since is None or profile.category_scores is not since.category_scores:
        items += ("categories", jsonout.dumps(profile.top_categories()).decode())
    before = {} if since is None else since.counts
    for kind, count in profile.counts.items():
        if before.get(kind) != count:
            items += (f"count:{kind}", str(count))
    if profile.model is not None and (since is None or profile.model != since.model):
        items += ("model", profile.model)
    if profile.segment is not None and (since is None or profile.segment != since.segment):
        items += ("segment", str(profile.segment))
    if profile.risk is not None and (
        since is None or profile.risk != since.risk or profile.risk_reasons != since.risk_reasons
    ):
        items += ("risk", decimal(profile.risk), "risk_reasons", profile.risk_reasons or "[]")
    return items


VECTOR_FIELDS = ("vec_long", "vec_short")


def vector_fields(profile: Profile, since: Profile | None = None) -> dict[str, bytes]:
    """The binary `profile:{u}` fields: float32 little-endian interest vectors, when present.

    With `since`, only the vectors that differ from its own.
    """
    interest = profile.interest
    if interest is None:
        return {}
    before = since.interest if since is not None else None
    pairs = (
        ("vec_long", interest.vec_long, before.vec_long if before else None),
        ("vec_short", interest.vec_short, before.vec_short if before else None),
    )
    return {name: value for name, value, old in pairs if value is not None and value != old}


def gone_vector_fields(profile: Profile, since: Profile | None = None) -> list[str]:
    """The vector fields a write must delete: vectors the profile no longer has (another
    encoder's, dropped). With `since`, only those it had; without, any a profile of
    the vector stage (`model` set) may have left."""
    interest = profile.interest
    if interest is not None and interest.vec_long is not None and interest.vec_short is not None:
        return []  # the usual case with vectors: both there
    if since is None:
        if profile.model is None:  # the usual case without: never had any
            return []
        had: tuple[bytes | None, ...] = (b"", b"")  # unknown: maybe
    else:
        before = since.interest
        if before is None:
            return []
        had = (before.vec_long, before.vec_short)
    now = (interest.vec_long, interest.vec_short) if interest else (None, None)
    return [
        name for name, new, old in zip(VECTOR_FIELDS, now, had, strict=True)
        if new is None and old is not None
    ]  # fmt: skip


def state_blob(profile: Profile) -> bytes:
    """The `profile-state:{u}` value: what the engine needs that readers do not.

    A JSON object, then, when the user has a dedupe window, a newline and the
    window's raw digests (compact JSON never holds a raw newline). A user erased
    before has the erasure time first (`ERASED_PREFIX`), where the store's
    scripts look for it.
    """
    state = {
        "cats": profile.category_scores,
        "wm": profile.watermarks,  # msgspec writes int keys as their decimal strings
        "pub_at": profile.published_at,
        "pub_v": profile.published_version,
        "unpub": _sorted_names(profile.unpublished),
        "interest": profile.interest.to_json() if profile.interest else None,
        "beh": profile.behaviour.to_json() if profile.behaviour else None,
        "seg": [profile.prev_segment, profile.segment_dwell],
        "alerts": profile.alerts,
    }
    if profile.forwards:
        state["fwd"] = profile.forwards
    if profile.alerts_before:
        state["alerts_b"] = profile.alerts_before
    if profile.forwards_before:
        state["fwd_b"] = profile.forwards_before
    if profile.dead_letters:
        state["dlq"] = profile.dead_letters
    if profile.dead_letters_before:
        state["dlq_b"] = profile.dead_letters_before
    if profile.merges:
        state["merges"] = profile.merges.hex()
    if profile.erased_before:
        marker = _marker(profile.erased_before, profile.merged_into, profile.erased_earlier)
        state = {**marker, **state}
    document = jsonout.dumps(state)
    return document + b"\n" + profile.seen if profile.seen else document


# `_sorted_names`' memory: a set of field names, those names sorted.
_SORTED_NAMES: Final[dict[frozenset[str], list[str]]] = {}
SORTED_NAMES_KEPT: Final = 4096


def _sorted_names(names: frozenset[str]) -> list[str]:
    """`sorted(names)`, remembered (the list is shared: never change it).

    A write's unpublished fields come from a small vocabulary, so the same few
    sets recur (about 100 in 1,000 writes at a time), and a lookup costs less
    than half a sort of their names. Forgotten all at once past
    `SORTED_NAMES_KEPT` sets.
    """
    found = _SORTED_NAMES.get(names)
    if found is None:
        if len(_SORTED_NAMES) >= SORTED_NAMES_KEPT:
            _SORTED_NAMES.clear()
        found = _SORTED_NAMES[names] = sorted(names)
    return found


def profile_from_storage(
    user_id: str,
    fields: Mapping[str, str],
    state: bytes | str | None,
    vectors: Mapping[str, bytes] | None = None,
) -> Profile:
    """Rebuild a `Profile` from its public hash (text and binary fields) and state blob.

    No hash: a new user, or one erased (the state is then the erasure marker).
    """
    if isinstance(state, str):
        state = state.encode()
    document, _, seen = (state or b"").partition(b"\n")
    internal = orjson.loads(document) if document else {}
    if not fields:  # the marker, if any, is all there is (a merge's with a window)
        return Profile(
            user_id,
            watermarks={int(p): int(o) for p, o in internal.get("wm", {}).items()},
            seen=seen,
            erased_before=int(internal.get("erased", 0)),
            merged_into=internal.get("into"),
            erased_earlier=_earlier(internal),
        )
    vectors = vectors or {}
    interest_json = internal.get("interest")
    interest = (
        StoredInterest.from_json(interest_json, vectors.get("vec_long"), vectors.get("vec_short"))
        if interest_json is not None
        else None
    )
    counts = {k[6:]: int(v) for k, v in fields.items() if k.startswith("count:")}
    behaviour = internal.get("beh")
    prev_segment, dwell = internal.get("seg") or (None, 0)
    return Profile(
        user_id=user_id,
        version=int(fields.get("version", 0)),
        first_seen=int(fields.get("first_seen", 0)),
        last_seen=int(fields.get("last_seen", 0)),
        updated=int(fields.get("updated", 0)),
        events=int(fields.get("events", 0)),
        counts=counts,
        spend=float(fields.get("spend", 0.0)),
        orders=int(fields.get("orders", 0)),
        category_scores=internal.get("cats", {}),
        watermarks={int(p): int(o) for p, o in internal.get("wm", {}).items()},
        published_at=int(internal.get("pub_at", 0)),
        published_version=int(internal.get("pub_v", 0)),
        unpublished=frozenset(internal.get("unpub", ())),
        seen=seen,
        interest=interest,
        model=fields.get("model"),
        behaviour=Behaviour.from_json(behaviour) if behaviour else None,
        segment=int(fields["segment"]) if "segment" in fields else None,
        prev_segment=prev_segment,
        segment_dwell=int(dwell),
        risk=float(fields["risk"]) if "risk" in fields else None,
        risk_reasons=fields.get("risk_reasons"),
        alerts=tuple(internal.get("alerts", ())),
        forwards=tuple((user, body) for user, body in internal.get("fwd", ())),
        alerts_before=tuple(internal.get("alerts_b", ())),
        forwards_before=tuple((user, body) for user, body in internal.get("fwd_b", ())),
        dead_letters=tuple((key, body) for key, body in internal.get("dlq", ())),
        dead_letters_before=tuple((key, body) for key, body in internal.get("dlq_b", ())),
        merges=bytes.fromhex(internal.get("merges", "")),
        erased_before=int(internal.get("erased", 0)),
        merged_into=internal.get("into"),
        erased_earlier=_earlier(internal),
    )


class InMemoryProfileStore:
    """The `ProfileStore` contract without a server, for unit tests and the engine's oracles."""

    def __init__(self) -> None:
        self._hashes: dict[str, dict[str, str]] = {}
        self._vectors: dict[str, dict[str, bytes]] = {}
        self._states: dict[str, bytes] = {}
        self._scored: dict[tuple[str, str], bytes] = {}
        self._aside: dict[str, Profile] = {}

    async def load(
        self, user_ids: Sequence[str], *, cached: bool = True, fold: bool = False
    ) -> dict[str, Profile]:
        return {
            user_id: profile_from_storage(
                user_id,
                self._hashes.get(user_id, {}),
                self._states.get(user_id),
                self._vectors.get(user_id),
            )
            for user_id in user_ids
        }

    async def save(self, writes: Sequence[Write]) -> list[str]:
        conflicts = []
        for write in writes:
            user_id = write.profile.user_id
            stored = self._hashes.get(user_id, {})
            if (
                int(stored.get("version", 0)) != write.expected_version
                or (
                    write.expected_updated
                    and int(stored.get("updated", 0)) != write.expected_updated
                )
                or (
                    not stored
                    and _erased_at(self._states.get(user_id)) != write.profile.erased_before
                )
            ):
                conflicts.append(user_id)
                continue
            self._hashes.setdefault(user_id, {}).update(public_fields(write.profile))
            vectors = self._vectors.setdefault(user_id, {})
            vectors.update(vector_fields(write.profile))
            for name in gone_vector_fields(write.profile):
                vectors.pop(name, None)
            self._states[user_id] = state_blob(write.profile)
            for event_id, features in write.scored:
                self._scored[(user_id, event_id)] = features
        return conflicts

    async def read_profile(self, user_id: str) -> dict[str, str] | None:
        fields = self._hashes.get(user_id)
        if not fields:
            return None
        vectors = self._vectors.get(user_id, {})
        return {**fields, **{k: base64.b64encode(v).decode() for k, v in vectors.items()}}

    async def load_scored(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        return [self._scored.get(key) for key in keys]

    async def relabel_scored(self, values: Sequence[tuple[str, str, bytes]]) -> None:
        for user_id, event_id, value in values:
            if (user_id, event_id) in self._scored:
                self._scored[user_id, event_id] = value

    async def erase(self, user_id: str, at_ms: int) -> Erasure:
        return self._erase(user_id, at_ms, None)

    def _erase(self, user_id: str, at_ms: int, merged_into: str | None) -> Erasure:
        at_ms = erasure_time(at_ms)
        if _erased_at(self._states.get(user_id)) >= at_ms:
            return Erasure.REPEATED
        existed = self._hashes.pop(user_id, None) is not None
        self._vectors.pop(user_id, None)
        self._aside.pop(user_id, None)
        state = self._states.get(user_id)
        earlier = earlier_erasures(marker_of(state))
        self._states[user_id] = (
            merged_marker(at_ms, merged_into, state, earlier)
            if merged_into
            else erased_marker(at_ms, None, earlier)
        )
        for key in [key for key in self._scored if key[0] == user_id]:
            del self._scored[key]
        return Erasure.ERASED if existed else Erasure.ABSENT

    async def set_aside(
        self, user_id: str, at_ms: int, merged_into: str
    ) -> tuple[Erasure, Profile | None]:
        (profile,) = (await self.load([user_id])).values()
        if _erased_at(self._states.get(user_id)) < erasure_time(at_ms):  # a replay: nothing
            for owner, event_id in [key for key in self._scored if key[0] == user_id]:
                self._scored[(merged_into, event_id)] = self._scored.pop((owner, event_id))
        erasure = self._erase(user_id, at_ms, merged_into)
        if erasure is Erasure.ERASED:
            self._aside[user_id] = profile
        return erasure, self._aside.get(user_id)

    async def drop_aside(self, user_id: str) -> None:
        self._aside.pop(user_id, None)

    async def merged_into(self, user_ids: Sequence[str]) -> dict[str, str]:
        found = {user_id: merged_into_of(self._states.get(user_id)) for user_id in user_ids}
        return {user_id: into for user_id, into in found.items() if into}

    async def markers(self, user_ids: Sequence[str]) -> dict[str, Marker]:
        found = {user_id: marker_of(self._states.get(user_id)) for user_id in user_ids}
        return {user_id: marker for user_id, marker in found.items() if marker is not None}


def merged_into_of(state: bytes | str | None) -> str | None:
    """The user a stored state says its user was merged into; None for any other state."""
    into = _marker_of(state).get("into")
    return into if isinstance(into, str) else None


def marker_of(state: bytes | str | None) -> Marker | None:
    """The erasure marker a stored state carries; None for a user never erased."""
    document = _marker_of(state)
    if not document:
        return None
    into = document.get("into")
    merged_into = into if isinstance(into, str) else None
    return Marker(int(document["erased"]), merged_into, _earlier(document))


def _earlier(document: Mapping[str, Any]) -> tuple[Erased, ...]:
    """The erasures before the last one that a marker (or a state that starts with one)
    keeps: `"before"`, absent when there were none."""
    return tuple((int(at), into) for at, into in document.get("before", ()))


def _erased_at(state: bytes | None) -> int:
    """The erasure time a stored state carries; 0 for none."""
    return int(_marker_of(state).get("erased", 0))


def _marker_of(state: bytes | str | None) -> dict[str, Any]:
    """The JSON document of a state that starts with an erasure marker; {} for any other."""
    if isinstance(state, str):
        state = state.encode()
    if not state or not state.startswith(ERASED_PREFIX):
        return {}
    marker: dict[str, Any] = orjson.loads(state.partition(b"\n")[0])
    return marker
