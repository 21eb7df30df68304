"""Development tools: what a developer runs on a laptop or in CI, never what the fleet runs in production.

    stack/          the embedded local stack: Kafka (KRaft), Redis and PostgreSQL on loopback, no Docker
    demo/           ``make run``: the whole fleet under one supervisor with a scenario to watch
    supervisor.py   the local process supervisor the demo, the e2e benchmark and the chaos run use
    cli/            their ``fleet`` command groups: ``fleet stack``, ``fleet demo``, ``fleet sandbox``

Owns the development stack, the demo, the local supervisor and their ``fleet`` command groups.
The groups reach ``fleet`` as plugins: pyproject.toml declares them under the entry-point group
``fleet.commands`` and ``workers.cli`` loads them from there, so the product never names them.

Must not be imported by ``workers/``, ``adapters/``, ``events/`` or ``schemas/`` (tests/unit/
test_layering.py checks it); it imports them freely. The production image need not ship it: every
worker runs without it, and ``fleet`` then has no ``stack``, ``demo`` or ``sandbox`` group (listing
the commands says so, one warning line per group).
"""
