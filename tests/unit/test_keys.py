"""Redis key names: one hash slot per user, and no key of one user another user's key."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from profiling.store import (
    aside_key,
    aside_state_key,
    erased_key,
    legacy_keys,
    profile_key,
    scored_index_key,
    scored_key,
    script_keys,
    seen_key,
    state_key,
    user_of_key,
)

# Ids a shop may send (the contract allows any string): braces where a hash tag has them.
USERS = [
    "alice",
    "a",
    "a}:x",
    "}evil",
    "}",
    "{",
    "{}",
    "a{b",
    "x}y}z",
    "a}=b",
    "=b",
    "ü}ß",
    "}}",
    "x}",
    "shop}42",
    "0123456789abcdef0123456789abcdef}=q",
]
EVENTS = ["e1", "x}", ":", "}=b", "{x}"]
PER_USER = (profile_key, state_key, erased_key, seen_key, aside_key, aside_state_key,
            scored_index_key)  # fmt: skip


def keys_of(user_id: str) -> list[str]:
    return [make(user_id) for make in PER_USER] + [scored_key(user_id, e) for e in EVENTS]


@pytest.mark.parametrize("user_id", USERS)
def test_every_key_of_a_user_is_in_one_slot(user_id: str) -> None:
    """A cluster refuses a script whose keys span slots; one event of a user whose id
    starts with `}` used to stop a worker for good."""
    slots = {key_slot(key.encode()) for key in keys_of(user_id)}
    assert len(slots) == 1


def test_no_two_users_share_a_key() -> None:
    """User `a`'s scored event `x}` and user `a}:x`'s index were the same key."""
    owners: dict[str, str] = {}
    for user_id in USERS:
        for key in keys_of(user_id):
            assert owners.setdefault(key, user_id) == user_id, key
    assert len(owners) == len(USERS) * (len(PER_USER) + len(EVENTS))


def test_only_ids_a_tag_cannot_carry_change_names() -> None:
    """Ids with a `}` kept working keys before, unless it came first or before `:`
    (or `=`, which a digest's tag uses): those keep their names."""
    assert profile_key("alice") == "profile:{alice}"
    assert scored_key("a{b", "x}") == "profile-scored:{a{b}:x}"
    assert profile_key("shop}42") == "profile:{shop}42}"
    for moved in ("}evil", "a}:x", "a}=b"):
        assert profile_key(moved).endswith("}=" + moved) and legacy_keys(moved)
    assert legacy_keys("shop}42") == []


@pytest.mark.parametrize("user_id", USERS)
def test_the_user_is_read_back_from_a_key(user_id: str) -> None:
    assert user_of_key(profile_key(user_id)) == user_id
    assert user_of_key(state_key(user_id), "profile-state:") == user_id


@pytest.mark.parametrize("user_id", ["alice", "}evil"])
def test_the_scripts_keys_are_the_named_ones(user_id: str) -> None:
    named = (profile_key(user_id), state_key(user_id), seen_key(user_id), erased_key(user_id))
    assert script_keys(user_id) == named
