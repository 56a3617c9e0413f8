"""Segments, risk, alerts, delayed labels and signed snapshots on the real broker and Redis."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Final

import orjson
import pytest
import redis.asyncio as aioredis

import stream.worker
from profiling.models import alert_id
from profiling.risk import KEPT_FEATURES
from profiling.snapshots import SnapshotRefusedError
from profiling.store import scored_key
from stream.model_setup import segment_report, snapshot_key
from stream.producing import send_records
from stream.settings import Settings
from stream.worker import BatchWorker, wall_clock_ms
from tests.integration.kafka_io import drain, read_topic
from tests.integration.test_cli import profiler, profiler_env
from tests.schemas import schema_accepts
from tests.unit.test_models import shopper, takeover

SECRET = "integration-test-secret-0123456789"
DAY_MS = 86_400_000


def as_records(bodies: list[dict[str, object]]) -> list[tuple[bytes | None, bytes]]:
    ordered = sorted(bodies, key=lambda b: int(str(b["ts"])))
    return [(str(b["user_id"]).encode(), orjson.dumps(b)) for b in ordered]


USERS = 100  # 1,200 scored events: past the risk model's warm-up (750)


def shop(now: int) -> list[dict[str, object]]:
    rng = random.Random(11)
    return [b for u in range(USERS) for b in shopper(f"u{u}", 6, now - 40 * DAY_MS, rng)]


@pytest.fixture
async def models_settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return await make_settings(
        partitions=3, model_secret=SECRET, risk_alert_threshold=0.5, model_checkpoint_s=3600
    )


async def test_alerts_labels_and_snapshots_end_to_end(
    models_settings: Settings, tmp_path: Path
) -> None:
    settings = models_settings
    now = wall_clock_ms()
    await send_records(settings, as_records(shop(now)))
    await drain(settings)  # the shop's usual traffic, learnt and saved at shutdown
    await send_records(settings, as_records(takeover("u7", now - 3_600_000)))
    stats = await drain(settings)  # a worker that restores the snapshot
    assert stats.alerts_published >= 1

    alerts = await read_topic(settings.kafka_bootstrap, settings.topic_alerts)
    bodies = [orjson.loads(r.value) for r in alerts]
    assert all(schema_accepts("fraud_alert.v1", r.value) for r in alerts)
    assert all(b["alert_id"] == alert_id(b["user_id"], b["event_id"]) for b in bodies)
    assert all(b["risk"] >= 0.5 and b["reasons"] for b in bodies)
    assert len({b["alert_id"] for b in bodies}) == len(bodies)  # one alert per event
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        raw = await client.hgetall("profile:{u7}")
        profile = {k.decode(): v for k, v in raw.items() if not k.startswith(b"vec_")}
        assert 0 <= float(profile["risk"]) <= 1 and int(profile["segment"]) >= 0
        reasons = orjson.loads(profile["risk_reasons"])
        assert isinstance(reasons, list) and (bool(reasons) or float(profile["risk"]) < 0.1)
        assert await client.exists("profile-scored:{u7}:u7-xp")  # kept for its label
        ttl = await client.ttl("profile-scored:{u7}:u7-xp")
        assert 0 < ttl <= settings.scored_ttl_days * 86_400
        assert await client.exists(snapshot_key(settings.group_id))  # saved at shutdown
    finally:
        await client.aclose()

    labels = [
        {"event_id": "u7-xp", "user_id": "u7", "label": 1, "ts": now},
        *({"event_id": f"u{u}-p0", "user_id": f"u{u}", "label": 0, "ts": now} for u in range(10)),
        {"event_id": "nobody-scored-this", "user_id": "u1", "label": 1, "ts": now},
    ]
    label_records = [(str(b["user_id"]).encode(), orjson.dumps(b)) for b in labels]
    label_records.append((b"u2", b'{"event_id": "u2-p1", "user_id": "u2", "label": "yes"}'))
    await send_records(settings, label_records, topic=settings.topic_labels)
    restarted = BatchWorker(settings)
    stats = await drain(settings, worker=restarted)  # restores the snapshot, learns the labels
    assert stats.labels == {"learnt": 11, "unknown": 1, "invalid": 1}
    assert restarted.models is not None and restarted.models.risk.labels == {0: 10, 1: 1}
    letters = await read_topic(settings.kafka_bootstrap, settings.topic_dlq)
    assert [orjson.loads(r.value)["error"] for r in letters] == ["invalid_label"]

    again = BatchWorker(settings)  # a third start: the snapshot carries what was learnt
    await again.start()
    try:
        assert again.models is not None and again.models.risk.labels == {0: 10, 1: 1}
        assert any(key.startswith(f"{settings.topic_labels}:") for key in again.models.offsets)
    finally:
        await again.close()

    report = await segment_report(settings)
    assert sum(size for _, size, _ in report) == USERS
    done = await profiler("segments", env=profiler_env(settings), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("segment ") == settings.segments


async def test_a_tampered_snapshot_stops_the_worker_with_a_clear_error(
    models_settings: Settings, tmp_path: Path
) -> None:
    settings = models_settings
    await send_records(
        settings, as_records(shopper("u1", 2, wall_clock_ms() - DAY_MS, random.Random(1)))
    )
    await drain(settings)
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        key = snapshot_key(settings.group_id)
        blob = await client.get(key)
        await client.set(key, blob[:-1] + bytes([blob[-1] ^ 0xFF]))
    finally:
        await client.aclose()
    worker = BatchWorker(settings)
    with pytest.raises(SnapshotRefusedError, match="signature"):
        await worker.start()
    await worker.close()  # and closing does not overwrite the snapshot it could not read
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        assert await client.get(snapshot_key(settings.group_id)) != blob
        assert (await client.get(snapshot_key(settings.group_id)))[-1] == blob[-1] ^ 0xFF
    finally:
        await client.aclose()
    done = await profiler("run", "--until-idle", "1", env=profiler_env(settings), cwd=tmp_path)
    assert done.returncode != 0 and "signature" in done.stderr
    assert "Traceback" not in done.stderr


LABELLED: Final = [f"u{u}" for u in range(12)]


async def scored_shoppers(settings: Settings, now: int, seed: int) -> None:
    """Two orders each of `LABELLED`, drained: their features are kept for their labels."""
    rng = random.Random(seed)
    records = [b for u in LABELLED for b in shopper(u, 2, now - 9 * DAY_MS, rng)]
    await send_records(settings, as_records(records))
    await drain(settings)


def label_records(event: str, fraud: set[str], now: int) -> list[tuple[bytes | None, bytes]]:
    """A label of each user's `<user>-<event>`, fraud for the users in `fraud`."""
    bodies = [
        {"event_id": f"{u}-{event}", "user_id": u, "label": int(u in fraud), "ts": now}
        for u in LABELLED
    ]
    return [(str(b["user_id"]).encode(), orjson.dumps(b)) for b in bodies]


