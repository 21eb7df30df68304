"""``make run``: the whole fleet on the embedded local stack with the sandboxes, and a scenario to watch.

    fleet.py      what ``fleet demo up`` starts (stack, sandboxes, five workers) under one Supervisor
    scenario.py   the built-in scenario over the sandboxes' control APIs, polled into the progress model
    model.py      the progress model (orders, seeded keys, notes)
    probes.py     dead-letter counts and stale saga rows: the demo's two looks past the sandboxes
    render.py     the live table (rich) or plain progress lines, and the final summary

Owns the developer-facing demo only. Must not hold anything a worker needs at run time: the
workers run exactly as ``fleet run <name>`` runs them in production.
"""
