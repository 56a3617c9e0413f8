"""The baseline a team would write without profiler: a plain faust-streaming app.

It reads the same events topic with `stream.take()` batches, parses each value
with orjson, skips what does not parse, and keeps per-user counters (events,
per-type counts, spend, last_seen) in Redis through one pipeline per batch: the
simplest honest version of the job, with no validation contract, dedupe,
idempotence, DLQ or change topic. `bench/throughput.py` runs it side by side
with `profiler run` on the same pre-filled topic.

    BASELINE_BOOTSTRAP=... BASELINE_REDIS_URL=... BASELINE_TOPIC=... \\
        faust -A bench.faust_baseline worker -l warn
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import faust
import orjson
import redis.asyncio as aioredis

BOOTSTRAP = os.environ.get("BASELINE_BOOTSTRAP", "localhost:9092")
REDIS_URL = os.environ.get("BASELINE_REDIS_URL", "redis://localhost:6379/0")
TOPIC = os.environ.get("BASELINE_TOPIC", "behavior-events")
TAKE = int(os.environ.get("BASELINE_TAKE", "2000"))

app = faust.App(
    os.environ.get("BASELINE_APP_ID", "faust-baseline"),
    broker=f"kafka://{BOOTSTRAP}",
    web_enabled=False,
    autodiscover=False,
    datadir=os.path.join(tempfile.gettempdir(), "profiler-faust-baseline"),
    broker_session_timeout=3,
    broker_rebalance_timeout=3,
    broker_heartbeat_interval=0.3,
    consumer_auto_offset_reset="earliest",
    topic_allow_declare=True,
)
events_topic = app.topic(TOPIC, key_type=bytes, value_type=bytes, value_serializer="raw")
redis = aioredis.Redis.from_url(REDIS_URL)


@app.agent(events_topic, concurrency=1)
async def count_events(stream: Any) -> None:
    async for values in stream.take(TAKE, within=0.2):
        pipe = redis.pipeline(transaction=False)
        parsed = 0
        for raw in values:
            try:
                event = orjson.loads(raw)
                key = f"baseline:{{{event['user_id']}}}"
                pipe.hincrby(key, "events", 1)
                pipe.hincrby(key, f"count:{event['type']}", 1)
                if event["type"] == "purchase":
                    pipe.hincrbyfloat(key, "spend", float(event.get("amount", 0)))
                pipe.hset(key, "last_seen", event["ts"])
                parsed += 1
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        now = time.time()
        pipe.set("baseline:first", now, nx=True)
        pipe.set("baseline:first_records", len(values), nx=True)  # the batch before `first`
        pipe.set("baseline:last", now)
        pipe.incrby("baseline:records", len(values))
        await pipe.execute()
