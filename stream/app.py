"""The Faust application: `faust -A stream.app worker -l info`.

Faust gives the worker its lifecycle, signal handling and web server
(`/health`, `/metrics`, `/profile/{user_id}`); the high-volume event path is
the same `BatchWorker` that `profiler run` starts, running as a Faust service,
because aiokafka `getmany` batches are far cheaper per event than Faust's
per-event stream (DESIGN.md §5). On shutdown the service drains the batch in
flight and commits it before the app stops.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from mode import Service

from stream import metrics
from stream.lookup import read_profile_json
from stream.settings import Settings
from stream.worker import BatchWorker

settings = Settings()

app = faust.App(
    f"{settings.group_id}-faust",
    broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
    web_port=settings.web_port,
    web_enabled=True,
    autodiscover=False,
    topic_allow_declare=True,
    producer_acks=-1,
    broker_session_timeout=10,
    broker_rebalance_timeout=10,
    broker_heartbeat_interval=1,
)


class EventPathService(Service):
    """Runs the batch worker for the lifetime of the Faust app."""

    worker: BatchWorker | None = None
    _task: asyncio.Task[Any] | None = None

    async def on_start(self) -> None:
        self.worker = BatchWorker(settings)
        await self.worker.start()
        self._task = asyncio.ensure_future(self.worker.run())

    async def on_stop(self) -> None:
        if self.worker is None or self._task is None:
            return
        self.worker.request_stop()
        await self._task
        await self.worker.close()


event_path = app.service(EventPathService)


@app.page("/health")
async def health(web: Any, request: Any) -> Any:
    return web.json({"status": "ok"})


@app.page("/metrics")
async def prometheus_metrics(web: Any, request: Any) -> Any:
    return web.bytes(metrics.exposition(), content_type="text/plain; version=0.0.4")


@app.page("/profile/{user_id}")
async def profile_page(web: Any, request: Any, user_id: str) -> Any:
    body = await read_profile_json(settings.redis_url, user_id)
    if body is None:
        return web.json({"error": "not_found", "user_id": user_id}, status=404)
    return web.json(body)
