"""The fault schedule of a chaos run: a list of timed faults drawn from the seed alone.

The same seed and config give the same schedule (the faults, their times and targets); what the
fleet does under them is as reproducible as two processes racing on two cores can be. Infrastructure
faults (a broker, Redis, PostgreSQL) never overlap: each gets its own slot, so the time to recover
from one is not the time to recover from two. Worker kills, CDC duplicates and the vendor fault
windows fall anywhere.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.chaos.config import ChaosConfig

#: how long a killed broker stays down before it is restarted
BROKER_DOWN_S = 15.0
#: the vendor fault windows: how many, and how long each (20 % of calls fail while one is open)
VENDOR_WINDOWS = 2
VENDOR_WINDOW_S = (20.0, 45.0)


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the load started
    kind: str  # kill-worker | kill-broker | restart-redis | restart-postgres | vendor-faults | cdc-duplicate
    target: str = ""  # a worker instance, "leader" (of the busiest partitions), a sandbox channel
    duration_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def make_schedule(config: ChaosConfig) -> list[Fault]:
    rng = random.Random(config.seed)
    span = config.duration_s
    faults: list[Fault] = []
    infra = (
        ["kill-broker"] * config.broker_kills
        + ["restart-redis"] * config.redis_restarts
        + ["restart-postgres"] * config.postgres_restarts
    )
    rng.shuffle(infra)
    slot = span * 0.8 / max(1, len(infra))
    for i, kind in enumerate(infra):
        at = span * 0.1 + slot * i + rng.uniform(0.0, slot * 0.3)
        if kind == "kill-broker":
            faults.append(Fault(round(at, 1), kind, "leader", BROKER_DOWN_S))
        else:
            faults.append(Fault(round(at, 1), kind))
    children = instances(config)
    for _ in range(config.worker_kills):
        faults.append(Fault(round(rng.uniform(span * 0.05, span * 0.9), 1), "kill-worker", rng.choice(children)))
    for _ in range(config.cdc_duplicates):
        faults.append(Fault(round(rng.uniform(span * 0.05, span * 0.9), 1), "cdc-duplicate", "/data/OrderChangeEvent"))
    for _ in range(VENDOR_WINDOWS):
        length = round(rng.uniform(*VENDOR_WINDOW_S), 1)
        at = round(rng.uniform(span * 0.05, max(span * 0.05, span * 0.9 - length)), 1)
        faults.append(Fault(at, "vendor-faults", "*", length, {"rate": config.vendor_fault_rate}))
    return sorted(faults, key=lambda f: (f.at_s, f.kind, f.target))


def instances(config: ChaosConfig) -> list[str]:
    """The supervisor's names of every worker process (``fulfillment-1`` .. when a worker runs more than once)."""
    names = []
    for worker, count in config.instances.items():
        names += [worker] if count == 1 else [f"{worker}-{i + 1}" for i in range(count)]
    return names


def describe(schedule: list[Fault]) -> str:
    return "\n".join(
        f"  t+{f.at_s:6.1f}s  {f.kind:<16} {f.target}" + (f"  for {f.duration_s:g}s" if f.duration_s else "")
        for f in schedule
    )
