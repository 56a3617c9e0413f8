"""Which users wait for a change message the heartbeat held back, and from when it is due.

A write that changed only counters publishes nothing until the heartbeat has
passed since the user's last message. The worker notes every such user here
with the partition their events come from; once a user's heartbeat has
passed, or their partition is let go, `profiling.pipeline.held_back_changes`
publishes what waited. A user published since (a later write's message, an
erase) is forgotten.

The index lives in the worker's memory, and a copy of it in Redis
(`HeldBackLedger`): one sorted set per partition of the events topic, users
by due time. The worker saves what changed in the index before it commits a
batch, and a worker given a partition reads that partition's set, so the
changes a worker held back when it crashed are published by the partition's
next owner, not only with their users' next events: as they stand, even when
marked published, since that worker may have died between its mark and its
message (`HeldBackIndex.restored`).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from profiling import jsonout
from stream.redis_store import as_text, eval_pipelined

# user -> (partition, due ms): what `take_due`, `take_partitions` and `take_all` give.
Taken = dict[str, tuple[int, int]]


@dataclass
class LedgerChanges:
    """What changed in an index since its last save: per partition, users and due times."""

    waiting: dict[int, dict[str, int]] = field(default_factory=dict)  # noted or due anew
    # Published, or forgotten: removed from the ledger unless due later there (noted
    # since by the partition's next owner).
    done: dict[int, dict[str, int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.waiting or self.done)


class HeldBackIndex:
    """Users with held-back changes: their partition and due time (ms), soonest first."""

    def __init__(self, heartbeat_ms: int) -> None:
        self.heartbeat_ms = heartbeat_ms
        self._due: dict[str, tuple[int, int]] = {}  # user -> (partition, due ms)
        self._queue: list[tuple[int, str]] = []  # (due ms, user); entries may be outdated
        # Since the last `unsaved()`, per user: (partition, due ms, still waiting).
        self._unsaved: dict[str, tuple[int, int, bool]] = {}
        self._restored: set[str] = set()  # users taken from the ledger, not noted here since

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._due

    def note(self, held_back: dict[str, tuple[int, int]], published: Iterable[str]) -> None:
        """After a batch: `published` users are up to date, `held_back` ones wait
        (user -> (partition, when their last message was published))."""
        for user_id in published:
            entry = self._due.pop(user_id, None)
            if entry is not None:
                self._unsaved[user_id] = (*entry, False)
                self._restored.discard(user_id)
        for user_id, (partition, published_at) in held_back.items():
            self._wait(user_id, partition, published_at + self.heartbeat_ms)
            self._restored.discard(user_id)
        if len(self._queue) > 2 * len(self._due) + 1024:  # mostly outdated entries
            self._queue = [(due, user) for user, (_, due) in self._due.items()]
            heapq.heapify(self._queue)

    def restore(self, partition: int, due: Mapping[str, int]) -> int:
        """Users of `partition` as its ledger holds them (user -> due ms), for a worker
        given the partition; those noted here already keep their entry. Returns how
        many were added."""
        added = 0
        for user_id, at in due.items():
            if user_id not in self._due:
                self._due[user_id] = (partition, at)
                heapq.heappush(self._queue, (at, user_id))
                self._restored.add(user_id)
                added += 1
        return added

    def restored(self, taken: Taken) -> Taken:
        """Those of `taken` that came from the ledger and were not noted here since: their
        last owner may have marked them published and died before the message went out.
        """
        again = {user: e for user, e in taken.items() if user in self._restored}
        self._restored.difference_update(taken)
        return again

    def _wait(self, user_id: str, partition: int, due: int) -> None:
        if self._due.get(user_id) != (partition, due):
            self._due[user_id] = (partition, due)
            heapq.heappush(self._queue, (due, user_id))
            self._unsaved[user_id] = (partition, due, True)

    def next_due(self) -> int | None:
        """The soonest due time (ms), or None when nobody waits."""
        queue, due = self._queue, self._due
        while queue:
            at, user_id = queue[0]
            if due.get(user_id, (0, None))[1] == at:
                return at
            heapq.heappop(queue)  # published or re-noted since
        return None

    def take_due(self, now_ms: int, skip: Collection[str] = ()) -> Taken:
        """The users due at `now_ms`, forgotten here; those in `skip` stay."""
        taken: Taken = {}
        skipped = []
        while (at := self.next_due()) is not None and at <= now_ms:
            entry = heapq.heappop(self._queue)
            if entry[1] in skip:
                skipped.append(entry)
                continue
            taken[entry[1]] = self._due.pop(entry[1])
        for entry in skipped:
            heapq.heappush(self._queue, entry)
        return taken

    def take_partitions(self, partitions: Collection[int]) -> Taken:
        """The users of these partitions, due or not, forgotten here."""
        taken = {user: e for user, e in self._due.items() if e[0] in partitions}
        for user_id in taken:
            del self._due[user_id]
        return taken

    def take_all(self) -> Taken:
        """Every user waiting, forgotten here."""
        taken, self._due = self._due, {}
        self._queue.clear()
        return taken

    def settled(self, taken: Taken) -> None:
        """Users taken here (`take_due` and the like) whose changes went out, or who had
        none left: the ledger forgets them too, unless they were noted again since."""
        for user_id, (partition, due) in taken.items():
            if user_id not in self._due:
                self._unsaved[user_id] = (partition, due, False)

    def unsaved(self) -> LedgerChanges:
        """What changed since the last call, for `HeldBackLedger.save`."""
        changes = LedgerChanges()
        for user_id, (partition, due, waiting) in self._unsaved.items():
            into = changes.waiting if waiting else changes.done
            into.setdefault(partition, {})[user_id] = due
        self._unsaved.clear()
        return changes


# KEYS: the ledgers of some partitions; ARGV[1]: JSON, per key [[user, due ms, ...] that
# wait, [user, due ms, ...] done]; ARGV[2]: the ledgers' TTL in ms (0: none). A user
# done is removed only when the ledger has them due no later than that: a later entry
# is the partition's next owner's. Each saved ledger's TTL starts again. A key holding
# anything but a sorted set is left alone; the reply lists those keys' indices.
SAVE_SCRIPT: Final = """
local changes, refused, ttl = cjson.decode(ARGV[1]), {}, tonumber(ARGV[2])
for k = 1, #KEYS do
  local kind = redis.call('TYPE', KEYS[k]).ok
  if kind ~= 'zset' and kind ~= 'none' then
    refused[#refused + 1] = k
  else
    local waiting, done = changes[k][1], changes[k][2]
    for i = 1, #waiting, 2 do redis.call('ZADD', KEYS[k], waiting[i + 1], waiting[i]) end
    for i = 1, #done, 2 do
      local due = redis.call('ZSCORE', KEYS[k], done[i])
      if due and tonumber(due) <= done[i + 1] then redis.call('ZREM', KEYS[k], done[i]) end
    end
    if ttl > 0 then redis.call('PEXPIRE', KEYS[k], ttl) else redis.call('PERSIST', KEYS[k]) end
  end
end
return refused
"""


class HeldBackLedger:
    """The held-back index's copy in Redis: a sorted set per partition, users by due time.

    `profiler:held-back:{<group_id>:<partition>}`: each partition's set has a hash
    tag of its own, so a Redis Cluster spreads the partitions over its slots.
    Redis ends a tag at its first `}`, so a group id with one would give every
    partition the same tag (or an empty one): such a group is tagged by its
    digest, as user ids are (`profiling.store.user_tag`), the id after the tag:
    `profiler:held-back:{<32 hex digits>:<partition>}=<group_id>`.
    One script call saves every partition's changes on a single node; on a
    cluster, one call per partition, each within one slot.

    Each save starts a saved set's TTL (`ttl_ms`; 0: none) again, so the sets of
    a consumer group that stopped for good do not stay in Redis forever. The
    default, 7 days, is Kafka's for the committed offsets of a group without
    members: once those are gone, the group starts the topic again anyway.
    """

    def __init__(self, client: aioredis.Redis, group_id: str, ttl_ms: int = 0) -> None:
        self.client = client
        self.group_id = group_id
        self.ttl_ms = ttl_ms
        self.per_call = 1 if isinstance(client, RedisCluster) else 1 << 16
        self._shas: dict[str, str] = {}
        self._tag, self._after = group_id, ""
        if "}" in group_id:
            self._tag = hashlib.blake2b(group_id.encode(), digest_size=16).hexdigest()
            self._after = f"={group_id}"

    def key(self, partition: int) -> str:
        return f"profiler:held-back:{{{self._tag}:{partition}}}{self._after}"

    async def save(self, changes: LedgerChanges) -> list[int]:
        """Add the users that wait (at their due time), drop the ones done; one round trip.

        Returns the partitions whose key holds something else than a sorted set:
        their changes are dropped, the others' saved.
        """
        partitions = sorted(changes.waiting.keys() | changes.done.keys())
        calls, chunks = [], []
        for start in range(0, len(partitions), self.per_call):
            chunk = partitions[start : start + self.per_call]
            body = [
                [_flat(changes.waiting.get(p, {})), _flat(changes.done.get(p, {}))] for p in chunk
            ]
            keys = [self.key(p) for p in chunk]
            calls.append((SAVE_SCRIPT, keys, [jsonout.dumps(body), self.ttl_ms]))
            chunks.append(chunk)
        replies = await eval_pipelined(self.client, self._shas, calls)
        return [
            chunk[k - 1] for chunk, refused in zip(chunks, replies, strict=True) for k in refused
        ]

    async def read(
        self, partitions: Collection[int]
    ) -> tuple[dict[int, dict[str, int]], dict[int, Exception]]:
        """Per partition, the users that wait in the ledger and when each is due (ms); and
        the partitions whose key Redis refused to read (another type), with the error."""
        if not partitions:
            return {}, {}
        pipe = self.client.pipeline(transaction=False)
        ordered = sorted(partitions)
        for partition in ordered:
            pipe.zrange(self.key(partition), 0, -1, withscores=True)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        errors = {p: r for p, r in zip(ordered, replies, strict=True) if isinstance(r, Exception)}
        waiting = {
            partition: {as_text(user): int(due) for user, due in reply}
            for partition, reply in zip(ordered, replies, strict=True)
            if partition not in errors
        }
        return waiting, errors


def _flat(due: Mapping[str, int]) -> list[str | int]:
    return [item for pair in due.items() for item in pair]
