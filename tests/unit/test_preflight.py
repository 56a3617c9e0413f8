"""What the start-up check prints of a Redis URL: never its password."""

from __future__ import annotations

import pytest

from stream.preflight import redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://user:pw@host:6379/2", "redis://user:***@host:6379/2"),
        ("rediss://:pw@host/0", "rediss://:***@host/0"),
        ("redis://user@host:6379", "redis://user@host:6379"),
        ("redis://u:p@ss:w@[::1]:6380/1", "redis://u:***@[::1]:6380/1"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
    ],
)
def test_the_password_of_a_redis_url_is_hidden(url: str, shown: str) -> None:
    assert redacted(url) == shown
