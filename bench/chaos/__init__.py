"""``make chaos``: the whole fleet, several instances of every worker on a three-broker cluster, under a
seeded fault schedule, and a checker that counts what was lost or done twice.

    python -m bench.chaos [--seed N] [--smoke] [--out bench/results/chaos.json]

    config     ports, instance counts, load sizes and the workers' environment of one run
    schedule   the seeded fault schedule (pure: the same seed gives the same schedule)
    cluster    brings up the private stack (3 KRaft brokers, Redis, PostgreSQL), the sandboxes and
               the fleet under the demo supervisor; kills and restarts its parts
    load       orders through the Salesforce sandbox and signed webhooks to both receivers; records
               what was offered and what each sender was answered (the history)
    faults     carries out the schedule and measures the time to recover after each fault
    checker    reads only the sandboxes' recorded state, Kafka, Redis and PostgreSQL, never the code
               under test (it imports nothing of ours), and reports what was lost or done twice
    run        the orchestration: up, load + faults, quiet, replay dead letters, check, report

The stack, the sandboxes and the workers use their own ports (2xxxx), so a run never touches the
local stack of ``make run`` / ``make test``.
"""
