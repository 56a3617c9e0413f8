"""Where a merged user's late event goes: to the user whose profile holds their events now.

A merge folds `from_user_id`'s profile into `user_id`'s and leaves a marker
on `from_user_id`: `{"erased": <merge time>, "into": <user_id>}`. An event of
`from_user_id` older than the merge, read after it, is no longer theirs: it is
sent again on the events topic under the user holding it now, marked with
`forwarded_from` (`Outcome.forwarded`). That holder is not always `user_id`:
merges chain (a visitor into a guest account, the guest into a registered
one) and loop (two ids of one person merged each way), so the holder is found
by following the markers in the store from the event's first user, its
origin (`forwarded_from`, or the user it was sent under).

Each step follows a merge made after the one that brought the events: from
the origin's merge at time t, the next user holds them unless it was itself
erased or merged away after t (its marker's time is later). Such a user
merged away passes them on from its own merge time; one erased (GDPR) took
them with it, and the event is suppressed. Times only grow along the walk, so
a loop ends at the user whose profile took the events last (after A -> B and
then B -> A, A holds all of both); the walk also ends after `MAX_MERGE_HOPS`
merges, and an event whose holder lies further is dead-lettered, never
dropped unsaid. Only a user's marker is read, so the walk runs only for
events older than their user's erasure, where the user was merged away or the
event was forwarded: ordinary users never pay for it. The receiving user walks
again from the origin, so a merge that landed while the event was on its way
(the holder merged on in turn) sends it further, and an event whose walk ends
at the user it was sent to is applied there, however old.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:  # both import this module
    from profiling.profile import Delivery, Profile
    from profiling.store import ProfileStore

MAX_MERGE_HOPS: Final = 8  # merges followed from a user (labels follow as many)


class Marker(NamedTuple):
    """What a user's erasure marker says: when they were erased, and for a merge, into whom."""

    erased_at: int
    merged_into: str | None = None


class Lost(enum.Enum):
    """Why an event older than a merge has no holder to go to."""

    ERASED = "erased"  # erased with the user holding it: suppressed, as its erasure says
    TOO_FAR = "too_far"  # more than `MAX_MERGE_HOPS` merges on: dead-lettered


Holder = str | Lost  # the user holding an origin's events now, or why there is none


def origin_of(profile: Profile, forwarded_from: str | None) -> str | None:
    """The first user of an event older than `profile`'s erasure: whose merge it follows
    (None: the user's own event after a plain erase, suppressed without a walk)."""
    if forwarded_from is not None:
        return forwarded_from
    return profile.user_id if profile.merged_into else None


async def merge_holders(
    loaded: Mapping[str, Profile], by_user: Mapping[str, Sequence[Delivery]], store: ProfileStore
) -> dict[str, Holder]:
    """The holder of each origin of this batch's events older than their user's erasure."""
    starts: dict[str, Marker | None] = {}
    elsewhere: list[str] = []  # origins not in this batch: their markers are read
    for user_id, deliveries in by_user.items():
        profile = loaded[user_id]
        erased = profile.erased_before
        if not erased:
            continue  # the hot path: a user never erased has no such event
        for event, _, _ in deliveries:
            if event.ts < erased:
                origin = origin_of(profile, event.forwarded_from)
                if origin is None or origin in starts:
                    continue
                starts[origin] = _marker(loaded[origin]) if origin in loaded else None
                if origin not in loaded:
                    elsewhere.append(origin)
    if not starts:
        return {}
    if elsewhere:
        starts.update(await store.markers(elsewhere))
    return await follow_merges(starts, store)


async def follow_merges(
    starts: Mapping[str, Marker | None], store: ProfileStore
) -> dict[str, Holder]:
    """Each origin's holder, from its own marker (None: it has none, its events are its own
    again, and one forwarded from it is suppressed, as before the walk)."""
    found: dict[str, Holder] = {}
    at: dict[str, tuple[int, str]] = {}  # origin -> (time the events moved, user reached)
    for origin, marker in starts.items():
        if marker is None or marker.merged_into is None:
            found[origin] = Lost.ERASED
        else:
            at[origin] = (marker.erased_at, marker.merged_into)
    for _hop in range(MAX_MERGE_HOPS):
        if not at:
            return found
        markers = await store.markers(list(dict.fromkeys(user for _, user in at.values())))
        moved: dict[str, tuple[int, str]] = {}
        for origin, (since, user) in at.items():
            marker = markers.get(user)
            if marker is None or marker.erased_at <= since:
                found[origin] = user  # erased before the events came, if ever: live since
            elif marker.merged_into is None:
                found[origin] = Lost.ERASED
            else:
                moved[origin] = (marker.erased_at, marker.merged_into)
        at = moved
    found.update((origin, Lost.TOO_FAR) for origin in at)
    return found


def _marker(profile: Profile) -> Marker | None:
    if not profile.erased_before:
        return None
    return Marker(profile.erased_before, profile.merged_into)
