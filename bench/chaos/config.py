"""One chaos run's shape: where everything listens, how many of each worker, how much load, which faults.

``ChaosConfig.full(seed)`` is ``make chaos`` (about 10 minutes on the 2-core machine); ``smoke(seed)``
is the short variant ``make test`` runs (about 2 minutes). ``worker_env()`` is every ``FLEET_*``
variable the workers get: they read nothing from the local stack's env file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: what each worker instance may crash at (``workers.crashpoints``): after a side effect, before its
#: record. Relative weights; ``ChaosConfig.crash_scale`` sets how often (each crash also costs the group
#: a rebalance, so a run with a crash every few seconds measures rebalances, not faults)
CRASH_POINTS = {
    "fulfillment.whmcs_create.called": 1.0,
    "fulfillment.whmcs_accept.called": 1.0,
    "fulfillment.sim_register.called": 1.5,
    "fulfillment.sim_register.committed": 0.5,
    "fulfillment.sf_writeback.called": 0.5,
    "sf-writer.patched": 0.5,
    "whmcs-webhooks.produced": 0.05,
}


@dataclass(frozen=True)
class Ports:
    """Fixed ports of the chaos stack, away from the local stack's 1xxxx and the ephemeral range."""

    kafka: int = 29092  # node i: 29092 + 2i (its controller: + 1)
    redis: int = 26379
    postgres: int = 25432
    salesforce: int = 28081
    whmcs: int = 28082
    freebit: int = 28083
    receiver: int = 28090  # receiver i listens on 28090 + i
    health: int = 29201  # worker process i serves /livez /readyz /metrics on 29201 + i

    def bootstrap(self, brokers: int) -> str:
        return ",".join(f"127.0.0.1:{self.kafka + 2 * i}" for i in range(brokers))


@dataclass(frozen=True)
class ChaosConfig:
    seed: int
    name: str
    duration_s: float  # how long load and faults last
    orders_per_type: int  # Internet, VPN and SIM (SIM half physical, half eSIM)
    webhooks: int
    instances: dict[str, int] = field(
        default_factory=lambda: {
            "fulfillment": 3,
            "sf-writer": 3,
            "cache-invalidator": 3,
            "sf-cdc": 2,
            "whmcs-webhooks": 2,
        }
    )
    brokers: int = 3
    ports: Ports = Ports()
    #: share of vendor calls that fail while the vendor fault windows are open
    vendor_fault_rate: float = 0.2
    #: faults of each kind in the schedule (kill -9 of instances, broker kills, Redis/Postgres restarts, ...)
    worker_kills: int = 8
    broker_kills: int = 2
    redis_restarts: int = 1
    postgres_restarts: int = 1
    cdc_duplicates: int = 6
    #: share of webhooks delivered twice: to both receivers at once, or again later
    duplicate_webhooks: float = 0.1
    #: probability of a crash point of weight 1 (full run: ~1,500 orders pass each order point once)
    crash_scale: float = 0.004
    quiet_timeout_s: float = 300.0
    state_dir: Path = ROOT / ".fleet" / "chaos"

    @classmethod
    def full(cls, seed: int) -> ChaosConfig:
        return cls(seed=seed, name="chaos", duration_s=360.0, orders_per_type=500, webhooks=10_000)

    @classmethod
    def smoke(cls, seed: int = 7) -> ChaosConfig:
        return cls(
            seed=seed,
            name="chaos-smoke",
            duration_s=60.0,
            orders_per_type=20,
            webhooks=600,
            worker_kills=3,
            broker_kills=1,
            cdc_duplicates=2,
            crash_scale=0.03,
            quiet_timeout_s=180.0,
        )

    @property
    def crash_points(self) -> dict[str, float]:
        return {name: round(weight * self.crash_scale, 6) for name, weight in CRASH_POINTS.items()}

    @property
    def bootstrap(self) -> str:
        return self.ports.bootstrap(self.brokers)

    @property
    def receivers(self) -> list[str]:
        count = self.instances.get("whmcs-webhooks", 1)
        return [f"http://127.0.0.1:{self.ports.receiver + i}/webhooks/whmcs" for i in range(count)]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports.postgres}/fleet"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports.redis}/0"

    def sandbox_url(self, system: str) -> str:
        host = "localhost" if system == "salesforce" else "127.0.0.1"  # CometD cookies want a host name
        return f"http://{host}:{getattr(self.ports, system)}"

    def worker_env(self) -> dict[str, str]:
        """Every setting of the workers (and of this process's Settings) for this run."""
        p = self.ports
        return {
            "FLEET_ENV": "local",
            "FLEET_LOG__FORMAT": "json",
            "FLEET_KAFKA__BOOTSTRAP": self.bootstrap,
            "FLEET_REDIS__URL": self.redis_url,
            "FLEET_POSTGRES__DSN": self.dsn,
            "FLEET_SALESFORCE__INSTANCE_URL": self.sandbox_url("salesforce"),
            "FLEET_SALESFORCE__LOGIN_URL": self.sandbox_url("salesforce"),
            "FLEET_WHMCS__API_URL": f"{self.sandbox_url('whmcs')}/includes/api.php",
            "FLEET_FREEBIT__BASE_URL": f"{self.sandbox_url('freebit')}/emptool/api",
            "FLEET_WHMCS__WEBHOOK_LISTEN_PORT": str(p.receiver),
            "FLEET_SANDBOX__SALESFORCE_PORT": str(p.salesforce),
            "FLEET_SANDBOX__WHMCS_PORT": str(p.whmcs),
            "FLEET_SANDBOX__FREEBIT_PORT": str(p.freebit),
            "FLEET_STACK__DIR": str(self.state_dir / "stack"),
            "FLEET_STACK__BROKERS": str(self.brokers),
            "FLEET_STACK__KAFKA_PORT": str(p.kafka),
            "FLEET_STACK__KAFKA_CONTROLLER_PORT": str(p.kafka + 1),
            "FLEET_STACK__REDIS_PORT": str(p.redis),
            "FLEET_STACK__POSTGRES_PORT": str(p.postgres),
            "FLEET_TOPICS__REPLICATION_FACTOR": str(min(3, self.brokers)),
            "FLEET_TOPICS__MIN_INSYNC_REPLICAS": str(2 if self.brokers >= 3 else 1),
            "FLEET_TESTING__CRASH_POINTS": ",".join(f"{k}={v}" for k, v in self.crash_points.items()),
        }
