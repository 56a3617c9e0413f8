"""`profiler demo`: the whole system on one machine, with nothing installed but this package.

A real Kafka-compatible broker and a real redis-server start on free ports, a
synthetic shop streams through a real worker while a live panel shows its
progress, and a summary says what was built.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from profiling.embedding_cache import embed_texts
from profiling.interests import InterestModel
from profiling.models import ProfileModels
from profiling.store import user_of_key
from stream import kafka
from stream.devstack import DevStack, DevStackError
from stream.interrupts import run_main
from stream.lookup import read_profile_json
from stream.model_setup import segment_sizes
from stream.producing import send_all
from stream.redis_store import connect
from stream.settings import Settings
from stream.synthetic_shop import ShopGenerator, shop_rates
from stream.worker import CLOSE_STEP_S, BatchWorker, WorkerStats, wall_clock_ms

HOUR_MS = 3_600_000
MALFORMED_RATIO = 0.005
DUPLICATE_RATIO = 0.01
# How long the demo may take to stop once a server of its stack died (`_ended_if_stuck`).
STUCK_AFTER_FAILURE_S = 30.0
# Tansu holds a group join for about half the session timeout: keep it short here.
QUICK_GROUPS = {"kafka_session_timeout_ms": 3000, "kafka_heartbeat_interval_ms": 300}


@dataclass
class Feed:
    """What the producer side has sent so far."""

    sent: int = 0
    done: bool = False


def run_demo(
    base_settings: Settings,
    *,
    users: int,
    events: int,
    seed: int,
    console: Console,
    say_failed: Callable[[str], None],
) -> None:
    """Start the stack, stream the shop, print the summary; stop everything on the way out.

    `base_settings` (loaded with `QUICK_GROUPS`) gets the stack's servers in place of its own,
    and the shop's exchange rates when it sets none: the shop sells in eight currencies.
    A server of the stack that dies ends the demo with `DevStackError`, or, should its
    event loop not stop, with `say_failed(why)` and status 1 (`_ended_if_stuck`).
    """
    rates = shop_rates(base_settings.currency)
    if not base_settings.currency_rates and rates is not None:
        base_settings = base_settings.model_copy(update={"currency_rates": rates})
    console.print("starting a local Kafka-compatible broker (Tansu) and redis-server ...")
    with DevStack(base_settings, partitions=4) as stack:
        settings = stack.settings()
        console.print(f"broker {settings.kafka_bootstrap}, redis {settings.redis_url}")
        with _ended_if_stuck(stack, say_failed):
            run_main(_while_up(stack, lambda: _stream_shop(settings, users, events, seed, console)))


@contextlib.contextmanager
def _ended_if_stuck(stack: DevStack, say_failed: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, a thread that ends the process when a server of the stack
    died `STUCK_AFTER_FAILURE_S` ago: `say_failed(why)`, the stack stopped, status 1.

    `_while_up` cancels the worker when a server dies, and it closes within its close
    steps. Yet once in a few dozen runs on a loaded machine, with the broker gone, the
    cancellation did not end it, and the demo retried its dead broker for ever (where
    the cancellation was lost is not known; aiokafka swallows cancellations in places).
    Its data lived in the stack: nothing is left to finish.
    """
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.25):
            if (failure := stack.failure()) is not None:
                if not done.wait(STUCK_AFTER_FAILURE_S):
                    say_failed(failure)
                    sys.stderr.flush()
                    stack.stop()
                    os._exit(1)
                return

    threading.Thread(target=watch, name="profiler-demo-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()


async def _while_up(stack: DevStack, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `work()`; DevStackError if a server of the stack exits first (the worker would
    otherwise retry its broker or Redis for ever). Made here, `work()` is not left unawaited
    when a Ctrl-C cancels this before its first step."""
    working, watching = asyncio.ensure_future(work()), asyncio.ensure_future(stack.watch())
    try:
        await asyncio.wait([working, watching], return_when=asyncio.FIRST_COMPLETED)
        if not working.done():
            working.cancel()
            await asyncio.gather(working, return_exceptions=True)  # the worker closes
            raise DevStackError(watching.result())
        await working
    finally:
        watching.cancel()


async def _stream_shop(
    settings: Settings, users: int, events: int, seed: int, console: Console
) -> None:
    now = wall_clock_ms()
    shop = ShopGenerator(users=users, seed=seed, start_ms=now - 6 * HOUR_MS, end_ms=now)
    worker = BatchWorker(settings)
    try:  # a Ctrl-C may come while the worker starts or joins its group: close it then too
        await worker.start()
        stats, seconds = await _stream_with_progress(worker, settings, shop, events, console)
    finally:
        await worker.close()
    await _summarise(settings, stats, seconds, console)
    if worker.stages.interests is not None:
        await _show_interests(settings, shop, worker.stages.interests, console)
    if worker.models is not None:
        await _show_segments(settings, worker.models, console)


async def _stream_with_progress(
    worker: BatchWorker, settings: Settings, shop: ShopGenerator, events: int, console: Console
) -> tuple[WorkerStats, float]:
    """Run the started worker until idle while the shop streams; its stats and the seconds."""
    feed = Feed()
    consuming = asyncio.create_task(worker.run(until_idle_s=2.0))
    tasks: list[asyncio.Task[Any]] = [consuming]
    try:
        # Joining the consumer group takes a few seconds; stream once the worker owns partitions.
        await asyncio.wait(
            [asyncio.ensure_future(worker.assignment.assigned.wait()), consuming],
            return_when=asyncio.FIRST_COMPLETED,
        )
        started = time.monotonic()
        producing = asyncio.create_task(_produce(settings, shop, events, feed))
        tasks.append(producing)
        with Live(
            _progress(feed, worker.stats, started), console=console, refresh_per_second=4
        ) as live:
            while not consuming.done():
                await asyncio.sleep(0.25)
                live.update(_progress(feed, worker.stats, started))
                if producing.done() and producing.exception():
                    worker.request_stop()
            live.update(_progress(feed, worker.stats, started))
        await producing
        return await consuming, time.monotonic() - started
    finally:  # interrupted: both end before the worker's clients are closed under them
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _produce(settings: Settings, shop: ShopGenerator, events: int, feed: Feed) -> None:
    """Stream the shop in chunks, yielding to the worker between them."""
    records = iter(shop.records(events, MALFORMED_RATIO, DUPLICATE_RATIO))
    producer = kafka.producer(settings)
    await producer.start()
    try:
        while chunk := list(islice(records, 2000)):
            feed.sent += await send_all(producer, settings.topic_events, chunk)
    finally:
        # Its broker gone, a stop would flush what it holds until the sends expire; the
        # demo stops on the broker's exit, and its error says so.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_STEP_S):  # a cancel as it stops is kept
                await producer.stop()
        feed.done = True


def _progress(feed: Feed, stats: WorkerStats, started: float) -> Panel:
    elapsed = max(time.monotonic() - started, 1e-6)
    table = Table.grid(padding=(0, 2))
    table.add_row("produced", f"{feed.sent:,}", "done" if feed.done else "streaming ...")
    table.add_row("consumed", f"{stats.records:,}", f"{stats.records / elapsed:,.0f} events/s")
    table.add_row("batches", f"{stats.batches:,}", "")
    table.add_row("applied", f"{stats.applied:,}", f"{stats.duplicates:,} duplicates dropped")
    table.add_row("dead-lettered", f"{stats.dead_letters:,}", "to behavior-events.dlq")
    table.add_row("profile writes", f"{stats.profiles_written:,}", "")
    table.add_row("changes published", f"{stats.changes_published:,}", "to profile-updates")
    table.add_row("fraud alerts", f"{stats.alerts_published:,}", "to fraud-alerts")
    return Panel(table, title="profiler demo", expand=False)


async def _summarise(
    settings: Settings, stats: WorkerStats, seconds: float, console: Console
) -> None:
    client = connect(settings.redis_url)
    try:
        keys = [key async for key in client.scan_iter(match="profile:{*", count=1000)]
        spends = await _spends(client, keys)
    finally:
        await client.aclose()
    # who spent: the top of all-zero spends would name a shopper who bought nothing
    buyers = {user: spend for user, spend in spends.items() if spend > 0}
    top_user = max(buyers, key=buyers.__getitem__) if buyers else None
    console.print()
    table = Table(title="what the demo built", show_header=False)
    table.add_row("events streamed", f"{stats.records:,} in {seconds:.1f} s")
    table.add_row("applied / duplicates", f"{stats.applied:,} / {stats.duplicates:,}")
    errors = ", ".join(f"{code} {n}" for code, n in stats.errors.most_common())
    table.add_row("dead-lettered", f"{stats.dead_letters:,} ({errors or 'none'})")
    table.add_row("profiles in Redis", f"{len(keys):,}")
    table.add_row(
        "buyers / revenue",
        f"{len(buyers):,} / {sum(buyers.values()):,.2f} {settings.currency}",
    )
    console.print(table)
    if top_user is None:
        console.print("no top spender: nobody bought anything")
    else:
        body = await read_profile_json(settings.redis_url, top_user)
        assert body is not None
        for name in ("vec_long", "vec_short"):
            if name in body:
                body[name] = f"<{len(body[name]) * 3 // 4} bytes: float32 x 384, base64 in full>"
        console.print(f"top spender's profile (profiler profile {top_user}):")
        console.print_json(orjson.dumps(body).decode())


async def _show_interests(
    settings: Settings, shop: ShopGenerator, interests: InterestModel, console: Console
) -> None:
    """What vec_long means: the catalogue titles nearest to a few users' long-term vectors."""
    titles = sorted({product.fields["title"] for product in shop.catalog.products})
    vectors = await embed_texts(
        titles, interests.encoder, interests.lru, interests.shared, ttl_s=interests.cache_ttl_s
    )
    client = connect(settings.redis_url)
    try:
        keys = [key async for key in client.scan_iter(match="profile:{*", count=1000)]
        table = Table(title="nearest catalogue titles to vec_long", show_header=True)
        table.add_column("user")
        table.add_column("events")
        table.add_column("top titles by cosine")
        for key in sorted(keys)[:5]:
            raw_vec, events = await client.hmget(key, ["vec_long", "events"])
            if not isinstance(raw_vec, bytes) or not isinstance(events, bytes):
                continue
            scores = vectors @ np.frombuffer(raw_vec, dtype="<f4")
            best = np.argsort(scores)[::-1][:3]
            table.add_row(
                user_of_key(key.decode()),
                events.decode(),
                "\n".join(f"{scores[i]:.2f}  {titles[i]}" for i in best),
            )
        console.print(table)
    finally:
        await client.aclose()


async def _show_segments(settings: Settings, models: ProfileModels, console: Console) -> None:
    """What the live segments are: size and the words of each centre (as `profiler segments`)."""
    client = connect(settings.redis_url)
    try:
        sizes = await segment_sizes(client)
    finally:
        await client.aclose()
    table = Table(title="segments (River k-means, live)", show_header=True)
    table.add_column("segment")
    table.add_column("users", justify="right")
    table.add_column("its users, in words")
    for segment in range(models.segments.n_segments):
        if sizes.get(segment):
            table.add_row(str(segment), f"{sizes[segment]:,}", models.segments.describe(segment))
    console.print(table)


async def _spends(client: object, keys: list[bytes]) -> dict[str, float]:
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for key in keys:
        pipe.hget(key, "spend")
    values = await pipe.execute()
    spends: dict[str, float] = {}
    for key, value in zip(keys, values, strict=True):
        user = user_of_key(key.decode())
        spends[user] = float(value or 0)
    return spends
