"""The hot path's slot-by-slot constructors give the objects the dataclass would."""

from __future__ import annotations

import dataclasses

import pytest

from profiling import slots
from profiling.behaviour import Behaviour
from profiling.profile import Profile, evolve


def test_copier_and_builder_match_the_dataclass() -> None:
    state = Behaviour(first_ts=1, last_ts=2, events=(1, 2), devices=(("d", 1, 2),), amount_n=3)
    assert slots.copier(Behaviour)(state) == state
    values = [getattr(state, f.name) for f in dataclasses.fields(Behaviour)]
    assert slots.builder(Behaviour)(*values) == state
    with pytest.raises(TypeError):
        slots.builder(Behaviour)(*values[:-1])  # every field, no defaults


def test_evolve_is_replace() -> None:
    profile = Profile("ann", version=3, counts={"view": 2}, category_scores={"books": 1.5})
    assert evolve(profile, version=4, events=9) == dataclasses.replace(profile, version=4, events=9)
    copy = evolve(profile)
    assert copy == profile and copy is not profile
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.version = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        evolve(profile, no_such_field=1)
    nothing = Profile("bob")
    assert evolve(nothing, risk=None, segment=0) == dataclasses.replace(nothing, segment=0)


def test_a_fixed_replacer_is_replace() -> None:
    profile = Profile("ann", version=3, counts={"view": 2}, alerts=("a",))
    bump = slots.replacer_of(Profile, ("events", "version"))
    assert bump(profile, 9, 4) == dataclasses.replace(profile, version=4, events=9)
    with pytest.raises(TypeError):
        slots.replacer_of(Profile, ("version", "no_such_field"))
    with pytest.raises(TypeError):
        slots.replacer_of(Profile, ("version", "version"))
