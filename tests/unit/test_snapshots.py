"""Signed model snapshots: what was signed comes back; nothing else is ever unpickled."""

from __future__ import annotations

import hashlib
import hmac
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from profiling.models import SNAPSHOT_FORMAT, ProfileModels
from profiling.risk import Calibration, Population
from profiling.segments import SegmentModel
from profiling.snapshots import (
    DOMAIN,
    MAGIC,
    UNBOUND_MAGIC,
    SnapshotRefusedError,
    sign,
    verified_load,
)

SECRET = b"a-deployment-secret-of-32-bytes!"
FEATURES = {"amount_log": 3.2, "new_card": 1.0, "failed_logins_1h": 2.0}


class Planted:
    """Unpickling this writes a file: the proof that untrusted bytes reached pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.path).write_text, ("pickle ran",))


def test_signed_models_come_back_and_score_the_same() -> None:
    models = ProfileModels()
    for i in range(50):
        models.risk.score({**FEATURES, "amount_log": float(i % 7)})
    models.advance("fraud-labels", 2, 41)
    restored = ProfileModels()
    restored.restore(verified_load(sign(models.snapshot(), SECRET), SECRET))
    assert restored.offsets == {"fraud-labels:2": 41}
    assert restored.learnt("fraud-labels", 2, 41) and not restored.learnt("fraud-labels", 2, 42)
    assert restored.next_to_learn("fraud-labels", 2) == 42
    assert restored.next_to_learn("fraud-labels", 0) is None  # nothing learnt from it
    a = models.risk.score(FEATURES, learn=False)
    b = restored.risk.score(FEATURES, learn=False)
    assert a == b


def trained(
    threshold: float, n_segments: int, switch_margin: float, min_dwell: int
) -> ProfileModels:
    models = ProfileModels(
        segments=SegmentModel(
            n_segments=n_segments, switch_margin=switch_margin, min_dwell=min_dwell
        ),
        alert_threshold=threshold,
    )
    for i in range(50):
        models.risk.score({**FEATURES, "amount_log": float(i % 7)})
    models.advance("fraud-labels", 2, 41)
    return models


def test_a_restored_snapshot_keeps_the_current_threshold_and_hysteresis() -> None:
    """The snapshot brings what was learnt; the settings of the restarted worker still hold."""
    saved = trained(0.8, 8, switch_margin=0.8, min_dwell=3)
    blob = sign(saved.snapshot(), SECRET)
    restored = trained(0.5, 8, switch_margin=0.5, min_dwell=10)
    restored.restore(verified_load(blob, SECRET))
    assert restored.offsets == {"fraud-labels:2": 41}
    assert restored.risk.calibration_threshold == restored.alert_threshold == 0.5
    share = restored.risk.anomaly_alert_share
    assert restored.risk.calibration.gamma == Calibration.for_share(share, 0.5).gamma
    segments = restored.segments
    assert (segments.n_segments, segments.switch_margin, segments.min_dwell) == (8, 0.5, 10)
    # Scored as the saved models recalibrated for the new threshold: the learnt state is kept.
    expected = verified_load(blob, SECRET)["risk"]
    expected.recalibrate(0.5)
    assert restored.risk.score(FEATURES, learn=False) == expected.score(FEATURES, learn=False)
    np.testing.assert_array_equal(segments.centres(), saved.segments.centres())


def test_a_snapshot_at_the_same_threshold_is_not_recalibrated() -> None:
    saved = trained(0.7, 8, switch_margin=0.8, min_dwell=3)
    restored = ProfileModels(alert_threshold=0.7)
    restored.restore(verified_load(sign(saved.snapshot(), SECRET), SECRET))
    assert restored.risk.calibration.gamma == saved.risk.calibration.gamma


def _without(key: str) -> Any:
    return lambda state: {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda state: state | {"format": SNAPSHOT_FORMAT + 1},
            f"format {SNAPSHOT_FORMAT + 1}",
            id="another format",
        ),
        pytest.param(_without("format"), "format None", id="no format"),
        pytest.param(_without("segments"), "lacks segments", id="no segments"),
        pytest.param(_without("risk"), "lacks risk", id="no risk"),
        pytest.param(_without("offsets"), "lacks offsets", id="no offsets"),
        pytest.param(lambda state: state | {"risk": {}}, "dict as risk", id="wrong part"),
        pytest.param(lambda state: state | {"offsets": 3}, "int as offsets", id="bad offsets"),
        pytest.param(list, "not a model snapshot", id="not a mapping"),
        pytest.param(
            lambda state: state | {"segments": SegmentModel(n_segments=4)},
            "4 segments, the settings ask for 8",
            id="another segment count",
        ),
    ],
)
def test_a_snapshot_that_does_not_fit_is_refused_and_changes_nothing(
    change: Any, message: str
) -> None:
    """Signed, so ours, but of another version or settings: one clear refusal, no traceback."""
    state = change(trained(0.8, 8, switch_margin=0.8, min_dwell=3).snapshot())
    models = ProfileModels()
    risk, segments = models.risk, models.segments
    with pytest.raises(SnapshotRefusedError, match=message):
        models.restore(verified_load(sign(state, SECRET), SECRET))
    assert models.risk is risk and models.segments is segments and models.offsets == {}


def _of_another_version(state: dict[str, Any]) -> dict[str, Any]:
    """The snapshot as a version that scored one transaction feature fewer pickled it."""
    risk = state["risk"]
    risk.population = Population(risk.population.names[:-1])
    return state


def _segments_of_another_version(state: dict[str, Any]) -> dict[str, Any]:
    segments = state["segments"]
    segments.member_sums = segments.member_sums[:, :-1]
    return state


@pytest.mark.parametrize("change", [_of_another_version, _segments_of_another_version])
def test_a_snapshot_of_a_version_with_other_features_is_refused(change: Any) -> None:
    """Restored, its models failed every batch with a purchase or login (the features'
    count), and the worker dead-lettered those events as internal errors."""
    state = change(trained(0.8, 8, switch_margin=0.8, min_dwell=3).snapshot())
    models = ProfileModels()
    risk = models.risk
    with pytest.raises(SnapshotRefusedError, match="other features"):
        models.restore(verified_load(sign(state, SECRET), SECRET))
    assert models.risk is risk
    models.risk.score(FEATURES)  # the fresh models it kept score


class Moved:
    """A class of another version: pickled by reference to a module this one lacks."""


def test_a_signed_snapshot_that_does_not_unpickle_here_is_refused() -> None:
    """Pickled by a version whose classes moved: the refusal that says what to do, not
    the unpickler's traceback (a worker's start, `profiler segments`)."""
    payload = pickle.dumps(Moved()).replace(b"tests.unit.test_snapshots", b"tests.unit.gone_away")
    mac = hmac.new(SECRET, DOMAIN + b"\x1f" + payload, hashlib.sha256).digest()  # group ""
    signed = MAGIC + mac + payload
    with pytest.raises(SnapshotRefusedError, match="another version"):
        verified_load(signed, SECRET)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda blob, evil: evil, id="unsigned pickle"),
        pytest.param(lambda blob, evil: blob[:-1] + bytes([blob[-1] ^ 1]), id="payload flipped"),
        pytest.param(lambda blob, evil: blob[:40] + evil, id="payload swapped"),
        pytest.param(lambda blob, evil: blob[:20], id="truncated"),
        pytest.param(lambda blob, evil: b"", id="empty"),
    ],
)
def test_tampered_snapshots_are_refused_before_unpickling(forge: Any, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = pickle.dumps(Planted(str(marker)))
    blob = sign({"format": 1}, SECRET)
    with pytest.raises(SnapshotRefusedError):
        verified_load(forge(blob, evil), SECRET)
    assert not marker.exists()


def test_another_secret_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    blob = sign(Planted(str(marker)), b"someone-elses-secret-32-bytes!!!")
    assert not marker.exists()
    with pytest.raises(SnapshotRefusedError, match="PROFILER_MODEL_SECRET"):
        verified_load(blob, SECRET)
    assert not marker.exists()


def test_a_snapshot_signed_for_another_group_is_refused(tmp_path: Path) -> None:
    """A snapshot copied from another group's key passed for this group's models, with
    that group's offsets: labels up to them were skipped as learnt."""
    marker = tmp_path / "ran"
    blob = sign(Planted(str(marker)), SECRET, "blue")
    with pytest.raises(SnapshotRefusedError, match="another consumer group"):
        verified_load(blob, SECRET, "green")
    assert not marker.exists()
    assert verified_load(sign({"format": 1}, SECRET, "green"), SECRET, "green") == {"format": 1}


def test_a_snapshot_of_the_earlier_unbound_format_is_read_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = pickle.dumps({"format": 1})
    blob = UNBOUND_MAGIC + hmac.new(SECRET, payload, hashlib.sha256).digest() + payload
    assert verified_load(blob, SECRET, "green") == {"format": 1}
    assert "earlier format" in caplog.text
    with pytest.raises(SnapshotRefusedError):
        verified_load(blob[:-1] + b"\x00", SECRET, "green")


def test_a_short_secret_is_rejected() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        sign({}, b"short")


def test_settings_refuse_a_short_secret_and_read_empty_as_none() -> None:
    from pydantic import ValidationError

    from stream.model_setup import _secret
    from stream.settings import Settings

    with pytest.raises(ValidationError, match="at least 16 bytes"):
        Settings(model_secret="short")
    assert _secret(Settings(model_secret="")) is None
    assert _secret(Settings(model_secret=SECRET.decode())) == SECRET
