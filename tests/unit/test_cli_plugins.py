"""`fleet`'s plugin groups: found through the ``fleet.commands`` entry points, never imported by name.

The development tools (``fleet stack``, ``fleet demo``, ``fleet sandbox``) live in devtools/ and reach
the CLI only this way; a plugin that fails to load is one warning line, and the rest of ``fleet`` works.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint, EntryPoints
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import workers.cli
from workers.cli import PLUGIN_GROUP, FleetGroup, main

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_metadata_declares_the_development_groups() -> None:
    from importlib.metadata import entry_points

    declared = {e.name: e.value for e in entry_points(group=PLUGIN_GROUP)}
    assert declared == {
        "stack": "devtools.cli.stack:group",
        "demo": "devtools.cli.demo:group",
        "sandbox": "devtools.cli.sandbox:group",
        "traces": "devtools.cli.traces:group",
    }, "pyproject.toml changed? run `make install` so the entry points are current"
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and result.stderr == ""
    listed = [line.split()[0] for line in result.stdout.split("Commands:\n")[1].splitlines() if line.strip()]
    assert listed == sorted(listed) and {"stack", "demo", "sandbox", "run", "topics"} <= set(listed)


def test_importing_the_cli_or_running_a_worker_command_imports_no_plugin() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from workers.cli import main\n"
        "assert CliRunner().invoke(main, ['run', '--list']).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'devtools'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


GOOD_PLUGIN = """
import click

@click.group(name="good")
def group():
    \"\"\"A plugin that loads.\"\"\"

@group.command()
def hello():
    click.echo("hello from a plugin")
"""


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Plugins declared by a fake distribution: one good, one raising on import, one missing, one
    shadowing a product group. Yields the file the broken one appends a line to on each import."""
    imports = tmp_path / "imports.log"
    (tmp_path / "fleet_test_good_plugin.py").write_text(GOOD_PLUGIN)
    (tmp_path / "fleet_test_broken_plugin.py").write_text(
        f"with open({str(imports)!r}, 'a') as f:\n    f.write('imported\\n')\n"
        "raise RuntimeError('the import failed\\non two lines')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    declared = EntryPoints(
        (
            EntryPoint("good", "fleet_test_good_plugin:group", PLUGIN_GROUP),
            EntryPoint("broken", "fleet_test_broken_plugin:group", PLUGIN_GROUP),
            EntryPoint("gone", "fleet_test_no_such_module:group", PLUGIN_GROUP),
            EntryPoint("run", "fleet_test_good_plugin:group", PLUGIN_GROUP),
        )
    )
    monkeypatch.setattr(workers.cli, "entry_points", lambda group: declared if group == PLUGIN_GROUP else None)
    yield imports
    sys.modules.pop("fleet_test_good_plugin", None)


def _cli() -> FleetGroup:
    @click.group(cls=FleetGroup)
    def cli() -> None:
        """A fresh `fleet` with one product group."""

    @cli.command(name="run")
    def run() -> None:
        click.echo("product run")

    return cli


def test_a_plugin_that_fails_to_load_is_one_warning_line_and_the_cli_still_works(fake_plugins: Path) -> None:
    cli = _cli()
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "Commands:\n  good  A plugin that loads.\n  run\n" in result.stdout
    warnings = result.stderr.splitlines()
    assert warnings == [
        "fleet: warning: plugin `broken` (fleet_test_broken_plugin:group) not loaded: "
        "RuntimeError: the import failed on two lines",
        # `gone`: its package is not installed (the production image ships no devtools), so the
        # listing leaves it out without a word
        "fleet: warning: plugin `run` (fleet_test_good_plugin:group) not loaded: "
        "the product already has a `run` command",
    ]
    assert "Traceback" not in result.output
    assert CliRunner().invoke(cli, ["run"]).output == "product run\n"  # the product group, not the plugin
    assert CliRunner().invoke(cli, ["good", "hello"]).output == "hello from a plugin\n"
    assert CliRunner().invoke(cli, ["broken"]).stderr.count("warning") == 0  # reported once, not per lookup
    assert fake_plugins.read_text() == "imported\n"


def test_a_command_loads_only_its_own_plugin(fake_plugins: Path) -> None:
    cli = _cli()
    assert CliRunner().invoke(cli, ["run"]).stderr == ""  # a product command loads no plugin
    result = CliRunner().invoke(cli, ["good", "hello"])
    assert (result.exit_code, result.output, result.stderr) == (0, "hello from a plugin\n", "")
    assert not fake_plugins.exists()  # the broken plugin was not even imported
    result = CliRunner().invoke(cli, ["broken"])
    assert result.exit_code == 2 and "No such command 'broken'" in result.stderr
    assert result.stderr.count("fleet: warning: plugin `broken`") == 1


def test_a_plugin_whose_package_is_absent_is_silent_in_help_and_named_when_asked_for(fake_plugins: Path) -> None:
    cli = _cli()
    listing = CliRunner().invoke(cli, ["--help"])
    assert "gone" not in listing.output and "fleet_test_no_such_module" not in listing.stderr
    asked = CliRunner().invoke(cli, ["gone"])
    assert asked.exit_code == 2 and "No such command 'gone'" in asked.stderr
    assert (
        "fleet: warning: plugin `gone` (fleet_test_no_such_module:group) not loaded: "
        "ModuleNotFoundError: No module named 'fleet_test_no_such_module'"
    ) in asked.stderr
