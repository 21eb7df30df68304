"""The ``fleet`` command line: subcommands grouped by job (topics, db, events, run, dlq, orders, config, console).

Each group lives in its own module; this one builds the Settings once (lazily, so ``--help``
works with a broken environment) and turns configuration errors into one line naming the variable.

More groups come from plugins: every entry point of the group ``fleet.commands`` (the development
tools declare ``stack``, ``demo`` and ``sandbox`` in pyproject.toml, from ``devtools.cli``). This
package never imports them by name: the product must run where the development tools are not installed.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from workers.cli._context import Context, pass_ctx, run_async

__all__ = ["PLUGIN_GROUP", "Context", "FleetGroup", "main", "pass_ctx", "run_async"]

#: The entry-point group a distribution declares extra ``fleet`` command groups under (``name = "module:group"``).
PLUGIN_GROUP = "fleet.commands"


class FleetGroup(click.Group):
    """The product's own groups, plus the plugins of ``fleet.commands``, each loaded on first need.

    Discovery by entry point is how click-plugins and pytest find their plugins: a package adds a
    command group by declaring it in its own metadata, and the host names no module. A plugin loads
    when the command line asks for its name, or when every command is listed (``--help``), so
    ``fleet run <worker>`` never imports one. A plugin that fails to load costs one warning line on
    stderr naming it; every other command keeps working. A plugin cannot replace a product group.
    A plugin whose package is not installed at all (the production image ships no ``devtools``) is
    left out of ``--help`` without a word, and named with its reason only when asked for.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tried: set[str] = set()  # plugin names already loaded or reported, once per process

    def load_plugins(self, name: str | None = None) -> None:
        """Add the ``fleet.commands`` entry points (only ``name``'s, if given) as commands."""
        listing = name is None
        found = entry_points(group=PLUGIN_GROUP)
        for entry in sorted(found if name is None else found.select(name=name), key=lambda e: e.name):
            if entry.name in self._tried:
                continue
            self._tried.add(entry.name)
            if entry.name in self.commands:
                _warn(entry, f"the product already has a `{entry.name}` command")
                continue
            try:
                command = entry.load()
            except ModuleNotFoundError as exc:
                absent = exc.name == entry.module.partition(".")[0]  # the plugin's package is not shipped here
                if absent and listing:
                    self._tried.discard(entry.name)  # asked for by name later: say why it is missing
                else:
                    _warn(entry, f"{type(exc).__name__}: {exc}")
                continue
            except Exception as exc:  # any other import-time failure: report it, keep the CLI usable
                _warn(entry, f"{type(exc).__name__}: {exc}")
                continue
            if not isinstance(command, click.Command):
                _warn(entry, f"{type(command).__name__} is not a click command")
                continue
            self.add_command(command, entry.name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_plugins()
        return super().list_commands(ctx)  # sorted: product groups and plugins in one list

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self.load_plugins(cmd_name)
            command = super().get_command(ctx, cmd_name)
        return command


def _warn(entry: EntryPoint, why: str) -> None:
    """One line on stderr, never a traceback: which plugin, where it points, and why it is missing."""
    click.echo(f"fleet: warning: plugin `{entry.name}` ({entry.value}) not loaded: {' '.join(why.split())}", err=True)


@click.group(cls=FleetGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fulfillment-fleet")
@click.pass_context
def main(ctx: click.Context) -> None:
    """fulfillment-fleet: event-driven workers between Salesforce, WHMCS, Freebit and the portal cache.

    \b
    Start here:
      fleet stack up        start Kafka, Redis and PostgreSQL on loopback
      fleet topics ensure   create every topic of the catalog
      fleet db migrate      apply the SQL migrations
      fleet run --list      the workers and what they consume
    """
    ctx.ensure_object(Context)


def _register() -> None:
    """The product's groups; the rest arrive through ``fleet.commands`` (see ``FleetGroup``)."""
    from workers.cli import config, console, db, dlq, events, orders, run, topics

    for module in (topics, db, events, run, dlq, orders, config, console):
        main.add_command(module.group)


_register()
