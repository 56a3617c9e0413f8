"""What `profiler` commands print, where it needs no server: the replies they word are faked."""

from __future__ import annotations

import re

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


@pytest.mark.parametrize("command", [[], ["topics"]])
def test_every_command_is_summed_up_on_one_line_of_help(command: list[str]) -> None:
    """A docstring's line break is kept in `--help`: its rest stood alone on a line."""
    done = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    box = done.output.split("Commands")[1].split("╰")[0]
    rows = [line for line in box.splitlines()[1:] if line.strip()]
    assert rows and all(re.match(r"│ \S", row) for row in rows), box
