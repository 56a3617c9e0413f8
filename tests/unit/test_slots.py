"""The hot path's slot-by-slot constructors give the objects the dataclass would."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from profiling import slots
from profiling.behaviour import Behaviour
from profiling.profile import Delivery, Outcome, Profile, evolve


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


@pytest.mark.parametrize(
    ("module", "name", "record"),
    [
        ("profiling/profile.py", "make_outcome", Outcome),
        ("profiling/models.py", "make_outcome", Outcome),
        ("profiling/pipeline.py", "_delivery", Delivery),
    ],
)
def test_named_tuples_built_by_tuple_new_are_given_every_field(
    module: str, name: str, record: type[tuple[object, ...]]
) -> None:
    """`tuple.__new__` takes a tuple of any length: a field added to the record and not
    to a call would give a short record, with no error until the field is read."""
    tree = ast.parse((Path(__file__).parents[2] / module).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]
    assert calls
    for call in calls:
        (values,) = call.args
        assert isinstance(values, ast.Tuple), ast.unparse(call)
        assert len(values.elts) == len(record._fields), ast.unparse(call)  # type: ignore[attr-defined]
