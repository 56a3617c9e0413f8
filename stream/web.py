"""The worker's web endpoints for `profiler run`: liveness, readiness, metrics, lookup.

`/health` answers while the process's event loop turns; `/ready` only when no
stop has been asked (from SIGTERM on, while the batch in flight drains, traffic
should go elsewhere), the broker and Redis answer (and no batch step is retrying
on either: Redis may answer a PING and refuse writes), its batches apply (not
`UNREADY_AFTER_FAILED_BATCHES` in a row with nothing applied and records
dead-lettered as `internal_error`: an encoder broken for good), the worker owns
partitions, and its consumer lag is under the configured bound, so a load
balancer or an orchestrator can tell a worker that is up from one that is
useful. The Faust app serves the same paths.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream import metrics
from stream.lookup import read_profile_json
from stream.settings import Settings
from stream.worker import BatchWorker

READY_TIMEOUT_S = 2.0


async def readiness(worker: BatchWorker, max_lag: int) -> dict[str, Any]:
    """What `/ready` and `profiler status` report: each check and the verdict.

    Redis and the broker are asked at once, each for at most `READY_TIMEOUT_S`. The
    lag counts every partition the worker owns; one whose lag is not known yet
    (no fetch has told its end) is listed under `lag_unknown`, and the worker is
    not ready until it knows: right after an assignment it may be far behind. A
    worker asked to stop is not ready (`worker`: stopping) while its batch drains,
    nor one whose last batches applied nothing, failing on a bug (`batches`:
    `BatchWorker.batches_failing`).
    """
    checks: dict[str, Any] = {}
    checks["redis"], checks["broker"] = await asyncio.gather(
        _redis_answers(worker), worker.broker_reachable()
    )
    for check, component in (("redis", "redis"), ("broker", "kafka")):
        error = worker.failing(component)
        if checks[check] is True and error is not None:
            checks[check] = f"error: a batch step is retrying after {error}"
    checks["batches"] = worker.batches_failing() or True
    partitions = sorted(f"{tp.topic}:{tp.partition}" for tp in worker.assignment.partitions)
    checks["partitions"] = partitions
    lag, unknown = await worker.lag_now(READY_TIMEOUT_S)
    checks["lag"] = sum(lag.values())
    checks["lag_unknown"] = sorted(f"{tp.topic}:{tp.partition}" for tp in unknown)
    # Read last: a stop asked while the servers were asked for still counts.
    checks["worker"] = "stopping" if worker.stopping else "running"
    ready = (
        checks["worker"] == "running"
        and checks["redis"] is True
        and checks["broker"] is True
        and checks["batches"] is True
        and bool(partitions)
        and not unknown
        and checks["lag"] <= max_lag
    )
    return {"ready": ready, "checks": checks, "max_lag": max_lag}


async def _redis_answers(worker: BatchWorker) -> bool | str:
    try:
        return bool(await asyncio.wait_for(worker.redis.ping(), READY_TIMEOUT_S))
    except TimeoutError:
        return f"error: no answer within {READY_TIMEOUT_S:g} s"
    except Exception as exc:  # any failure means "not ready", and says why
        return f"error: {exc}"


async def observe_lag(worker: BatchWorker) -> None:
    """Set `profiler_consumer_lag` of every owned partition whose end is known: as `/ready`
    counts it (`BatchWorker.lag_now`), also for a partition no batch came from since its
    assignment (a quiet one, or one with a backlog not yet fetched). A partition whose
    lag is not known this time has no series until it is."""
    lag, unknown = await worker.lag_now(READY_TIMEOUT_S)
    metrics.observe_lag(lag, unknown)


async def profile_reply(settings: Settings, user_id: str) -> tuple[int, dict[str, Any]]:
    """What `/profile/{user_id}` answers, under `profiler run` and the Faust app alike:
    200 and the profile, 404 when none is stored, or 503 when Redis is unreachable or
    gives no answer within `READY_TIMEOUT_S`, saying why as `/ready` does."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            body = await read_profile_json(
                settings.redis_url, user_id, cluster=settings.redis_cluster
            )
    except TimeoutError:
        why = f"error: no answer within {READY_TIMEOUT_S:g} s"
    except (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError) as exc:
        why = f"error: {exc}"
    else:
        if body is None:
            return 404, {"error": "not_found", "user_id": user_id}
        return 200, body
    return 503, {"error": "redis_unreachable", "user_id": user_id, "redis": why}


def health_body(started: float) -> dict[str, Any]:
    """What `/health` answers, under `profiler run` and the Faust app alike; `started`:
    `time.monotonic()` as the web server was set up."""
    return {"status": "ok", "uptime_s": round(time.monotonic() - started, 1)}


def build_app(worker: BatchWorker, max_lag: int) -> web.Application:
    started = time.monotonic()

    async def health(_: web.Request) -> web.Response:
        return web.json_response(health_body(started))

    async def ready(_: web.Request) -> web.Response:
        report = await readiness(worker, max_lag)
        return web.Response(
            body=orjson.dumps(report),
            status=200 if report["ready"] else 503,
            content_type="application/json",
        )

    async def prometheus(_: web.Request) -> web.Response:
        await observe_lag(worker)
        return web.Response(body=metrics.exposition(), content_type="text/plain")

    async def profile(request: web.Request) -> web.Response:
        status, body = await profile_reply(worker.settings, request.match_info["user_id"])
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/profile/{user_id:.+}", profile)  # any id: `{`, `}` and `/` too
    return app


async def start_web(worker: BatchWorker, port: int, max_lag: int) -> web.AppRunner:
    """Serve the endpoints on 0.0.0.0:`port` until the returned runner is cleaned up."""
    runner = web.AppRunner(build_app(worker, max_lag), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
