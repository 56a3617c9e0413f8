"""Which users wait for a change message the heartbeat held back, and from when it is due.

A write that changed only counters publishes nothing until the heartbeat has
passed since the user's last message. The worker notes every such user here
with the partition their events come from; once a user's heartbeat has
passed, or their partition is let go, `profiling.pipeline.held_back_changes`
publishes what waited. A user published since (a later write's message, an
erase) is forgotten.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable


class HeldBackIndex:
    """Users with held-back changes: their partition and due time (ms), soonest first."""

    def __init__(self, heartbeat_ms: int) -> None:
        self.heartbeat_ms = heartbeat_ms
        self._due: dict[str, tuple[int, int]] = {}  # user -> (partition, due ms)
        self._queue: list[tuple[int, str]] = []  # (due ms, user); entries may be outdated

    def __len__(self) -> int:
        return len(self._due)

    def note(self, held_back: dict[str, tuple[int, int]], published: Iterable[str]) -> None:
        """After a batch: `published` users are up to date, `held_back` ones wait
        (user -> (partition, when their last message was published))."""
        for user_id in published:
            self._due.pop(user_id, None)
        for user_id, (partition, published_at) in held_back.items():
            due = published_at + self.heartbeat_ms
            if self._due.get(user_id) != (partition, due):
                self._due[user_id] = (partition, due)
                heapq.heappush(self._queue, (due, user_id))
        if len(self._queue) > 2 * len(self._due) + 1024:  # mostly outdated entries
            self._queue = [(due, user) for user, (_, due) in self._due.items()]
            heapq.heapify(self._queue)

    def next_due(self) -> int | None:
        """The soonest due time (ms), or None when nobody waits."""
        queue, due = self._queue, self._due
        while queue:
            at, user_id = queue[0]
            if due.get(user_id, (0, None))[1] == at:
                return at
            heapq.heappop(queue)  # published or re-noted since
        return None

    def take_due(self, now_ms: int, skip: Collection[str] = ()) -> list[str]:
        """The users due at `now_ms`, forgotten here; those in `skip` stay."""
        taken, skipped = [], []
        while (at := self.next_due()) is not None and at <= now_ms:
            entry = heapq.heappop(self._queue)
            if entry[1] in skip:
                skipped.append(entry)
                continue
            del self._due[entry[1]]
            taken.append(entry[1])
        for entry in skipped:
            heapq.heappush(self._queue, entry)
        return taken

    def take_partitions(self, partitions: Collection[int]) -> list[str]:
        """The users of these partitions, due or not, forgotten here."""
        taken = [user for user, (partition, _) in self._due.items() if partition in partitions]
        for user_id in taken:
            del self._due[user_id]
        return taken

    def take_all(self) -> list[str]:
        """Every user waiting, forgotten here."""
        taken = list(self._due)
        self._due.clear()
        self._queue.clear()
        return taken
