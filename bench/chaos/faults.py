"""Carry out a fault schedule against the cluster and measure the time to recover from each fault.

Recovery, per kind:

    kill-worker       the killed instance is restarted by the supervisor and answers /readyz again
    kill-broker       ``leaderless_s``: until every partition of the busy topics has a live leader
                      (producers and consumers work again); the broker is restarted after its down
                      time, and ``recovered_s`` runs until every replica is back in sync
    restart-redis     until every instance answers /readyz again
    restart-postgres  until every instance answers /readyz again
    vendor-faults     the window closes after its duration (no recovery to measure)
    cdc-duplicate     delivered at once (the checker sees whether it was applied twice)

Each fault is carried out at its time while the load runs; its recovery is measured in the
background, so one slow recovery does not delay the next fault of the schedule.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.chaos.cluster import Cluster, Echo, until
from bench.chaos.schedule import Fault

RECOVERY_TIMEOUT_S = 180.0


class Faults:
    def __init__(self, cluster: Cluster, echo: Echo) -> None:
        self.cluster, self.echo = cluster, echo
        self.log: list[dict[str, Any]] = []
        self._background: list[asyncio.Task[None]] = []
        self._open_windows = 0  # vendor fault windows may overlap: the faults go off with the last one

    async def run(self, schedule: list[Fault], t0: float, stop: asyncio.Event) -> None:
        for fault in schedule:
            await asyncio.sleep(max(0.0, t0 + fault.at_s - time.monotonic()))
            if stop.is_set():
                self.log.append({**fault.as_json(), "skipped": "the load ended first"})
                continue
            entry: dict[str, Any] = {**fault.as_json(), "started_at_s": round(time.monotonic() - t0, 1)}
            self.log.append(entry)
            try:
                await self._carry_out(fault, entry)
            except Exception as exc:  # noqa: BLE001 - a hand that slipped is reported, the run goes on
                entry["error"] = repr(exc)
            self.echo(f"fault t+{entry['started_at_s']:.0f}s {fault.kind} {entry.get('target_done', fault.target)}")
        await asyncio.gather(*self._background)

    async def _carry_out(self, fault: Fault, entry: dict[str, Any]) -> None:
        if fault.kind == "kill-worker":
            entry["pid"] = self.cluster.kill_worker(fault.target)
            self._measure(entry, "recovered_s", self._instance_back(fault.target), settle_s=1.0)
        elif fault.kind == "kill-broker":
            # one broker down at a time: with two of three down the controllers lose their quorum, and
            # no broker can come back until one does (a double failure is not what this run tests)
            waited = await until(self.cluster.in_sync, RECOVERY_TIMEOUT_S, every_s=1.0)
            entry["waited_for_sync_s"] = waited
            if waited is None:
                entry["skipped"] = "the cluster was not back in sync from the previous broker fault"
                return
            node = await self.cluster.leader_of_busiest()
            entry["target_done"] = f"broker {node}"
            entry["pid"] = await self.cluster.kill_broker(node)
            self._background.append(asyncio.create_task(_reported(self._broker_back(fault, entry, node), entry)))
        elif fault.kind in ("restart-redis", "restart-postgres"):
            began = time.monotonic()
            await (self.cluster.restart_redis() if fault.kind == "restart-redis" else self.cluster.restart_postgres())
            entry["server_back_s"] = round(time.monotonic() - began, 2)
            self._measure(entry, "recovered_s", self.cluster.settled, settle_s=2.0, began=began)
        elif fault.kind == "vendor-faults":
            self._open_windows += 1
            if self._open_windows == 1:
                await self.cluster.vendor_faults(True)
            self._background.append(asyncio.create_task(_reported(self._close_window(fault, entry), entry)))
        elif fault.kind == "cdc-duplicate":
            entry["delivered"] = await self.cluster.cdc_duplicate(fault.target)
        else:
            raise ValueError(f"unknown fault {fault.kind}")

    def _instance_back(self, child: str) -> Any:
        async def back() -> bool:
            if child in self.cluster.unhealthy():
                return False
            return not child.startswith("sf-cdc") or await self.cluster.active_cdc() == 1

        return back

    def _measure(
        self, entry: dict[str, Any], field: str, healthy: Any, *, settle_s: float, began: float | None = None
    ) -> None:
        start = time.monotonic() if began is None else began

        async def measure() -> None:
            await asyncio.sleep(settle_s)  # the supervisor notices an exit within its poll; don't read "up" before
            waited = await until(healthy, RECOVERY_TIMEOUT_S)
            entry[field] = None if waited is None else round(time.monotonic() - start, 2)

        self._background.append(asyncio.create_task(_reported(measure(), entry)))

    async def _broker_back(self, fault: Fault, entry: dict[str, Any], node: int) -> None:
        began = time.monotonic()
        leaderless = await until(self.cluster.led, RECOVERY_TIMEOUT_S)
        entry["leaderless_s"] = None if leaderless is None else round(time.monotonic() - began, 2)
        await asyncio.sleep(max(0.0, began + fault.duration_s - time.monotonic()))
        for attempt in range(3):  # a JVM on two busy cores may miss the readiness bound once
            try:
                await self.cluster.restart_broker(node)
                break
            except Exception as exc:  # noqa: BLE001 - StackError: retried, and reported
                entry.setdefault("restart_errors", []).append(repr(exc)[:300])
                if attempt == 2:
                    raise
        entry["restarted_after_s"] = round(time.monotonic() - began, 2)
        synced = await until(self.cluster.in_sync, RECOVERY_TIMEOUT_S, every_s=1.0)
        entry["recovered_s"] = None if synced is None else round(time.monotonic() - began, 2)

    async def _close_window(self, fault: Fault, entry: dict[str, Any]) -> None:
        await asyncio.sleep(fault.duration_s)
        self._open_windows -= 1
        if self._open_windows == 0:
            await self.cluster.vendor_faults(False)
        entry["closed"] = True


async def _reported(work: Any, entry: dict[str, Any]) -> None:
    """A background part of a fault that failed is written into its entry; the run goes on."""
    try:
        await work
    except Exception as exc:  # noqa: BLE001
        entry["error"] = repr(exc)[:500]