async def test_labels_learnt_after_the_last_snapshot_are_learnt_again_after_a_crash(
    models_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels are committed with each batch, the models snapshotted only now and then: a
    worker that dies in between leaves committed labels the snapshot never learnt. The
    next worker reads them again from the snapshot's offsets, and learns each once."""
    settings = models_settings
    now = wall_clock_ms()
    await scored_shoppers(settings, now, seed=3)
    await send_records(settings, label_records("p0", set(), now), topic=settings.topic_labels)
    first = BatchWorker(settings)
    assert (await drain(settings, worker=first)).labels == {"learnt": 12}
    assert first.models is not None and first.models.risk.labels == {0: 12, 1: 0}
    # Saved at shutdown with every labels partition's offset; then labels it never holds.
    await send_records(
        settings, label_records("p1", {"u3", "u5"}, now), topic=settings.topic_labels
    )

    async def no_snapshot(*_args: object) -> bool:
        return False

    learnt_by = []
    for crashes in (True, True, False, False):  # killed before its snapshot, twice
        if crashes:
            monkeypatch.setattr(stream.worker, "save_models", no_snapshot)
        else:
            monkeypatch.undo()
        worker = BatchWorker(settings)
        stats = await drain(settings, worker=worker)
        assert worker.models is not None
        learnt_by.append((stats.labels.get("learnt", 0), dict(worker.models.risk.labels)))
    # Each worker after the snapshot learns the 12 labels once; the one after the last
    # snapshot (it carries them) learns none.
    assert learnt_by == [(12, {0: 22, 1: 2})] * 3 + [(0, {0: 22, 1: 2})]


async def test_new_models_learn_the_labels_kept_on_the_topic(make_settings) -> None:  # type: ignore[no-untyped-def]
    """Without snapshots (no `PROFILER_MODEL_SECRET`) every worker starts new models: the
    labels an earlier worker committed are news to them, so they are read from the
    topic's start and learnt again (each whose features are kept)."""
    settings = await make_settings(partitions=3, risk_alert_threshold=0.5)
    now = wall_clock_ms()
    await scored_shoppers(settings, now, seed=4)
    await send_records(settings, label_records("p0", {"u3"}, now), topic=settings.topic_labels)
    for _ in range(2):  # a worker, then another with new models of its own
        worker = BatchWorker(settings)
        assert (await drain(settings, worker=worker)).labels == {"learnt": 12}
        assert worker.models is not None and worker.models.risk.labels == {0: 11, 1: 1}


async def test_a_label_whose_features_another_version_kept_is_counted_not_dead_lettered(
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    """Features kept by a worker of a version that scored another number of features (a
    rolling upgrade) cannot be read by this one: the label failed as `internal_error`,
    a dead letter whose replay could never succeed. It is `stale_features` now, learnt
    from by nobody, and the batch's other labels are learnt."""
    settings = await make_settings(partitions=3, risk_alert_threshold=0.5)
    now = wall_clock_ms()
    await scored_shoppers(settings, now, seed=5)
    client = aioredis.Redis.from_url(settings.redis_url)
    try:  # u3's first order as a version with one feature fewer kept it
        key = scored_key("u3", "u3-p0")
        assert await client.exists(key)
        await client.set(key, b"\x01" + bytes(4 * (len(KEPT_FEATURES) - 1)), keepttl=True)
    finally:
        await client.aclose()
    await send_records(settings, label_records("p0", {"u3"}, now), topic=settings.topic_labels)
    worker = BatchWorker(settings)
    stats = await drain(settings, worker=worker)
    assert stats.labels == {"learnt": len(LABELLED) - 1, "stale_features": 1}
    assert worker.models is not None and worker.models.risk.labels == {0: len(LABELLED) - 1, 1: 0}
    assert await read_topic(settings.kafka_bootstrap, settings.topic_dlq) == []
