"""The development tools' ``fleet`` command groups (``stack``, ``demo``, ``sandbox``).

Each module exposes ``group``, a ``click.Group`` named in pyproject.toml under
``[project.entry-points."fleet.commands"]``; ``workers.cli`` finds them there (it never imports
this package). They build on ``workers.cli``'s public helpers (``Context``, ``pass_ctx``,
``run_async``) like the product's own groups.
"""
