"""A bug injected into the batch step for the events of one user, "poison"."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from profiling import pipeline
from profiling.profile import Profile
from stream import redis_store

POISON = "poison"


def fail_on_poison(
    monkeypatch: pytest.MonkeyPatch,
    where: Literal["fold", "write"],
    error: Exception | None = None,
) -> None:
    """Raise `error` in the fold (`fold`: the aggregates fold) or the write (`write`: the
    hash fields) of user "poison"'s events; every other user's go through untouched.

    The stand-ins pass on whatever else the real functions take, so a parameter added
    to them later does not make every user fail.
    """
    if where == "fold":
        real_fold = pipeline.apply_deliveries
        fold_error = error or ValueError("a bug in the fold")

        def failing_fold(profile: Profile, *rest: Any) -> Any:
            if profile.user_id == POISON:
                raise fold_error
            return real_fold(profile, *rest)

        monkeypatch.setattr(pipeline, "apply_deliveries", failing_fold)
        return
    real_items = redis_store.public_items
    write_error = error or ValueError("a bug in the write")

    def failing_write(profile: Profile, *rest: Any) -> list[str]:
        if profile.user_id == POISON:
            raise write_error
        return real_items(profile, *rest)

    monkeypatch.setattr(redis_store, "public_items", failing_write)
