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

A user may be merged away more than once (a visitor merged into an account,
rebuilt from newer events, then merged into another), so a marker keeps the
user's earlier erasures too (`Marker.earlier`, the last `ERASURES_KEPT`): an
event went with the first erasure of its user later than the event itself
(`Marker.after`), which is where its walk starts. Each step follows a merge
made after the one that brought the events: from a merge at time t, the next
user holds them unless it was itself erased or merged away after t; then its
first erasure after t took them. Such a user merged away passes them on from
that merge's time; one erased (GDPR) took them with it, and the event is
suppressed. Times only grow along the walk, so
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
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:  # both import this module
    from profiling.profile import Delivery, Profile
    from profiling.store import ProfileStore

MAX_MERGE_HOPS: Final = 8  # merges followed from a user (labels follow as many)
ERASURES_KEPT: Final = 8  # a user's erasures before the last one that the marker keeps


class Lost(enum.Enum):
    """Why an event older than a merge has no holder to go to."""

    ERASED = "erased"  # erased with the user holding it: suppressed, as its erasure says
    # Dead-lettered, each saying which: the holder is more than `MAX_MERGE_HOPS` merges
    # on; or the event is older than every erasure that the marker of a user on its way
    # keeps (`ERASURES_KEPT` and the last), so which of them took it is not known.
    TOO_FAR = "too_far"
    OLDER_THAN_KEPT = "older_than_kept"


Erased = tuple[int, str | None]  # one erasure: its time, and for a merge, into whom


class Marker(NamedTuple):
    """What a user's erasure marker says: when they were erased, and for a merge, into whom;
    and their erasures before that one, oldest first (a profile rebuilt after each)."""

    erased_at: int
    merged_into: str | None = None
    earlier: tuple[Erased, ...] = ()

    def after(self, since: int) -> Erased | Lost | None:
        """The erasure that took the user's events of time `since`: the first one later
        than it. None: none is (the user holds them); `Lost.OLDER_THAN_KEPT`: they
        are older than every erasure the marker keeps, of which there may have been more."""
        if since >= self.erased_at:
            return None
        earlier = self.earlier
        if len(earlier) >= ERASURES_KEPT and since < earlier[0][0]:
            return Lost.OLDER_THAN_KEPT
        for erasure in earlier:
            if erasure[0] > since:
                return erasure
        return self.erased_at, self.merged_into


def earlier_erasures(marker: Marker | None) -> tuple[Erased, ...]:
    """The `earlier` of the marker an erase writes over `marker`, the user's last one."""
    if marker is None:
        return ()
    kept = (*marker.earlier, (marker.erased_at, marker.merged_into))
    return kept[-ERASURES_KEPT:]


Holder = str | Lost  # the user holding an origin's events now, or why there is none
# Per origin, (erasure time, holder) of each of its erasures its events went with,
# oldest first: an event goes to the holder of the first one later than it.
Routes = tuple[tuple[int, Holder], ...]
EVERY_TIME: Final = 2**63  # later than any event: the routes of an origin with no marker


def holder_of(routes: Routes, ts: int) -> Holder:
    """Where an origin's event of time `ts` goes (`Routes`)."""
    for until, holder in routes:
        if ts < until:
            return holder
    return Lost.ERASED  # not older than the origin's erasures: never forwarded from it


def origin_of(profile: Profile, forwarded_from: str | None) -> str | None:
    """The first user of an event older than `profile`'s erasure: whose merge it follows
    (None: the user's own event after plain erases only, suppressed without a walk)."""
    if forwarded_from is not None:
        return forwarded_from
    merged = profile.merged_into or any(into for _, into in profile.erased_earlier)
    return profile.user_id if merged else None


async def merge_holders(
    loaded: Mapping[str, Profile], by_user: Mapping[str, Sequence[Delivery]], store: ProfileStore
) -> dict[str, Routes]:
    """The routes of each origin of this batch's events older than their user's erasure."""
    times: dict[str, set[int]] = {}  # origin -> the times of its events here
    for user_id, deliveries in by_user.items():
        profile = loaded[user_id]
        erased = profile.erased_before
        if not erased:
            continue  # the hot path: a user never erased has no such event
        for event, _, _ in deliveries:
            if event.ts < erased:
                origin = origin_of(profile, event.forwarded_from)
                if origin is not None:
                    times.setdefault(origin, set()).add(event.ts)
    if not times:
        return {}
    starts = {origin: marker_of_profile(loaded[origin]) for origin in times if origin in loaded}
    if elsewhere := [origin for origin in times if origin not in loaded]:
        starts.update(await store.markers(elsewhere))
    return await follow_merges(starts, times, store)


async def follow_merges(
    starts: Mapping[str, Marker | None], times: Mapping[str, AbstractSet[int]], store: ProfileStore
) -> dict[str, Routes]:
    """Each origin's routes for its events of `times`, from its own marker (none: its
    events are its own again, and one forwarded from it is suppressed, as before)."""
    found, at = _first_steps(starts, times)
    for _hop in range(MAX_MERGE_HOPS):
        if not at:
            break
        markers = await store.markers(list(dict.fromkeys(user for _, user in at.values())))
        moved: dict[tuple[str, int], tuple[int, str]] = {}
        for start, (since, user) in at.items():
            marker = markers.get(user)
            erasure = None if marker is None else marker.after(since)
            if erasure is None:
                found[start] = user  # erased before the events came, if ever: live since
            elif isinstance(erasure, Lost):
                found[start] = erasure
            elif erasure[1] is None:
                found[start] = Lost.ERASED
            else:
                moved[start] = (erasure[0], erasure[1])
        at = moved
    found.update((start, Lost.TOO_FAR) for start in at)
    routes: dict[str, list[tuple[int, Holder]]] = {}
    for (origin, until), holder in sorted(found.items(), key=lambda item: item[0]):
        routes.setdefault(origin, []).append((until, holder))
    return {origin: tuple(route) for origin, route in routes.items()}


def _first_steps(
    starts: Mapping[str, Marker | None], times: Mapping[str, AbstractSet[int]]
) -> tuple[dict[tuple[str, int], Holder], dict[tuple[str, int], tuple[int, str]]]:
    """Where each origin's erasures that took its events of `times` sent them: placed
    already, by (origin, erasure time), or to walk on from (time, user merged into)."""
    found: dict[tuple[str, int], Holder] = {}
    at: dict[tuple[str, int], tuple[int, str]] = {}
    for origin, moments in times.items():
        marker = starts.get(origin)
        if marker is None:
            found[origin, EVERY_TIME] = Lost.ERASED
            continue
        for ts in moments:
            erasure = marker.after(ts)
            if isinstance(erasure, Lost):
                found[origin, marker.earlier[0][0]] = erasure
            elif erasure is not None:  # None: not older than the origin's erasures
                if erasure[1] is None:
                    found[origin, erasure[0]] = Lost.ERASED
                else:
                    at[origin, erasure[0]] = (erasure[0], erasure[1])
    return found, at


def marker_of_profile(profile: Profile) -> Marker | None:
    """The marker a loaded profile carries; None for a user never erased."""
    if not profile.erased_before:
        return None
    return Marker(profile.erased_before, profile.merged_into, profile.erased_earlier)
