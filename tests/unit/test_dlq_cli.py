"""`fleet dlq` refuses bad usage before touching Kafka or Postgres, and prints plans one line per record."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import click
import pytest
from click.testing import CliRunner

from workers.cli import main
from workers.cli.dlq import build_filter
from workers.dlq.models import DeadLetter
from workers.dlq.render import action_line, summary_line
from workers.dlq.selection import PARKED, REPLAYED, Action
from workers.dlq.testing import Letter, build

# Nothing listens here: a command that got past its usage checks would fail to connect, not pass.
UNREACHABLE = {"FLEET_KAFKA__BOOTSTRAP": "127.0.0.1:9", "FLEET_POSTGRES__DSN": "postgresql://x@127.0.0.1:9/x"}


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, ["dlq", *args], env=UNREACHABLE)


@pytest.mark.parametrize(
    "args",
    [
        ["show", "-g", "g"],
        ["show", "-g", "g", "-p", "0"],
        ["show", "-g", "g", "-p", "0", "-o", "1", "--event-id", "e"],
    ],
)
def test_show_needs_coordinates_or_event_id(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert "either --partition and --offset, or --event-id" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "-g", "g", "--since", "yesterday"], "relative time"),
        (["replay", "-g", "g", "--record", "3"], "PARTITION:OFFSET"),
        (["replay", "-g", "g", "--since", "1h", "--until", "2h"], "after --until"),
        (["replay", "-g", "g", "--rate", "0"], "--rate"),
        (["replay", "-g", "g", "--limit", "0"], "--limit"),
        (["purge", "-g", "g", "--since", "soon"], "relative time"),
    ],
)
def test_bad_filters_are_usage_errors(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_replay_requires_a_group() -> None:
    result = invoke("replay")
    assert result.exit_code == 2
    assert "--group" in result.output


def test_unreachable_broker_is_one_line_and_exit_1() -> None:
    result = invoke("list", "-g", "g")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")


def test_build_filter_resolves_relative_times_against_now() -> None:
    now = datetime(2025, 1, 1, 12, tzinfo=UTC)
    filt = build_filter("2h", None, ["X"], [], [], [], ["1:2"], now=now)
    assert filt.since == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert filt.error_classes == ("X",)
    assert filt.records == ((1, 2),)


def test_dry_run_line_names_record_event_error_and_destination() -> None:
    key, value, headers = build(Letter(key="801K", event_id="e-9", replay_count=3), "g")
    dl = DeadLetter("g.dlq", 1, 17, 0, key, value, tuple(headers))
    line = action_line(Action(dl, PARKED, "g.parked", 1), dry_run=True)
    assert line.startswith("would park   1:17  id=e-9  type=fleet.order.changed.v1  key=801K")
    assert "error=events.errors.UpstreamTimeout  replay_count=3  -> g.parked[1]" in line
    assert action_line(Action(dl, REPLAYED, "g.retry.1", 1), dry_run=False).startswith("replay       1:17")


def test_summary_is_one_greppable_line() -> None:
    job = UUID(int=1)
    line = summary_line("replay", "g", job, False, {"replayed": 2, "parked": 0, "truncated": {"0": 5}})
    assert line == f'replay summary job={job} group=g dry_run=false replayed=2 parked=0 truncated={{"0":5}}'
