"""Before a worker loads anything heavy: can it reach Redis and the broker?

A worker's start-up loads the text encoder and the River models, several
seconds on a CPU. A wrong `PROFILER_REDIS_URL` or `PROFILER_KAFKA_BOOTSTRAP`
is found here first, in well under a second, and the error names the
setting; topics the broker does not have are named in a warning. The
worker's own start checks the same servers again: this is for the
operator's sake, not a guarantee that they stay up.

`redis_client` and `broker_options` are the checks that need no server (a URL
redis-py refuses, a bootstrap list with a bad port, a CA bundle that cannot be
read); the commands that only reach one server run them before they start.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import get_ip_port_afi
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
CANCEL_GRACE_S = 2.0
# What a worker's own start raises when a server it checked here went away since (or
# stopped answering): one line each (`StartupError`), not a traceback. A Redis
# Cluster's client raises RedisClusterException, no RedisError, when no node answers.
SERVER_ERRORS: Final = (KafkaError, RedisError, RedisClusterException, OSError)


class StartupError(ProfilerError):
    """The worker could not start (a port taken, a server unreachable); the message says which."""


async def check_servers(settings: Settings) -> None:
    """Raise `StartupError` naming the setting when Redis or the broker cannot be reached.

    A stop asked meanwhile (the task cancelled) lets the check finish first, for up to
    `CANCEL_GRACE_S`: aiokafka closes a bootstrap connection on errors only, so one
    cancelled halfway would be left open (the Faust app, stopped while it starts).
    """
    check = asyncio.ensure_future(_check_servers(settings))
    try:
        await asyncio.shield(check)
    except asyncio.CancelledError:
        done, _ = await asyncio.wait([check], timeout=CANCEL_GRACE_S)
        if not done:  # a server that does not answer: its connection is left to the GC
            check.cancel()
        elif not check.cancelled():
            check.exception()  # retrieved: the stop is the news, not why the check failed
        raise


async def _check_servers(settings: Settings) -> None:
    client = redis_client(settings)
    try:
        await client.ping()
    except (RedisError, RedisClusterException, OSError) as exc:
        raise StartupError(f"Redis at {redis_setting(settings)} is unreachable: {exc}") from exc
    finally:
        await client.aclose()
    broker = AIOKafkaClient(**broker_options(settings), request_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
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


def redis_client(settings: Settings) -> aioredis.Redis:
    """The Redis client of `PROFILER_REDIS_URL` (not connected yet); `StartupError` naming
    the setting when redis-py refuses the URL itself (a scheme, a port out of range)."""
    try:
        return connect(settings.redis_url, cluster=settings.redis_cluster)
    except ValueError as exc:
        raise StartupError(f"{redis_setting(settings)}: {exc}") from exc


def broker_options(settings: Settings) -> dict[str, Any]:
    """The Kafka clients' connection options; `StartupError` naming the setting when a
    bootstrap address is no host:port or the CA bundle cannot be read."""
    for address in settings.kafka_bootstrap.split(","):
        try:  # how aiokafka reads it, only when it first connects
            host, port, _ = get_ip_port_afi(address)
        except ValueError:
            host, port = "", 0
        if not host or not 0 < port < 1 << 16:
            raise StartupError(
                f"{broker_setting(settings)}: {address.strip()!r} is not a host:port "
                "(a comma-separated list of them)"
            )
        try:  # what the resolver does with it: an empty or over-long label fails there
            host.encode("idna")
        except UnicodeError:
            raise StartupError(
                f"{broker_setting(settings)}: {host!r} is no host name (an empty label, "
                "or one longer than 63 characters)"
            ) from None
    try:
        return kafka.security_options(settings)
    except (OSError, ValueError) as exc:  # the CA bundle is missing or no certificate
        raise StartupError(f"PROFILER_KAFKA_SSL_CAFILE={settings.kafka_ssl_cafile}: {exc}") from exc


def check_settings(settings: Settings, *, redis: bool, broker: bool) -> None:
    """`StartupError` naming the setting when the Redis URL (`redis`) or the broker's
    options (`broker`) cannot even be used; reaches no server."""
    if redis:
        redis_client(settings)  # built only to parse the URL: it has no connection to close
    if broker:
        broker_options(settings)


def redis_setting(settings: Settings) -> str:
    """`PROFILER_REDIS_URL=...` as errors show it (without a password)."""
    return f"PROFILER_REDIS_URL={redacted(settings.redis_url)}"


def broker_setting(settings: Settings) -> str:
    """`PROFILER_KAFKA_BOOTSTRAP=...` as errors show it."""
    return f"PROFILER_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}"


# A password redis-py reads from the query string (`?password=`, `&ssl_password=`): it
# takes every query parameter as a keyword of the connection.
QUERY_PASSWORD: Final = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)


def redacted(url: str) -> str:
    """`url` with its passwords, if any, shown as `***` (it goes to logs and terminals):
    the one of its user info and those of its query string."""
    url = QUERY_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:  # one urllib cannot read (an unclosed `[`) may still hold a password
        return re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))
