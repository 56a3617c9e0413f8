"""A user's first risk makes a change message due only when it is above the lowest band."""

from __future__ import annotations

import random

import orjson

from profiling.models import ProfileModels
from profiling.pipeline import BatchResult, Stages, apply_batch
from profiling.profile import ProfileParams
from profiling.store import InMemoryProfileStore
from tests.unit.test_models import NOW, records
from tests.unit.test_risk_reasons import taught

HEARTBEAT = ProfileParams(heartbeat_ms=60_000)
VIEW = {"event_id": "v", "user_id": "u", "type": "view", "ts": NOW, "item_id": "i1"}
PURCHASE = {"event_id": "p", "user_id": "u", "type": "purchase", "ts": NOW + 1_000,
            "amount": 30.0, "card_fp": "card", "device_id": "phone"}  # fmt: skip


async def batches(
    models: ProfileModels, *steps: tuple[dict[str, object], int]
) -> list[BatchResult]:
    """Each (event, clock) applied as a batch of its own, on one store."""
    store, results = InMemoryProfileStore(), []
    for offset, (body, now) in enumerate(steps):
        batch = records([body], start=offset)
        results.append(
            await apply_batch(batch, store, HEARTBEAT, lambda now=now: now, Stages(models=models))
        )
    return results


async def test_a_first_low_risk_waits_for_the_heartbeat() -> None:
    """A user known from a view makes a first purchase: its risk, low, is no news by itself
    (every first purchase or login published a message at once, round the heartbeat)."""
    later = {**VIEW, "event_id": "v2", "ts": NOW + 61_000}
    models = ProfileModels()
    new, bought, due = await batches(
        models, (VIEW, NOW), (PURCHASE, NOW + 1_000), (later, NOW + 61_000)
    )
    assert [user for user, _ in new.changes] == ["u"]  # a new user is news
    assert bought.risk_scores == [("p", 0.0)] and not bought.changes  # a fresh model: low
    (message,) = [orjson.loads(body) for _, body in due.changes]
    assert {"risk", "risk_reasons"} <= set(message["changed"])  # it rode with the next one
    assert (message["risk"], message["risk_band"]) == (0.0, "low")


async def test_a_first_risk_above_the_lowest_band_is_published_at_once() -> None:
    models = ProfileModels()
    taught(models.risk, random.Random(1))  # a new card is fraud, the labels say
    _, bought = await batches(models, (VIEW, NOW), (PURCHASE, NOW + 1_000))
    (message,) = [orjson.loads(body) for _, body in bought.changes]
    assert message["risk_band"] == "medium" and "risk" in message["changed"]
