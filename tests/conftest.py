"""Shared fixtures: a real Tansu broker and a real redis-server, isolated per test.

Integration tests run against real servers (no mocks: a mocked client is how a
backend ships awaiting a synchronous call). The servers start once per session,
on free ports, and only when a test asks for them; each test gets its own topics,
consumer group and an empty Redis, so tests never see each other's data.

Fixtures:
    broker         session  a started `LocalBroker` (memory storage); `.bootstrap`
    redis_server   session  a started `LocalRedis`; `.url`
    redis_url      function the Redis URL, after FLUSHALL
    make_settings  function async factory: `await make_settings(partitions=3, **overrides)`
                            creates fresh topics and returns a `Settings` for them
    topics         function `await make_settings()`: a `Settings` with fresh topics,
                            a fresh group id, the broker and the flushed Redis

Tests using these are marked `integration` automatically; tests under
tests/unit may not use them, so `pytest tests/unit` never starts a process.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis import asyncio as aioredis

from stream.devstack import LocalBroker, LocalRedis, create_topics, default_topics
from stream.redis_store import connect
from stream.settings import TOPICS, Settings

SettingsFactory = Callable[..., Awaitable[Settings]]

_TESTS = Path(__file__).parent
_PROCESS_FIXTURES = frozenset({"broker", "redis_server", "redis_url", "make_settings", "topics"})


def pytest_configure(config: pytest.Config) -> None:
    """Drop PROFILER_* from the environment: a shell that exported `profiler dev-stack`
    lines must not change what the tests see (tests that need a variable set it)."""
    for name in [key for key in os.environ if key.startswith("PROFILER_")]:
        del os.environ[name]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark integration tests; refuse unit tests that would start servers."""
    for item in items:
        uses_servers = bool(_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())))
        path = Path(str(item.path))
        if uses_servers and path.is_relative_to(_TESTS / "unit"):
            raise pytest.UsageError(
                f"{item.nodeid} uses a server fixture; unit tests run without network: "
                "move it to tests/integration"
            )
        if uses_servers or path.is_relative_to(_TESTS / "integration"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One Tansu broker (memory storage) for the whole session."""
    with LocalBroker() as running:
        yield running


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One redis-server for the whole session."""
    with LocalRedis() as running:
        yield running


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    """The session Redis, emptied (all databases) before the test."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """The asyncio client the worker uses (`stream.redis_store.connect`), on the emptied Redis."""
    client = connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def make_settings(
    broker: LocalBroker, redis_url: str, request: pytest.FixtureRequest
) -> SettingsFactory:
    """Factory of `Settings` with fresh topics and group id; each call makes a new set."""
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name)[:40].strip("-")

    async def make(partitions: int = 3, **overrides: Any) -> Settings:
        suffix = f"{slug}-{uuid.uuid4().hex[:8]}"
        names = {field: f"{Settings.model_fields[field].default}.{suffix}" for field in TOPICS}
        fields: dict[str, Any] = {
            "kafka_bootstrap": broker.bootstrap,
            "redis_url": redis_url,
            "group_id": f"profiler-{suffix}",
            # Tansu holds a join for about half the session timeout: keep groups quick.
            "kafka_session_timeout_ms": 2000,
            "kafka_heartbeat_interval_ms": 200,
            # The deterministic hashing encoder keeps pipeline tests fast; the real
            # MiniLM path has its own tests (test_interest_vectors.py).
            "encoder_model": "hashing",
            **names,
            **overrides,
        }
        settings = Settings(**fields)
        await create_topics(broker.bootstrap, default_topics(settings, partitions))
        return settings

    return make


@pytest.fixture
async def topics(make_settings: SettingsFactory) -> Settings:
    """`Settings` pointed at the session broker and Redis, with this test's own topics."""
    return await make_settings()
