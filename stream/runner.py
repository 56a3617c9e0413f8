"""Running a worker as a process: signals, start-up, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from profiling.errors import ProfilerError
from stream.preflight import SERVER_ERRORS, StartupError
from stream.settings import Settings
from stream.worker import BatchWorker, WorkerStats, stop_within

log = logging.getLogger("profiler.runner")


# The young generation's threshold: net allocations of container objects between young
# collections (CPython's default: 700), this many per event of the largest batch and
# never fewer than the minimum (BENCHMARKS.md, "The young GC threshold above a batch's peak").
YOUNG_OBJECTS_PER_EVENT = 20
YOUNG_COLLECTION_MIN = 100_000
# `gc.set_threshold` takes a C int: a larger batch setting would overflow it.
YOUNG_COLLECTION_MAX = 2**31 - 1


def young_threshold(batch_max_events: int) -> int:
    """The young threshold for batches of up to `batch_max_events` events."""
    wanted = max(YOUNG_COLLECTION_MIN, YOUNG_OBJECTS_PER_EVENT * batch_max_events)
    return min(YOUNG_COLLECTION_MAX, wanted)


def settle_heap(batch_max_events: int) -> None:
    """Hide what start-up built from the garbage collector, for the life of the process.

    Imported modules, River models and the encoder stay until the process ends,
    yet every full collection would walk them again; frozen, collections walk
    only what batches allocate. Measured on the drain benchmark: about 1.3x the
    events per second (BENCHMARKS.md). Called once per process, after start-up.

    Nearly everything a batch allocates dies by reference count once the batch
    is written. A young collection counts the container objects allocated and
    not yet freed, so one that falls inside a batch walks the batch's live
    events, profiles and features, frees nothing, and moves them all to an
    older generation. A batch of 5,000 events holds about 20,000 of them at its
    peak without the models and 30,000 with them, on top of what outlives
    batches (the profile cache filling). The threshold leaves a few batches'
    room, so collections come from what outlives batches and from cyclic
    garbage, not from each batch's own work.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold(batch_max_events), middle, old)


async def run_worker(settings: Settings, until_idle_s: float | None = None) -> WorkerStats:
    """Run one worker until SIGTERM/SIGINT or until idle.

    A first signal finishes the batch in flight (written, published, committed)
    within `SHUTDOWN_GRACE_S`, then closes; a second one, or the grace running
    out (a broker or Redis gone), stops without it (`stop_within`).
    """
    try:
        worker = BatchWorker(settings)
    except ProfilerError as exc:  # the encoder or the models cannot be built here
        raise StartupError(str(exc)) from exc
    loop = asyncio.get_running_loop()
    stop_asked = asyncio.Event()
    running: list[asyncio.Task[WorkerStats]] = []

    def on_signal() -> None:
        if stop_asked.is_set():  # the second: do not wait for the batch in flight
            for task in running:
                task.cancel()
        stop_asked.set()
        worker.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    web = None
    try:
        try:
            await worker.start()
        except SERVER_ERRORS as exc:
            raise StartupError(str(exc)) from exc
        settle_heap(settings.batch_max_events)
        if settings.web_port:
            from stream.web import start_web

            try:
                web = await start_web(worker, settings.web_port, settings.ready_max_lag)
            except OSError as exc:
                raise StartupError(f"web port {settings.web_port}: {exc.strerror}") from exc
        log.info(
            "worker started: group %s on %s, events from %s",
            settings.group_id,
            settings.kafka_bootstrap,
            settings.topic_events,
        )
        run = asyncio.ensure_future(worker.run(until_idle_s))
        running.append(run)
        asked = asyncio.ensure_future(stop_asked.wait())
        try:
            await asyncio.wait({run, asked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
        if run.done() and not worker.stopping:  # idle, or an error of its own: no stop asked
            return run.result()
        if await stop_within(run) is None:
            log.warning("stopped without committing the batch in flight: it will be replayed")
        return worker.stats
    finally:
        if web is not None:
            await web.cleanup()
        await worker.close()
        log.info("worker stopped after %d records", worker.stats.records)
