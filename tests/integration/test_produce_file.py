"""`produce_file`: a file sent to the events topic, and what it says when the file fails."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from stream.file_import import UnreadableFileError
from stream.producing import produce_file
from tests.conftest import SettingsFactory
from tests.integration.kafka_io import read_topic


async def test_a_file_that_breaks_off_says_how_many_events_were_sent(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A download cut short: the events before the break are on the topic, and the
    error says so (a rerun sends the same ids, which the workers' dedupe drops)."""
    settings = await make_settings(partitions=2)
    lines = b"".join(
        orjson.dumps(
            {"event_id": f"e{i}", "user_id": f"u{i % 7}", "type": "view", "item_id": f"{i}" * 40,
             "ts": 1_700_000_000_000 + i}
        ) + b"\n"
        for i in range(20_000)
    )  # fmt: skip
    whole = gzip.compress(lines)
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(UnreadableFileError) as raised:
        await produce_file(settings, path, None, None)

    on_topic = await read_topic(settings.kafka_bootstrap, settings.topic_events)
    assert 0 < len(on_topic) < 20_000
    assert f"the {len(on_topic)} events before that were sent" in str(raised.value)


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("events.jsonl", gzip.compress),  # gzip whatever the name says
        ("events.jsonl.bz2", bz2.compress),
        ("events.jsonl.xz", lzma.compress),
    ],
)
async def test_a_compressed_file_sends_its_events_whatever_its_name(
    make_settings: SettingsFactory, tmp_path: Path, name: str, compress: Callable[[bytes], bytes]
) -> None:
    """Its compressed bytes were read as lines and went out as events with no key, for
    the workers to dead-letter (or a .bz2 or .xz file had no format to tell)."""
    settings = await make_settings(partitions=2)
    events = [
        {"event_id": f"c{i}", "user_id": f"u{i % 3}", "type": "view", "item_id": "p1",
         "ts": 1_700_000_000_000 + i}
        for i in range(5)
    ]  # fmt: skip
    path = tmp_path / name
    path.write_bytes(compress(b"".join(orjson.dumps(e) + b"\n" for e in events)))

    produced = await produce_file(settings, path, None, None)

    on_topic = await read_topic(settings.kafka_bootstrap, settings.topic_events)
    assert [orjson.loads(record.value) for record in on_topic] == events
    assert produced.sent == 5 and produced.report.unkeyed == 0
