"""The `ProfileStore` on a real Redis: one pipelined round trip to load a batch's
users, one to write them, each write a compare-and-set Lua script on one user's
hash-tagged keys (so it is atomic on a single node and on Redis Cluster alike).

A worker owns its users' partitions, so the profile it wrote last is, almost
always, the one it will load next: the store keeps the profiles it wrote in a
bounded LRU (`cache_users`) and does not read those users at all (their dedupe
window is part of the profile), so a batch of cached users costs no load round
trip. The cache is safe because every write is compare-and-set
on the version *and* the `updated` stamp it was computed from: when anything
else wrote the user meanwhile (a partition that moved away and back, an
expired or erased profile), the write is refused, the user dropped from the
cache, and the pipeline reloads it from Redis and recomputes.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

try:
    import hiredis
except ImportError:  # redis[hiredis] brings it; without it redis-py packs in Python
    hiredis = None  # type: ignore[assignment]

from profiling import jsonout
from profiling.forwarding import ERASURES_KEPT, Marker
from profiling.profile import Profile, event_digest, evolve
from profiling.store import (
    VECTOR_FIELDS,
    Erasure,
    Write,
    aside_key,
    aside_state_key,
    erased_key,
    erased_marker,
    erasure_time,
    gone_vector_fields,
    legacy_keys,
    marker_of,
    merged_into_of,
    profile_from_storage,
    profile_key,
    public_items,
    scored_erasing_key,
    scored_index_key,
    scored_key,
    script_keys,
    state_blob,
    state_key,
    vector_fields,
)

# Both scripts serve several users per call, up to four keys each (profile, state,
# the dedupe window's key of earlier versions, and the erasure marker kept apart
# from the state: the save sends the last two only when it may touch them), and
# take each call's per-user arguments as one JSON document: packing a few long
# arguments costs the client far less than thousands of short ones, and the
# client's CPU, not the server's, is what limits a worker. Every key of one user
# carries the same hash tag: on a Redis Cluster client the store serves one user per
# call.

# Reads whole profiles (the users the store does not hold). Returns one flat array,
# per user: the number n of hash items, the n items (field, value, ...), the state
# (or, once it expired, the erasure marker kept apart) or false, then the number m
# of ids in an earlier version's dedupe sorted set and the m ids, oldest first (read
# only when the state has no window of its own). Flat, because Redis 6 writes a
# nested script reply in many small pieces: 130 users' replies took four times as
# long nested.
LOAD_SCRIPT: Final = """
local out, n = {}, 0
for k = 1, #KEYS, 4 do
  local hash = redis.call('HGETALL', KEYS[k])
  n = n + 1; out[n] = #hash
  for j = 1, #hash do n = n + 1; out[n] = hash[j] end
  local state = redis.call('GET', KEYS[k + 1]) or redis.call('GET', KEYS[k + 3])
  n = n + 1; out[n] = state
  local ids = {}
  if not state or not string.find(state, '\\n', 1, true) then
    ids = redis.call('ZRANGE', KEYS[k + 2], 0, -1)
  end
  n = n + 1; out[n] = #ids
  for j = 1, #ids do n = n + 1; out[n] = ids[j] end
