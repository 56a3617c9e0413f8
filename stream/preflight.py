"""Before a worker loads anything heavy: can it reach Redis and the broker?

A worker's start-up loads the text encoder and the River models, several
seconds on a CPU. A wrong `PROFILER_REDIS_URL` or `PROFILER_KAFKA_BOOTSTRAP`
is found here first, in well under a second, and the error names the
setting; topics the broker does not have are named in a warning. The
worker's own start checks the same servers again: this is for the
operator's sake, not a guarantee that they stay up.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from redis.exceptions import RedisClusterException, RedisError

from profiling.errors import ProfilerError
from stream import kafka
from stream.redis_store import connect
from stream.settings import Settings

log = logging.getLogger("profiler.preflight")

# How long the broker may take to answer the first metadata request. A refused
# connection fails at once; this bounds an address that never answers.
BOOTSTRAP_TIMEOUT_MS = 10_000


class StartupError(ProfilerError):
    """The worker could not start (a port taken, a server unreachable); the message says which."""


async def check_servers(settings: Settings) -> None:
    """Raise `StartupError` naming the setting when Redis or the broker cannot be reached."""
    where = redis_setting(settings)
    try:
        client = connect(settings.redis_url, cluster=settings.redis_cluster)
    except ValueError as exc:  # redis-py's verdict on the URL itself
        raise StartupError(f"{where}: {exc}") from exc
    try:
        await client.ping()
    except (RedisError, RedisClusterException, OSError) as exc:
        raise StartupError(f"Redis at {where} is unreachable: {exc}") from exc
    finally:
        await client.aclose()
    try:
        options = kafka.security_options(settings)
    except (OSError, ValueError) as exc:  # the CA bundle cannot be read
        raise StartupError(f"PROFILER_KAFKA_SSL_CAFILE={settings.kafka_ssl_cafile}: {exc}") from exc
    broker = AIOKafkaClient(**options, request_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # it logs each refused address; the error below says it
    try:
        await broker.bootstrap()
        missing = [name for name in settings.topic_names() if name not in broker.cluster.topics()]
        partitions = {
            name: len(broker.cluster.partitions_for_topic(name) or ())
            for name in (settings.topic_events, settings.topic_commands)
        }
    except (KafkaError, OSError) as exc:
        raise StartupError(
            f"the broker at {broker_setting(settings)} is unreachable: {exc}"
        ) from exc
    finally:
        quiet.setLevel(level)
        await broker.close()
    if missing:  # a warning: a broker may create topics on first use (Kafka's default)
        log.warning(
            "not on the broker yet: %s (`profiler topics create` makes them; a broker "
            "that creates topics on first use needs nothing)",
            ", ".join(missing),
        )
    events, commands = partitions[settings.topic_events], partitions[settings.topic_commands]
    if events and commands and events != commands:
        log.warning(
            "%s has %d partitions and %s %d: a user's erase or merge then runs on a worker "
            "other than the one folding the user's events; it stays safe, but its tombstone "
            "may reach readers out of order with the user's change messages",
            settings.topic_commands, commands, settings.topic_events, events,
        )  # fmt: skip


def redis_setting(settings: Settings) -> str:
    """`PROFILER_REDIS_URL=...` as errors show it (without a password)."""
    return f"PROFILER_REDIS_URL={redacted(settings.redis_url)}"


def broker_setting(settings: Settings) -> str:
    """`PROFILER_KAFKA_BOOTSTRAP=...` as errors show it."""
    return f"PROFILER_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}"


def redacted(url: str) -> str:
    """`url` with its password, if any, shown as `***` (it goes to logs and terminals)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))
