"""The `ProfileStore` on a real Redis: one pipelined round trip to load a batch's
users, one to write them, each write a compare-and-set Lua script on one user's
hash-tagged keys (so it is atomic on a single node and on Redis Cluster alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from profiling.store import (
    Loaded,
    Write,
    profile_from_storage,
    profile_key,
    public_fields,
    seen_key,
    state_blob,
    state_key,
)

# KEYS: profile, state, seen.
# ARGV: expected version, ttl ms, dedupe window, state blob, n fields, then the
#       n field/value pairs, then (event id, ts) pairs.
# Returns 1 when written, 0 when the stored version is not the expected one.
SAVE_SCRIPT: Final = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
local function chunked(command, key, args)
  for i = 1, #args, 1000 do
    redis.call(command, key, unpack(args, i, math.min(i + 999, #args)))
  end
end
local n_fields = tonumber(ARGV[5])
local fields = {}
for i = 6, 5 + 2 * n_fields do fields[#fields + 1] = ARGV[i] end
chunked('HSET', KEYS[1], fields)
redis.call('SET', KEYS[2], ARGV[4])
local seen = {}
for i = 6 + 2 * n_fields, #ARGV, 2 do
  seen[#seen + 1] = ARGV[i + 1]
  seen[#seen + 1] = ARGV[i]
end
if #seen > 0 then
  chunked('ZADD', KEYS[3], seen)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[3]) + 1))
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ttl) end
end
return 1
"""


def connect(url: str) -> aioredis.Redis:
    """A client for `url` (redis://, rediss:// for TLS, user:password@ for ACL users)."""
    return aioredis.Redis.from_url(url, decode_responses=False, health_check_interval=30)


class RedisProfileStore:
    """Profiles in Redis, laid out as `profiling.store` documents."""

    def __init__(self, client: aioredis.Redis, dedupe_window: int = 2048, ttl_s: int = 0) -> None:
        self.client = client
        self.dedupe_window = dedupe_window
        self.ttl_ms = ttl_s * 1000
        self._save_sha: str | None = None

    async def load(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, Loaded]:
        pipe = self.client.pipeline(transaction=False)
        for user_id, event_ids in wanted.items():
            pipe.hgetall(profile_key(user_id))
            pipe.get(state_key(user_id))
            pipe.zmscore(seen_key(user_id), list(event_ids))
        replies = await pipe.execute()
        loaded = {}
        for index, (user_id, event_ids) in enumerate(wanted.items()):
            raw_fields, state, scores = replies[3 * index : 3 * index + 3]
            fields = {_text(k): _text(v) for k, v in raw_fields.items()}
            seen = frozenset(i for i, s in zip(event_ids, scores, strict=True) if s is not None)
            loaded[user_id] = Loaded(profile_from_storage(user_id, fields, state), seen)
        return loaded

    async def save(self, writes: Sequence[Write]) -> list[str]:
        if not writes:
            return []
        sha = self._save_sha or await self._load_script()
        try:
            replies = await self._run_saves(sha, writes)
        except NoScriptError:  # the server restarted or flushed its script cache
            replies = await self._run_saves(await self._load_script(), writes)
        return [w.profile.user_id for w, ok in zip(writes, replies, strict=True) if not ok]

    async def read_profile(self, user_id: str) -> dict[str, str] | None:
        raw = await self.client.hgetall(profile_key(user_id))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    async def _run_saves(self, sha: str, writes: Sequence[Write]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for write in writes:
            user_id = write.profile.user_id
            fields = public_fields(write.profile)
            args: list[Any] = [
                write.expected_version,
                self.ttl_ms,
                self.dedupe_window,
                state_blob(write.profile),
                len(fields),
            ]
            for name, value in fields.items():
                args += (name, value)
            for event_id, ts in write.applied_ids:
                args += (event_id, ts)
            keys = (profile_key(user_id), state_key(user_id), seen_key(user_id))
            pipe.evalsha(sha, 3, *keys, *args)
        return list(await pipe.execute())

    async def _load_script(self) -> str:
        sha = await self.client.script_load(SAVE_SCRIPT)
        self._save_sha = sha.decode() if isinstance(sha, bytes) else str(sha)
        return self._save_sha


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