end
return out
"""

# KEYS: per user, their profile and state, then the two keys of LOAD_SCRIPT's four
# that the write may touch, when it may: the dedupe key of earlier versions (to
# delete) and the erasure marker kept apart (read for a new profile); then, for a
# user with scored events, the index of their scored events (`profile-scored:{u}`)
# and one key per scored event (the index's name, a colon, the event id). Each key
# is one more argument for the client to pack and for Redis to read: a write to a
# user it holds sends two.
# ARGV: ttl ms, JSON [[expected version, ARGV index of the state blob,
#       [field, value, ...], [binary field, ARGV index, ...],
#       expected updated stamp or 0 for any, KEYS index of an earlier version's
#       dedupe key to delete or 0, expected erasure time or 0 for none, scored
#       events: [] or [KEYS index of the user's scored index, ARGV index of the
#       first event's features, number of events, time of the write (ms)], vector
#       fields to delete, 1 to keep the profile's TTL as it is (a write that is no
#       activity of the user's: the mark of a held-back change message as
#       published), KEYS index of the profile (the state's follows), KEYS index of
#       the erasure marker kept apart (a new profile's; else 0)], ...],
#       one entry per user, the scored features' TTL in seconds, then the binary
#       values: vectors, state blobs and scored features, which JSON cannot carry
#       (the state ends in raw digests).
# Returns per user 1 when written, 0 when the stored version (or stamp) was not the
# expected one (compare-and-set: a stale writer changes nothing, its scored features
# included). A new profile (version 0) is also refused when the user's erasure
# marker is not the one it was folded from: an erase that landed meanwhile.
# A written user's scored features each get the scored TTL; their index (a sorted
# set of event ids by expiry) gains the ids, loses the expired ones and gets the TTL
# too, so an erase finds every key without a scan.
SAVE_SCRIPT: Final = """
local ttl, scored_ttl = tonumber(ARGV[1]), tonumber(ARGV[3])
local writes = cjson.decode(ARGV[2])
local results = {}
local function erased_at(state)
  return tonumber(state and string.match(state, '^{"erased":(%d+)') or '0')
end
local function save_scored(index, first, n, now)
  local expiry, skip = now + scored_ttl * 1000, #KEYS[index] + 2
  for i = 1, n do
    redis.call('SET', KEYS[index + i], ARGV[first + i - 1], 'EX', scored_ttl)
    redis.call('ZADD', KEYS[index], expiry, string.sub(KEYS[index + i], skip))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[index], '-inf', now)
  redis.call('EXPIRE', KEYS[index], scored_ttl)
