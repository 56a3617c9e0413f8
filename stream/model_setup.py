"""Building the River models from settings, and their signed snapshots in Redis.

One snapshot per consumer group, `profiler:models:{<group_id>}`: the workers of
a group are interchangeable, so a worker that starts takes the newest
snapshot any of them wrote. A snapshot is only unpickled once its HMAC under
`PROFILER_MODEL_SECRET` checks out (`profiling.snapshots`); without a secret,
models run but are never saved or loaded.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from profiling.behaviour import keyed_token
from profiling.models import ProfileModels
from profiling.risk import RiskModel
from profiling.segments import SegmentModel
from profiling.snapshots import SnapshotRefusedError, sign, verified_load
from stream import metrics
from stream.redis_store import connect
from stream.settings import Settings

log = logging.getLogger("profiler.models")


def snapshot_key(group_id: str) -> str:
    return f"profiler:models:{{{group_id}}}"


def build_models(settings: Settings, dim: int = 384) -> ProfileModels | None:
    """Fresh models as the settings describe them, or None when models are off."""
    if not settings.models:
        return None
    segments = SegmentModel(
        n_segments=settings.segments,
        switch_margin=settings.segment_switch_margin,
        min_dwell=settings.segment_min_dwell,
    )
    key = settings.fingerprint_key
    return ProfileModels(
        risk=RiskModel(),
        segments=segments,
        alert_threshold=settings.risk_alert_threshold,
        dim=dim,
        fingerprint=keyed_token(key.get_secret_value().encode() if key is not None else b""),
        currencies=settings.currencies(),
    )


def _secret(settings: Settings) -> bytes | None:
    """The snapshot key; None when unset or empty (an empty variable means "no snapshots")."""
    secret = settings.model_secret
    value = secret.get_secret_value() if secret is not None else ""
    return value.encode() if value else None


async def restore_models(models: ProfileModels, client: aioredis.Redis, settings: Settings) -> bool:
    """Load the group's snapshot into `models`; True when one was restored.

    Raises SnapshotRefusedError when a snapshot exists but its signature does not
    verify (starting with fresh models would silently discard what was learnt,
    and loading it would run untrusted code), or when these models cannot
    continue from it (another format or number of segments).
    """
    secret = _secret(settings)
    blob = await client.get(snapshot_key(settings.group_id))
    if blob is None:
        return False
    if secret is None:
        log.warning(
            "a model snapshot exists but PROFILER_MODEL_SECRET is unset: starting fresh models"
        )
        return False
    try:
        models.restore(verified_load(_bytes(blob), secret, settings.group_id))
    except SnapshotRefusedError as exc:
        metrics.MODEL_SNAPSHOTS.labels("refused").inc()
        raise SnapshotRefusedError(f"{exc} (Redis key {snapshot_key(settings.group_id)})") from exc
    metrics.MODEL_SNAPSHOTS.labels("restored").inc()
    log.info("models restored: %s", describe_offsets(models))
    return True


async def save_models(models: ProfileModels, client: aioredis.Redis, settings: Settings) -> bool:
    """Write a signed snapshot of `models`; False when no secret is configured."""
    secret = _secret(settings)
    if secret is None:
        return False
    signed = sign(models.snapshot(), secret, settings.group_id)
    await client.set(snapshot_key(settings.group_id), signed)
    metrics.MODEL_SNAPSHOTS.labels("saved").inc()
    return True


async def load_snapshot(client: aioredis.Redis, settings: Settings) -> ProfileModels:
    """The group's models as last saved (for `profiler segments`); refuses unsigned ones."""
    secret = _secret(settings)
    if secret is None:
        raise SnapshotRefusedError("PROFILER_MODEL_SECRET is unset: cannot verify a snapshot")
    blob = await client.get(snapshot_key(settings.group_id))
    if blob is None:
        raise SnapshotRefusedError(
            f"no model snapshot at {snapshot_key(settings.group_id)}: has a worker of group "
            f"{settings.group_id!r} run with PROFILER_MODEL_SECRET set?"
        )
    models = build_models(settings.model_copy(update={"models": True}))
    assert models is not None
    models.restore(verified_load(_bytes(blob), secret, settings.group_id))
    return models


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


async def segment_sizes(client: aioredis.Redis, batch: int = 1000) -> dict[int, int]:
    """Users per segment, counted over every profile hash (SCAN: exact, O(users))."""
    sizes: dict[int, int] = {}
    async for keys in _key_batches(client, "profile:{*", batch):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "segment")
        for value in await pipe.execute():
            if value is not None:
                segment = int(value)
                sizes[segment] = sizes.get(segment, 0) + 1
    return sizes


async def _key_batches(
    client: aioredis.Redis, pattern: str, batch: int
) -> AsyncIterator[list[Any]]:
    keys: list[Any] = []
    async for key in client.scan_iter(match=pattern, count=batch):
        keys.append(key)
        if len(keys) >= batch:
            yield keys
            keys = []
    if keys:
        yield keys


async def segment_report(settings: Settings) -> list[tuple[int, int, str]]:
    """(segment, users, description) for every segment of the group's saved models."""
    # The cluster client on a cluster: it reads the snapshot from the node owning its
    # slot, and SCAN visits every primary (one node holds only its slots' profiles).
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    try:
        models = await load_snapshot(client, settings)
        sizes = await segment_sizes(client)
    finally:
        await client.aclose()
    return [
        (k, sizes.get(k, 0), models.segments.describe(k)) for k in range(models.segments.n_segments)
    ]


def describe_offsets(models: ProfileModels) -> str:
    learnt = models.risk.labels
    return (
        f"{len(models.offsets)} partitions, {models.risk.scored} events scored, "
        f"{learnt[0] + learnt[1]} labels learnt"
    )
