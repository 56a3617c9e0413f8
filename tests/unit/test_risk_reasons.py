"""Fraud reasons say what an event's risk was made of when it was scored, whatever its batch."""

from __future__ import annotations

import itertools
import random

import numpy as np
import orjson
import pytest

from profiling.models import REASONS_FLOOR, ProfileModels
from profiling.pipeline import Stages, apply_batch
from profiling.risk import ANOMALY, CALIBRATION_MIN_SCORES, Population, Risk, RiskModel
from profiling.store import InMemoryProfileStore
from tests.unit.test_models import NOW, PARAMS, ordinary, records, shopper, takeover


def taught(model: RiskModel, rng: random.Random) -> RiskModel:
    """The model after labels that say a purchase with a new card is fraud; failed logins
    never varied in them, so the classifier gives them no weight."""
    for _ in range(300):
        x = {**ordinary(rng), "new_card": float(rng.random() < 0.3), ANOMALY: rng.random()}
        model.learn_label(x, bool(x["new_card"]))
    assert model.label_weight > 0.5
    return model


def log_in_event_time() -> list[dict[str, object]]:
    """A shop's regular customers, past the anomaly side's warm-up, then three takeovers;
    every event at its own ms, so any cut into batches keeps one order."""
    rng = random.Random(9)
    bodies = [b for u in range(110) for b in shopper(f"u{u}", 6, NOW - 40 * 86_400_000, rng)]
    for user in ("u3", "u7", "u50"):
        bodies += takeover(user, NOW - 3_600_000)
    bodies.sort(key=lambda b: int(str(b["ts"])))
    for before, body in itertools.pairwise(bodies):
        body["ts"] = max(int(str(body["ts"])), int(str(before["ts"])) + 1)
    return bodies


async def verdicts_in_batches_of(
    size: int, bodies: list[dict[str, object]]
) -> tuple[dict[str, float], dict[str, dict[str, object]], dict[str, tuple[str, str]]]:
    """Every event's risk, every alert by id, and each user's stored risk and reasons."""
    models = ProfileModels(alert_threshold=0.5)
    taught(models.risk, random.Random(1))
    store, stream = InMemoryProfileStore(), records(bodies)
    risks: dict[str, float] = {}
    alerts: dict[str, dict[str, object]] = {}
    for start in range(0, len(stream), size):
        result = await apply_batch(
            stream[start : start + size], store, PARAMS, lambda: NOW, Stages(models=models)
        )
        risks.update(result.risk_scores)
        for _, body in result.alerts:
            alert = orjson.loads(body)
            alerts[alert["alert_id"]] = alert
    users = {str(b["user_id"]) for b in bodies}
    stored = {user: await store.read_profile(user) for user in users}
    profiles = {
        user: (profile["risk"], profile["risk_reasons"])
        for user, profile in stored.items()
        if profile is not None and "risk" in profile
    }
    return risks, alerts, profiles


async def test_reasons_do_not_depend_on_how_many_events_a_batch_held() -> None:
    """The reasons were worked out from the calibration and the shop's statistics after
    the whole batch: the same alert named other features, with other shares, alone and
    in a batch of hundreds, though its risk was the same."""
    bodies = log_in_event_time()
    alone, *others = [await verdicts_in_batches_of(size, bodies) for size in (1, 97, 5000)]
    risks, alerts, profiles = alone
    assert len(alerts) > 100 and all(alert["reasons"] for alert in alerts.values())
    reasoned = [reasons for risk, reasons in profiles.values() if float(risk) >= REASONS_FLOOR]
    assert len(reasoned) == 3 and all(orjson.loads(reasons) for reasons in reasoned)
    # Both sides had their part: labels (the new card) and the anomaly side (past its warm-up).
    named = {r["feature"] for alert in alerts.values() for r in alert["reasons"]}
    assert "new_card" in named and named - {"new_card", ANOMALY}, named
    for other in others:
        assert other[0] == risks
        assert other[1] == alerts
        assert other[2] == profiles


