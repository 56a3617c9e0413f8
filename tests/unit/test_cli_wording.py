"""What `profiler` commands print, where it needs no server: the replies they word are faked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import stream.model_setup
from stream.cli import app
from stream.settings import Settings


def test_segments_says_1_user_not_1_users(monkeypatch: pytest.MonkeyPatch) -> None:
    async def report(settings: Settings) -> list[tuple[int, int, str]]:
        return [(0, 1, "frequent"), (1, 2, "average shoppers"), (2, 0, "no users yet")]

    monkeypatch.setattr(stream.model_setup, "segment_report", report)
    done = CliRunner().invoke(app, ["segments"])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [
        "segment 0\t1 user\t33.3 %\tfrequent",
        "segment 1\t2 users\t66.7 %\taverage shoppers",
        "segment 2\t0 users\t0.0 %\tno users yet",
    ]
