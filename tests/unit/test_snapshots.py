"""Signed model snapshots: what was signed comes back; nothing else is ever unpickled."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from profiling.models import ProfileModels
from profiling.snapshots import SnapshotRefusedError, sign, verified_load

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
    a = models.risk.score(FEATURES, learn=False)
    b = restored.risk.score(FEATURES, learn=False)
    assert a == b


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