async def test_no_anomaly_reason_for_a_risk_scored_before_the_anomaly_side_joined() -> None:
    """The anomaly side joins the risk once the calibration knows its minimum of scores.
    A takeover scored before that, in the same batch, was explained with the calibration
    after the batch: the anomaly side had a share of a risk it had no part in, and the
    reasons named the failed logins or the new device, which the classifier never weighed."""
    rng = random.Random(4)
    bodies = [b for u in range(80) for b in shopper(f"u{u}", 6, NOW - 40 * 86_400_000, rng)]
    bodies.sort(key=lambda b: int(str(b["ts"])))
    scored_at = [i for i, b in enumerate(bodies) if b["type"] in ("login", "purchase")]
    warm_up = RiskModel().trees.window_size + CALIBRATION_MIN_SCORES  # the anomaly side joins
    bodies += takeover("thief", int(str(bodies[scored_at[warm_up - 30]]["ts"])) + 1)
    bodies.sort(key=lambda b: int(str(b["ts"])))
    scored = [b["event_id"] for b in bodies if b["type"] in ("login", "purchase")]
    assert warm_up - 30 < scored.index("thief-xp") < warm_up  # before the anomaly side joins
    cut = next(i for i, b in enumerate(bodies) if b["event_id"] == scored[warm_up - 60])

    async def thiefs_reasons(batches: list[list[dict[str, object]]]) -> tuple[str, str]:
        # A high threshold bends the anomaly risk little: its share would show.
        models = ProfileModels(alert_threshold=0.95)
        taught(models.risk, random.Random(1))
        store, start = InMemoryProfileStore(), 0
        for batch in batches:
            stage = Stages(models=models)
            await apply_batch(records(batch, start=start), store, PARAMS, lambda: NOW, stage)
            start += len(batch)
        assert models.risk.calibration.learnt >= CALIBRATION_MIN_SCORES
        profile = await store.read_profile("thief")
        assert profile is not None
        return profile["risk"], profile["risk_reasons"]

    risk, reasons = await thiefs_reasons([bodies[:cut], bodies[cut:]])  # the second: past it
    named = {r["feature"]: r["contribution"] for r in orjson.loads(reasons)}
    assert float(risk) >= REASONS_FLOOR and "new_card" in named
    assert not named.keys() & {"failed_logins_1h", "new_device", "new_country"}, named
    assert (risk, reasons) == await thiefs_reasons([[body] for body in bodies])


@pytest.mark.parametrize("known", [0, 1, 40])
def test_z_scores_in_turn_are_those_of_the_statistics_learnt_one_event_at_a_time(
    known: int,
) -> None:
    rng = np.random.default_rng(8)
    names = ("a", "b", "flat", "rare")
    rows = np.column_stack(
        [
            rng.normal(50.0, 10.0, 60 + known),
            rng.exponential(2.0, 60 + known),
            np.full(60 + known, 3.0),  # never varies: no z
            (rng.random(60 + known) < 0.05).astype(float),
        ]
    )
    population = Population(names)
    if known:
        population.learn(rows[:known])
    in_turn = population.z_in_turn(rows[known:])
    oracle = Population(names)
    if known:
        oracle.learn(rows[:known])
    for row, z in zip(rows[known:], in_turn, strict=True):
        oracle.learn(row[None, :])
        expected = oracle.z(dict(zip(names, row.tolist(), strict=True)))
        np.testing.assert_allclose(z, expected, rtol=1e-9, atol=1e-9)
    assert not in_turn[:, 2].any()


@pytest.mark.parametrize("known", [0, 1, 40])
def test_scale_and_learn_is_scale_in_turn_then_learn_to_the_bit(known: int) -> None:
    """The one-pass form the model uses, against the two steps it stands for; and a copy
    taken before keeps the statistics as they were (it shares their arrays)."""
    rng = np.random.default_rng(9)
    rows = np.column_stack(
        [rng.normal(50.0, 10.0, 60 + known), np.full(60 + known, 3.0), rng.random(60 + known)]
    )
    names = ("a", "flat", "c")
    one_pass, two_steps = Population(names), Population(names)
    if known:
        one_pass.learn(rows[:known])
        two_steps.learn(rows[:known])
    before = one_pass.copy()
    frozen = {name: np.copy(value) for name, value in vars(before).items() if name != "names"}
    scaled = one_pass.scale_and_learn(rows[known:])
    assert scaled.tobytes() == two_steps.scale_in_turn(rows[known:]).tobytes()
    # The plain formula, clipped and with unvaried features set to 0, comes out the same.
    low = np.minimum(two_steps.low, np.minimum.accumulate(rows[known:], axis=0))
    high = np.maximum(two_steps.high, np.maximum.accumulate(rows[known:], axis=0))
    span = high - low
    clipped = np.clip((rows[known:] - low) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    clipped[span <= 0] = 0.0
    assert scaled.tobytes() == clipped.tobytes()
    two_steps.learn(rows[known:])
    for name, value in vars(two_steps).items():
        np.testing.assert_array_equal(getattr(one_pass, name), value, strict=True)
    for name, value in frozen.items():
        np.testing.assert_array_equal(getattr(before, name), value, strict=True)


def test_contributions_never_sum_above_the_risk_they_explain() -> None:
    """The contract: contributions sum to at most `risk` (published to 6 places). Each
    is published to 4 places, cut down, not rounded: a reason that is the whole risk
    must not come out above it."""
    for score, shares in [
        (0.123456, (("new_card", 0.123456),)),
        (0.30005, (("new_card", 0.10005), ("new_device", 0.10005), ("orders_1h", 0.09995))),
        (0.99999, (("new_card", 0.99999),)),
    ]:
        reasons = Risk(score, shares).reasons_json({})
        total = sum(r["contribution"] for r in reasons)
        assert total <= round(score, 6) + 1e-12, (score, reasons)
        for r, (_, share) in zip(reasons, shares, strict=True):
            assert share - 1e-4 < r["contribution"] <= share