end
for u = 1, #writes do
  local write = writes[u]
  local k = write[11]
  local stored = redis.call('HMGET', KEYS[k], 'version', 'updated')
  if tonumber(stored[1] or '0') ~= write[1]
      or (write[5] ~= 0 and tonumber(stored[2] or '0') ~= write[5])
      or (write[1] == 0 and erased_at(
        redis.call('GET', KEYS[k + 1]) or redis.call('GET', KEYS[write[12]])) ~= write[7]) then
    results[u] = 0
  else
    local fields = write[3]
    for i = 1, #fields, 1000 do
      redis.call('HSET', KEYS[k], unpack(fields, i, math.min(i + 999, #fields)))
    end
    local binary = write[4]
    for j = 1, #binary, 2 do redis.call('HSET', KEYS[k], binary[j], ARGV[binary[j + 1]]) end
    if #write[9] > 0 then redis.call('HDEL', KEYS[k], unpack(write[9])) end
    if write[10] == 1 then
      redis.call('SET', KEYS[k + 1], ARGV[write[2]], 'KEEPTTL')
    else
      redis.call('SET', KEYS[k + 1], ARGV[write[2]])
    end
    if write[6] ~= 0 then redis.call('DEL', KEYS[write[6]]) end
    if write[10] == 1 then  -- the hash and the state keep the time they have left
    elseif ttl > 0 then
      redis.call('PEXPIRE', KEYS[k], ttl)
      redis.call('PEXPIRE', KEYS[k + 1], ttl)
    else  -- kept: also a hash an earlier setting gave a TTL (SET cleared the state's)
      redis.call('PERSIST', KEYS[k])
    end
    local scored = write[8]
    if #scored > 0 then save_scored(scored[1], scored[2], scored[3], scored[4]) end
    results[u] = 1
  end
end
return results
"""


# KEYS: one user's profile, state, earlier dedupe key and erasure marker, then the
# two keys a merge sets the profile aside in; ARGV: the erasure time (ms), the marker
# (the state of an erased user), the marker's TTL in ms (0: none), and, for a merge,
# how long the profile stays aside (ms; 0: an erase, nothing kept). The marker is
# written twice, as the state and apart from it: a profile rebuilt since replaces
# the state and gives it the profile's TTL, and the marker apart, which only an
# erase writes, keeps suppressing older events for the marker's own TTL once that
# state has expired.
# KEYS[7] and KEYS[8]: the user's index of scored features and where an erase moves
# it (`scored_erasing_key`): the caller then drops, or for a merge moves, the
# features it lists, and deletes it. An erase cut short leaves it for the next
# call, and a profile rebuilt since keeps its own index.
# A merge's marker as the state keeps the user's watermarks and dedupe window
# (`merged_marker`), for as long as the profile stays aside or the marker lives,
# whichever is shorter; the marker apart, and the state once that expired, hold the
# marker alone.
# Returns {found}, and for a merge {found, field, value, ..., state} of the profile
# aside. found: 1 when a profile was removed, 0 when there was none, 2 when the user
# was already erased at or after that time (a replayed command: nothing is touched,
# so a profile rebuilt since from newer events stays, and a merge finds the profile
# it set aside, if that was not dropped yet).
# ARGV[5]: how many erasures before the last one a marker keeps. The new marker
# gains the one it replaces (`"before"`: `[[<ms>, <user_id> or null], ...]`, oldest
# first), so an event older than an earlier merge still finds where it went.
ERASE_SCRIPT: Final = """
local state = redis.call('GET', KEYS[2])
local marker = state or redis.call('GET', KEYS[4])
local erased = tonumber(marker and string.match(marker, '^{"erased":(%d+)') or '0')
local aside, marker_ttl = tonumber(ARGV[4]), tonumber(ARGV[3])
local found = 2
local function with_earlier(mark)
  local last = cjson.decode(string.match(marker, '^[^\\n]*'))
  local erasures = last.before or {}
  erasures[#erasures + 1] = {last.erased, last.into or cjson.null}
  local kept = {}
  for i = math.max(1, #erasures - tonumber(ARGV[5]) + 1), #erasures do
    local at, into = erasures[i][1], erasures[i][2]
    into = into ~= cjson.null and cjson.encode(into) or 'null'
    kept[#kept + 1] = string.format('[%d,%s]', at, into)
  end
  return string.sub(mark, 1, -2) .. ',"before":[' .. table.concat(kept, ',') .. ']}'
end
if erased < tonumber(ARGV[1]) then
  local mark = erased > 0 and with_earlier(ARGV[2]) or ARGV[2]
  local left = redis.call('PTTL', KEYS[7])
  if left ~= -2 then  -- the index exists: joins what an erase cut short left
    local kept = redis.call('PTTL', KEYS[8])
    redis.call('ZUNIONSTORE', KEYS[8], 2, KEYS[8], KEYS[7], 'AGGREGATE', 'MAX')
    redis.call('DEL', KEYS[7])
    if left > 0 and kept ~= -1 then redis.call('PEXPIRE', KEYS[8], math.max(left, kept)) end
  end
  found = redis.call('EXISTS', KEYS[1])
  redis.call('DEL', KEYS[5], KEYS[6])
  if found == 1 and aside > 0 then
    redis.call('RENAME', KEYS[1], KEYS[5])
    redis.call('PEXPIRE', KEYS[5], aside)
    if state then redis.call('SET', KEYS[6], state, 'PX', aside) end
  end
  redis.call('DEL', KEYS[1], KEYS[3])
  for _, key in ipairs({KEYS[2], KEYS[4]}) do
    redis.call('SET', key, mark)
    if marker_ttl > 0 then redis.call('PEXPIRE', key, marker_ttl) end
  end
  local nl = aside > 0 and state and string.find(state, '\\n', 1, true)
  if nl then  -- a merge: the state's marker keeps the watermarks and window a while
    local wm = string.match(string.sub(state, 1, nl - 1), '"wm":(%b{})') or '{}'
    local kept = string.sub(mark, 1, -2) .. ',"wm":' .. wm .. '}' .. string.sub(state, nl)
    local ttl = marker_ttl > 0 and math.min(marker_ttl, aside) or aside
    redis.call('SET', KEYS[2], kept, 'PX', ttl)
  end
end
if aside == 0 then return {found} end
local out = redis.call('HGETALL', KEYS[5])
table.insert(out, 1, found)
out[#out + 1] = redis.call('GET', KEYS[6])
return out
"""
# KEYS: one user's scored-feature keys. Returns, per key, the time it has left (ms;
# -2 when it is gone) and its features.
READ_SCORED_SCRIPT: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('PTTL', key)
  out[2 * i] = redis.call('GET', key)
end
return out
"""
# KEYS[1]: the index of the user a merge moves scored features to, then one key per
# event (that index's name, a colon, the event id); ARGV: per key, the time it has
# left (ms) and its features. The index keeps the later of its expiry and theirs.
MOVE_SCORED_SCRIPT: Final = """
local skip, longest = #KEYS[1] + 2, 0
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 2, #KEYS do
  local left = tonumber(ARGV[2 * i - 3])
  redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'PX', left)
  redis.call('ZADD', KEYS[1], now + left, string.sub(KEYS[i], skip))
  if left > longest then longest = left end
end
if redis.call('PTTL', KEYS[1]) < longest then redis.call('PEXPIRE', KEYS[1], longest) end
return #KEYS - 1
"""
ASIDE_TTL_MS: Final = 86_400_000  # a merge's profile aside outlives any replay of the merge
_ERASURES: Final = {0: Erasure.ABSENT, 1: Erasure.ERASED, 2: Erasure.REPEATED}
UNLINK_CHUNK: Final = 1000  # keys per UNLINK when an erase removes scored features
BINARY_ARGV: Final = 3  # the save script's arguments before its binary values


async def compact_hash_limit(client: aioredis.Redis) -> int | None:
    """The largest value a hash may hold and keep Redis's compact encoding; None if unknown.

    A profile hash with vectors holds two 4 x dim-byte values; past this limit
    Redis converts it to a hashtable, which costs about 1.4 KB more per profile.
    CONFIG may be disabled (managed Redis): then nobody can tell, and None.
    """
    try:
        reply = await client.config_get("hash-max-*-value")
    except RedisError:
        return None
    values = [int(value) for value in reply.values() if value is not None]
    return min(values) if values else None


def connect(url: str, *, cluster: bool = False) -> aioredis.Redis:
    """A client for `url` (redis://, rediss:// for TLS, user:password@ for ACL users).

    With `cluster`, a Redis Cluster client (any node's URL): it sends each
    command to the node owning its keys' hash slot, and `RedisProfileStore`
    then keeps every script call to one user (a user's keys share a hash tag,
    different users' keys do not).
    """
    if cluster:
        return RedisCluster.from_url(url, decode_responses=False)  # type: ignore[return-value]
    client = aioredis.Redis.from_url(url, decode_responses=False, health_check_interval=30)
    pool = client.connection_pool
    pool.connection_class = _packing_in_c(pool.connection_class)
    return client


_PACKED: dict[type[Any], type[Any]] = {}


def _packing_in_c(base: type[Any]) -> type[Any]:
    """`base` (TCP, TLS or Unix socket connection) packing commands with hiredis.

    redis-py's asyncio connections pack every command in Python, growing one
    buffer argument by argument; a save with hundreds of keys and values spent
    more in that packing than Redis spent running the script. The synchronous
    client already packs with hiredis; this gives the asyncio one the same.
    """
    if hiredis is None:
        return base

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "SCRIPT LOAD" and the like: one word per argument
            args = (*args[0].encode().split(), *args[1:])
        return [hiredis.pack_command(args)]

    if base not in _PACKED:
        name = f"HiredisPacked{base.__name__}"
        _PACKED[base] = type(name, (base,), {"pack_command": pack_command})
    return _PACKED[base]


class RedisProfileStore:
    """Profiles in Redis, laid out as `profiling.store` documents."""

    def __init__(
        self,
        client: aioredis.Redis,
        ttl_s: int = 0,
        *,
        users_per_call: int | None = None,
        scored_ttl_s: int = 30 * 86_400,
        cache_users: int = 0,
        erased_ttl_s: int = 0,
    ) -> None:
        self.client = client
        self.ttl_ms = ttl_s * 1000
        self.erased_ttl_ms = erased_ttl_s * 1000  # how long an erasure marker stays; 0: always
        self.scored_ttl_s = scored_ttl_s
        # Default: 200 users per script call; one on a cluster, where each call's keys
        # must share a hash slot and only one user's keys share a hash tag.
        self.users_per_call = users_per_call or (1 if isinstance(client, RedisCluster) else 200)
        self.cache_users = cache_users
        self._cache: OrderedDict[str, Profile] = OrderedDict()  # as last written, oldest first
        self._shas: dict[str, str] = {}
        # Users a fold built on (`load(fold=True)`), by where their stored profile came from.
        self.loads_from_cache = 0
        self.loads_from_redis = 0

    @property
    def cached_users(self) -> int:
        return len(self._cache)

    async def load(
        self, user_ids: Sequence[str], *, cached: bool = True, fold: bool = False
    ) -> dict[str, Profile]:
        loaded: dict[str, Profile] = {}
        missing: list[str] = []
        for user_id in user_ids:
            held = self._cache.get(user_id) if cached else None
            if held is None:
                missing.append(user_id)
            else:
                loaded[user_id] = held
        if fold:  # what the cache spares folds; held-back changes and commands read Redis
            self.loads_from_cache += len(loaded)
            self.loads_from_redis += len(missing)
        if not missing:
            return loaded
        calls: list[tuple[list[str], list[Any]]] = [
            (_user_keys(chunk), []) for chunk in _chunks(missing, self.users_per_call)
        ]
        reply = _flatten(await self._run(LOAD_SCRIPT, calls))
        at = 0
        for user_id in missing:
            items = reply[at]
            flat, state = reply[at + 1 : at + 1 + items], reply[at + 1 + items]
            at += items + 2
            legacy_ids = reply[at + 1 : at + 1 + reply[at]]
            at += reply[at] + 1
            fields, vectors = _split_fields(flat)
            profile = profile_from_storage(user_id, fields, state, vectors)
            if legacy_ids and not profile.seen:
                seen = b"".join(event_digest(as_text(event_id)) for event_id in legacy_ids)
                profile = evolve(profile, seen=seen)
            loaded[user_id] = profile
        return loaded

    async def save(self, writes: Sequence[Write]) -> list[str]:
        # A write's scored features ride in its entry of the save script, written only
        # when its compare-and-set passes: a refused writer leaves no key behind (an
        # erased user stays erased) and overwrites no other writer's features.
        calls = []
        cache = self._cache
        for chunk in _chunks(list(writes), self.users_per_call):
            binary: list[bytes] = []
            keys: list[str] = []
            payload = [
                _write_entry(write, keys, binary, cache.get(write.profile.user_id))
                for write in chunk
            ]
            args = [self.ttl_ms, jsonout.dumps(payload), self.scored_ttl_s, *binary]
            calls.append((keys, args))
        # Cached as sent, before the reply: the worker folds its next batch while Redis
        # runs this one, from these profiles. A refused write drops its user; so does an
        # error, when nobody can tell which writes landed.
        if self.cache_users:
            for write in writes:
                cache[write.profile.user_id] = write.profile
                cache.move_to_end(write.profile.user_id)
            while len(cache) > self.cache_users:
                cache.popitem(last=False)
        try:
            replies = await self._run(SAVE_SCRIPT, calls)
        except BaseException:
            for write in writes:
                cache.pop(write.profile.user_id, None)
            raise
        conflicts = []
        for write, ok in zip(writes, _flatten(replies), strict=True):
            if not ok:
                conflicts.append(write.profile.user_id)
                cache.pop(write.profile.user_id, None)  # someone else wrote it: reload
        return conflicts

    async def load_scored(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        if not keys:
            return []
        names = [scored_key(u, e) for u, e in keys]
        if isinstance(self.client, RedisCluster):  # one MGET per hash slot
            values = await self.client.mget_nonatomic(names)
        else:
            values = await self.client.mget(names)
        return [value.encode() if isinstance(value, str) else value for value in values]

    async def relabel_scored(self, values: Sequence[tuple[str, str, bytes]]) -> None:
        if not values:
            return
        pipe = self.client.pipeline(transaction=False)
        for user_id, event_id, value in values:  # XX: not made again once expired
            pipe.set(scored_key(user_id, event_id), value, xx=True, keepttl=True)
        await pipe.execute()

    async def erase(self, user_id: str, at_ms: int) -> Erasure:
        """`ProfileStore.erase`: the user's keys in one script, then the user's scored
        features (`_drop_scored`)."""
        (found,) = await self._erase(user_id, at_ms, 0)
        return _ERASURES[int(found)]

    async def set_aside(
        self, user_id: str, at_ms: int, merged_into: str
    ) -> tuple[Erasure, Profile | None]:
        reply = await self._erase(user_id, at_ms, ASIDE_TTL_MS, merged_into)
        fields, vectors = _split_fields(reply[1:-1])
        erasure = _ERASURES[int(reply[0])]
        if not fields:
            return erasure, None
        return erasure, profile_from_storage(user_id, fields, reply[-1], vectors)

    async def merged_into(self, user_ids: Sequence[str]) -> dict[str, str]:
        states = await self._marker_states(user_ids)
        merged = zip(user_ids, map(merged_into_of, states), strict=True)
        return {user: into for user, into in merged if into}

    async def markers(self, user_ids: Sequence[str]) -> dict[str, Marker]:
        states = await self._marker_states(user_ids)
        found = zip(user_ids, map(marker_of, states), strict=True)
        return {user: marker for user, marker in found if marker is not None}

    async def _marker_states(self, user_ids: Sequence[str]) -> list[bytes | str | None]:
        """Each user's state, or where it expired, the marker kept apart (one MGET)."""
        if not user_ids:
            return []
        names = [state_key(user_id) for user_id in user_ids]
        names += [erased_key(user_id) for user_id in user_ids]  # where a state expired
        if isinstance(self.client, RedisCluster):  # one MGET per hash slot
            values = await self.client.mget_nonatomic(names)
        else:
            values = await self.client.mget(names)
        states, markers = values[: len(user_ids)], values[len(user_ids) :]
        return [
            marker if state is None else state
            for state, marker in zip(states, markers, strict=True)
        ]

    async def drop_aside(self, user_id: str) -> None:
        await self.client.delete(aside_key(user_id), aside_state_key(user_id))

    async def _erase(
        self, user_id: str, at_ms: int, aside_ms: int, merged_into: str | None = None
    ) -> list[Any]:
        self._cache.pop(user_id, None)
        erasing = scored_erasing_key(user_id)
        keys = [*_user_keys([user_id]), aside_key(user_id), aside_state_key(user_id),
                scored_index_key(user_id), erasing]  # fmt: skip
        at_ms = erasure_time(at_ms)
        marker = erased_marker(at_ms, merged_into)
        args = [at_ms, marker, self.erased_ttl_ms, aside_ms, ERASURES_KEPT]
        (reply,) = await eval_pipelined(self.client, self._shas, [(ERASE_SCRIPT, keys, args)])
        # After the script, not in it: the feature keys are only known from the index,
        # which the script set aside. On every call, a replayed one too, so a crash in
        # between leaves nothing behind.
        listed = await self.client.zrange(erasing, 0, -1)
        event_ids = [as_text(event_id) for event_id in listed]  # type: ignore[arg-type]
        if merged_into:
            await self._move_scored(user_id, event_ids, merged_into)
        await self._drop_scored(user_id, event_ids)
        if legacy := legacy_keys(user_id):  # on every call too: written by nothing now
            await self._drop_legacy(legacy)
        return list(reply)

    async def _drop_legacy(self, legacy: list[str]) -> None:
        """The keys a user had before their tag became a digest; one key a call, as a
        cluster may hold them in several slots."""
        for key in legacy:
            await self.client.unlink(key)

    async def _move_scored(self, user_id: str, event_ids: list[str], to_user_id: str) -> None:
        """Copy these scored features of the user to `to_user_id`, each with the time it
        has left. Two users are two hash slots: read in one script, written in another."""
        for chunk in _chunks(event_ids, UNLINK_CHUNK):
            keys = [scored_key(user_id, event_id) for event_id in chunk]
            (found,) = await eval_pipelined(
                self.client, self._shas, [(READ_SCORED_SCRIPT, keys, [])]
            )
            moved_keys, moved_args = [scored_index_key(to_user_id)], list[Any]()
            for event_id, left, features in zip(chunk, found[::2], found[1::2], strict=True):
                if int(left) > 0 and features is not None:
                    moved_keys.append(scored_key(to_user_id, event_id))
                    moved_args += (int(left), features)
            if moved_args:
                await eval_pipelined(
                    self.client, self._shas, [(MOVE_SCORED_SCRIPT, moved_keys, moved_args)]
                )

    async def _drop_scored(self, user_id: str, event_ids: list[str]) -> None:
        """Delete these scored features of the user, then the index an erase set aside."""
        for chunk in _chunks(event_ids, UNLINK_CHUNK):
            await self.client.unlink(*[scored_key(user_id, event_id) for event_id in chunk])
        await self.client.unlink(scored_erasing_key(user_id))

    async def read_profile(self, user_id: str) -> dict[str, str] | None:
        raw = await self.client.hgetall(profile_key(user_id))
        flat = [item for pair in raw.items() for item in pair]
        fields, vectors = _split_fields(flat)
        encoded = {name: base64.b64encode(value).decode() for name, value in vectors.items()}
        return {**fields, **encoded} or None

    async def _run(self, script: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run `script` once per (keys, args) call, all in one pipelined round trip."""
        if not calls:
            return []
        every = [(script, keys, args) for keys, args in calls]
        return await eval_pipelined(self.client, self._shas, every)


async def eval_pipelined(
    client: aioredis.Redis, shas: dict[str, str], calls: Sequence[tuple[str, list[str], list[Any]]]
) -> list[Any]:
    """Each (script, keys, args) as an EVALSHA, all in one pipelined round trip; the replies.

    `shas` remembers the SHA1 of each script loaded through this client. A
    server that forgot them (a restart, SCRIPT FLUSH) refuses every call with
    NOSCRIPT: the scripts are loaded again and the trip sent once more, so the
    callers' scripts must be safe to run again.
    """
    try:
        return await _eval_once(client, shas, calls)
    except NoScriptError:
        shas.clear()
        return await _eval_once(client, shas, calls)


async def _eval_once(
    client: aioredis.Redis, shas: dict[str, str], calls: Sequence[tuple[str, list[str], list[Any]]]
) -> list[Any]:
    for script in {script for script, _, _ in calls} - shas.keys():
        shas[script] = as_text(await client.script_load(script))
    pipe = client.pipeline(transaction=False)
    # execute_command, not evalsha(): the cluster pipeline refuses the named method,
    # and routes the command by its keys' hash slot either way.
    for script, keys, args in calls:
        pipe.execute_command("EVALSHA", shas[script], len(keys), *keys, *args)
    return list(await pipe.execute())


def _write_entry(
    write: Write, keys: list[str], binary: list[bytes], cached: Profile | None
) -> list[Any]:
    """One user's part of the save script's JSON; binary values are appended to `binary`,
    the user's keys (those of scored events included) to `keys`.

    `cached`: the profile the store last wrote for the user, if it holds one. When
    it is the one `write` was computed from, it is the one Redis holds if the write
    lands: only the fields that changed since are sent (if the write does not land,
    nothing was sent in vain). Otherwise the profile was read from Redis, where an
    earlier version may have left a dedupe sorted set: the write deletes it (its ids
    are in the state now).
    """
    since = cached
    if since is not None and (
        since.version != write.expected_version or since.updated != write.expected_updated
    ):
        since = None
    profile = write.profile
    at = len(keys) + 1  # the profile's KEYS index (1-based); the state's follows
    hash_key, blob_key, seen_key, marker_key = script_keys(profile.user_id)
    keys += (hash_key, blob_key)
    seen_at = erased_at = 0  # their KEYS indexes, when sent
    if since is None:  # read from Redis: an earlier version may have left a dedupe key
        keys.append(seen_key)
        seen_at = len(keys)
    if write.expected_version == 0:  # a new profile: the script checks the marker
        keys.append(marker_key)
        erased_at = len(keys)
    refs: list[Any] = []
    if profile.interest is not None:  # no vectors without an encoder: no call either
        for name, value in vector_fields(profile, since).items():
            binary.append(value)
            refs += (name, BINARY_ARGV + len(binary))  # its ARGV index (1-based)
    binary.append(state_blob(profile))
    return [
        write.expected_version,
        BINARY_ARGV + len(binary),  # the state blob's ARGV index
        public_items(profile, since),
        refs,
        write.expected_updated,
        seen_at,  # the earlier version's dedupe key to delete
        profile.erased_before,
        _scored_entry(write, keys, binary) if write.scored else [],
        gone_vector_fields(profile, since),
        1 if write.keep_ttl else 0,
        at,
        erased_at,
    ]


def _scored_entry(write: Write, keys: list[str], binary: list[bytes]) -> list[int]:
    """Where the save script finds the write's scored events: the KEYS index of the
    user's scored index (their keys follow it), the ARGV index of the first event's
    features (the others follow it), how many, and the time of the write."""
    user_id = write.profile.user_id
    keys.append(scored_index_key(user_id))
    index = len(keys)
    keys += [scored_key(user_id, event_id) for event_id, _ in write.scored]
    first = BINARY_ARGV + len(binary) + 1
    binary += [features for _, features in write.scored]
    return [index, first, len(write.scored), write.profile.updated]


def _split_fields(flat: Sequence[bytes | str]) -> tuple[dict[str, str], dict[str, bytes]]:
    """A flat HGETALL reply as text fields and binary (vector) fields."""
    fields: dict[str, str] = {}
    vectors: dict[str, bytes] = {}
    for i in range(0, len(flat), 2):
        name = as_text(flat[i])
        if name in VECTOR_FIELDS:
            value = flat[i + 1]
            vectors[name] = value if isinstance(value, bytes) else value.encode()
        else:
            fields[name] = as_text(flat[i + 1])
    return fields, vectors


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _user_keys(user_ids: Sequence[str]) -> list[str]:
    keys: list[str] = []
    for user_id in user_ids:
        keys += script_keys(user_id)
    return keys


def _flatten(replies: list[Any]) -> list[Any]:
    return [item for reply in replies for item in reply]


def as_text(value: bytes | str) -> str:
    """A reply's value as text, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else value
