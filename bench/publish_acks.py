"""How long a batch's messages take from `kafka.send_all` to their last ack.

The worker commits a batch's offsets only after every message it published
(dead letters, change messages, alerts) is acked, and a batch that keeps up
with a stream waits for the previous batch's commit before it takes the next
records. Here one producer with the worker's settings (acks=all, 5 ms of
linger) sends the messages of a steady stream's batch, `--messages` change
messages of about 300 bytes over 6 partitions, to a local broker: with the
batches closed (what the worker does: they go out at once) and left open
(`linger=True`: each waits out the linger), interleaved, `--sends` times each
per round. Milliseconds from the call to the last ack, median and max.

    python bench/publish_acks.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from drain import write_report  # bench/drain.py

from stream import kafka
from stream.devstack import LocalBroker, create_topics
from stream.settings import Settings

RESULTS = Path(__file__).parent / "results"
TOPIC = "profile-updates"


async def measure(messages: int, sends: int, rounds: int) -> list[dict[str, Any]]:
    with LocalBroker() as broker:
        await create_topics(broker.bootstrap, {TOPIC: 6})
        producer = kafka.producer(Settings(kafka_bootstrap=broker.bootstrap))
        await producer.start()
        batch = [(TOPIC, f"user-{i}".encode(), b"x" * 300) for i in range(messages)]
        rows = []
        try:
            for round_no in range(1, rounds + 1):
                for linger in (False, True):
                    millis = []
                    for _ in range(sends):
                        started = time.perf_counter()
                        await asyncio.gather(*await kafka.send_all(producer, batch, linger=linger))
                        millis.append((time.perf_counter() - started) * 1000)
                        await asyncio.sleep(0.01)  # a batch's work between two publishes
                    rows.append(
                        {
                            "round": round_no,
                            "batches": "open (linger)" if linger else "closed",
                            "messages": messages,
                            "median_ms": round(statistics.median(millis), 2),
                            "max_ms": round(max(millis), 2),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            await producer.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=150)
    parser.add_argument("--sends", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "publish_acks.json")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.messages, args.sends, args.rounds))
    write_report(args.out, "publish_acks", rows=rows)


if __name__ == "__main__":
    main()
