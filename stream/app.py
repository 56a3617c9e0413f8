"""The Faust application: `faust -A stream.app worker -l info`.

Faust gives the worker its lifecycle, signal handling and web server
(`/health`, `/ready`, `/metrics`, `/profile/{user_id}`); the high-volume event path is
the same `BatchWorker` that `profiler run` starts, running as a Faust service,
because aiokafka `getmany` batches are far cheaper per event than Faust's
per-event stream (DESIGN.md §5). On shutdown the service drains the batch in
flight and commits it before the app stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from typing import Any, ClassVar

import faust
from faust.app.base import BootStrategy
from mode import Service
from pydantic import ValidationError

from profiling.errors import ProfilerError
from stream import kafka, metrics
from stream.preflight import SERVER_ERRORS, check_servers
from stream.runner import settle_heap
from stream.settings import Settings, refusals
from stream.web import health_body, observe_lag, profile_reply, readiness
from stream.worker import BatchWorker, stop_within

log = logging.getLogger("profiler.app")


def _load_settings() -> Settings:
    """The PROFILER_* settings; a bad value is a line naming its variable and exit 2, as
    `profiler run` says it, not a traceback out of the app's import."""
    try:
        return Settings()
    except ValidationError as exc:
        for line in refusals(exc):
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _load_settings()


def broker_credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """Faust's own clients' security: the one the batch worker's clients get
    (`stream.kafka.security_options`), SSL and SASL alike."""
    options = kafka.security_options(settings)
    context = options.get("ssl_context")
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            ssl_context=context,
            mechanism=options["sasl_mechanism"],
        )
    return faust.SSLCredentials(context) if context is not None else None


class EventPathBoot(BootStrategy):
    """Faust's own Kafka clients stay off: the event path (`BatchWorker`) has its own
    consumer and producer. Faust's consumer would join a second group (`<group>-faust`)
    and declare a leader-election topic (`<group>-faust-__assignor-__leader`), needing
    rights to create topics and to join that group, for agents this app does not have."""

    enable_kafka = False


class ProfilerApp(faust.App):
    BootStrategy = EventPathBoot
    web_started = 0.0  # `time.monotonic()` as the web server was set up: /health's uptime

    def on_webserver_init(self, web: Any) -> None:
        self.web_started = time.monotonic()


app = ProfilerApp(
    f"{settings.group_id}-faust",
    broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
    broker_credentials=broker_credentials(settings),
    web_port=settings.web_port or 6066,  # Faust's default; unused when 0 turns the web off
    web_enabled=settings.web_port != 0,
    autodiscover=False,
    # Faust keeps table state on disk; this app has no tables, so keep it out of the cwd.
    datadir=os.path.join(tempfile.gettempdir(), f"{settings.group_id}-faust"),
    topic_allow_declare=True,
    producer_acks=-1,
    # Should agents turn Faust's own clients on (`EventPathBoot`), they follow the worker's.
    broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
    broker_rebalance_timeout=settings.kafka_session_timeout_ms / 1000,
    broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
)


class EventPathService(Service):
    """Runs the batch worker for the lifetime of the Faust app."""

    running: ClassVar[BatchWorker | None] = None  # the started worker, for the web pages
    failed: ClassVar[BaseException | None] = None  # why the event path stopped on its own
    worker: BatchWorker | None = None
    _starting: asyncio.Task[None] | None = None  # the worker's `start`
    _task: asyncio.Task[Any] | None = None
    _crashing: asyncio.Future[None] | None = None

    async def on_start(self) -> None:
        # Faust starts user services once the app has started, even when a SIGTERM
        # arrived meanwhile; by then the app has stopped its children, so a worker
        # started now would never be stopped (its Kafka clients left open).
        if app.should_stop:
            return
        try:
            await self._start_worker()
        except (ProfilerError, *SERVER_ERRORS) as exc:
            # One line, as `profiler run` says it, not Faust's traceback of the crash.
            log.error("cannot start the worker: %s", exc)
            raise SystemExit(1) from None
        if self.worker is None:  # stopped meanwhile
            return
        settle_heap(settings.batch_max_events)
        EventPathService.running = self.worker
        self._task = asyncio.ensure_future(self.worker.run())
        self._task.add_done_callback(self._ended)

    async def _start_worker(self) -> None:
        """Check the servers (before the encoder and models load), build the worker and
        start its clients; no worker when the service was stopped meanwhile."""
        await check_servers(settings)
        if self.should_stop:  # stopped meanwhile: no worker for `on_stop` to close
            return
        self.worker = BatchWorker(settings)
        # A task of its own, for `on_stop` to end before it closes the clients.
        self._starting = asyncio.ensure_future(self.worker.start())
        await self._starting

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """The event path stopped. On an error, say so and crash the app: left running,
        it would keep its partitions (and answer /health) with nobody consuming them."""
        if task.cancelled() or task.exception() is None:
            return
        if self.worker is not None and self.worker.stopping:
            return  # the app is stopping: the batch in flight is left to `stop_within`
        error = task.exception()
        assert error is not None
        EventPathService.failed = error
        log.error("the event path stopped: %s: %s", type(error).__name__, error, exc_info=error)
        self._crashing = asyncio.ensure_future(self.crash(error))

    async def on_stop(self) -> None:
        if self.worker is None:
            return
        self.worker.request_stop()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()  # closed while starting, they would fail in `on_start`
            await asyncio.wait({self._starting})
        if self._task is not None:  # else stopped while its clients were starting
            _cancel_on_signal(self._task)
            with contextlib.suppress(Exception):  # logged as it ended (`_ended`)
                if await stop_within(self._task) is None:
                    log.warning("stopped without committing the batch in flight: it will be "
                                "replayed")  # fmt: skip
        await self.worker.close()


def _cancel_on_signal(task: asyncio.Task[Any]) -> None:
    """A second SIGTERM or SIGINT stops without the batch in flight, as under `profiler run`
    (`stream.runner.run_worker`): Faust's worker ignores every signal after the first."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)


app.service(EventPathService)


@app.page("/health")
async def health(web: Any, request: Any) -> Any:
    body = health_body(app.web_started)
    if EventPathService.failed is not None:
        return web.json({**body, "status": "failed", "error": _failure()}, status=503)
    return web.json(body)


@app.page("/ready")
async def ready(web: Any, request: Any) -> Any:
    worker = EventPathService.running
    if EventPathService.failed is not None:
        return web.json({"ready": False, "checks": {"worker": _failure()}}, status=503)
    if worker is None:
        return web.json({"ready": False, "checks": {"worker": "starting"}}, status=503)
    report = await readiness(worker, settings.ready_max_lag)
    return web.json(report, status=200 if report["ready"] else 503)


def _failure() -> str:
    error = EventPathService.failed
    return f"stopped: {type(error).__name__}: {error}"


@app.page("/metrics")
async def prometheus_metrics(web: Any, request: Any) -> Any:
    if EventPathService.running is not None:
        await observe_lag(EventPathService.running)
    return web.bytes(metrics.exposition(), content_type="text/plain; version=0.0.4")


@app.page("/profile/{user_id:.+}")  # any id: `{`, `}` and `/` too
async def profile_page(web: Any, request: Any, user_id: str) -> Any:
    status, body = await profile_reply(settings, user_id)
    return web.json(body, status=status)
