"""Scenario: the fulfillment worker is killed (``os._exit(137)``, as ``kill -9``) after each step in turn.

Contract: whatever step the worker dies after, and whether the step's result was committed or not,
the restarted worker continues the order from where it stopped, and the sandboxes end with exactly
one WHMCS order for the Salesforce order (one ``AddOrder`` call) and exactly one Freebit account for
its SIM (one registration call). The worker is a real subprocess running the runtime ``Worker``;
Kafka and PostgreSQL are the local stack's; the sandboxes are served by this test process.

The crash point comes from ``FLEET_TEST_CRASH_AFTER_STEP=<step>[:called|committed]`` (test-only: read
by this module's worker entry point, never by production code) and fires through the saga's ``hook``.
Every worker joins the group as the same static member (``group.instance.id``, as a StatefulSet's
pod would): the restarted one takes the killed one's place and its partitions at once, and the
records the killed one had not committed are delivered to it again, as they would be after a
rebalance. A dynamic member would first wait out the dead one's session (6 s, 17 restarts here); a
killed dynamic member's partitions moving to another instance is what the chaos smoke's worker
kills exercise (``bench.chaos``, three instances per worker).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox.freebit import FreebitSandbox
from sandbox.whmcs import WhmcsSandbox
from tests.e2e.test_fulfillment_flow import CONFIG_ENV, WorkerConfig, World, run_worker, world_for
from workers.fulfillment.model import PLANS, OrderType, Step

pytestmark = pytest.mark.e2e

CRASH_ENV = "FLEET_TEST_CRASH_AFTER_STEP"
KILLED = 137
REPO_ROOT = Path(__file__).resolve().parents[2]


# --- the subprocess ------------------------------------------------------------------------------------


def crash_hook(spec: str) -> object:
    step, _, phase = spec.partition(":")
    wanted = (Step(step), phase or "committed")

    def hook(step: Step, phase: str) -> None:
        if (step, phase) == wanted:
            os._exit(KILLED)  # no cleanup, no commit, no unlock: what kill -9 leaves behind

    return hook


def main() -> None:
    cfg = WorkerConfig.from_json(os.environ[CONFIG_ENV])
    spec = os.environ.get(CRASH_ENV)

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await run_worker(cfg, stop, hook=crash_hook(spec) if spec else None)  # type: ignore[arg-type]

    asyncio.run(serve())


# --- the test side -------------------------------------------------------------------------------------


class Process:
    def __init__(self, cfg: WorkerConfig, log: Path) -> None:
        self.cfg, self.log = cfg, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, crash: str | None) -> None:
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        env[CONFIG_ENV] = self.cfg.to_json()
        if crash:
            env[CRASH_ENV] = crash
        with self.log.open("a") as out:
            out.write(f"\n=== start (crash={crash}) ===\n")
        out = self.log.open("a")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e.test_fulfillment_kill", cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )
        out.close()

    async def exited(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the worker did not die in {timeout} s; log: {self.log}") from None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest_asyncio.fixture
async def world(stack_env: dict[str, str]) -> AsyncIterator[World]:
    async with world_for(stack_env, freebit_delay_s=1.0) as w:
        yield w


@pytest_asyncio.fixture
async def worker(world: World, tmp_path: Path) -> AsyncIterator[Process]:
    """Each start of it is the same static member of the test's group (see the module docstring)."""
    cfg = dataclasses.replace(world.cfg, instance_id=f"{world.cfg.group}-worker")
    process = Process(cfg, tmp_path / "worker.log")
    try:
        yield process
    finally:
        await process.stop()


def counts(world: World, order_id: str, sim_account: str | None) -> tuple[int, int, int, int]:
    whmcs, freebit = world.whmcs, world.freebit
    assert isinstance(whmcs, WhmcsSandbox) and isinstance(freebit, FreebitSandbox)
    add_orders = [r for r in whmcs.requests if r.endpoint == "AddOrder" and order_id in r.body]
    registrations = [r for r in freebit.requests if r.endpoint in ("master/addAcnt", "mvno/esim/addAcnt")]
    accounts = world.freebit_accounts(sim_account) if sim_account else []
    return len(world.whmcs_orders(order_id)), len(add_orders), len(accounts), len(registrations)


async def kill_in_turn(world: World, worker: Process, order_id: str, crash_points: list[str]) -> None:
    """One worker per crash point, each killed there; then one that runs the order to the end."""
    await world.request(order_id)
    for point in crash_points:
        await worker.start(crash=point)
        assert await worker.exited(90) == KILLED, f"the worker did not die after {point}"
    await worker.start(crash=None)
    await world.reaches(order_id, "fulfilled", timeout=90)


async def test_a_kill_after_each_step_in_turn_creates_nothing_twice(world: World, worker: Process) -> None:
    order_id, _ = world.place_order(
        "suzuki", "SIM", ["SIM-DV-5GB", "SIM-ACTIVATION"], SIM_Type__c="Physical SIM", SIM_Voice_Mail__c=True
    )
    await kill_in_turn(world, worker, order_id, [f"{step}:committed" for step in PLANS[OrderType.SIM]])

    record = await world.record(order_id)
    assert record is not None and record.order.sim_account
    assert counts(world, order_id, record.order.sim_account) == (1, 1, 1, 1)
    [account] = world.freebit_accounts(record.order.sim_account)
    assert account.voice_mail


async def test_a_kill_while_a_create_is_unrecorded_adopts_it_instead_of_creating_again(
    world: World, worker: Process
) -> None:
    """Killed after WHMCS answered AddOrder and after Freebit accepted the registration (in plan
    order: a SIM order is billed first), each time before the saga committed what it learned: the
    restarted worker finds both and adopts them."""
    order_id, _ = world.place_order("tanaka", "SIM", ["SIM-D-20GB"], SIM_Type__c="eSIM",
                                    EID__c="89049032000001000000000000000099")  # fmt: skip
    await kill_in_turn(world, worker, order_id, [f"{Step.WHMCS_CREATE}:called", f"{Step.SIM_REGISTER}:called"])

    record = await world.record(order_id)
    assert record is not None
    assert counts(world, order_id, record.order.sim_account) == (1, 1, 1, 1)
    assert record.steps[Step.WHMCS_CREATE].external_ids["adopted"] is True
    assert record.steps[Step.SIM_REGISTER].attempts == 2


async def test_a_scheduled_activation_survives_kill_9_of_its_worker(world: World, worker: Process) -> None:
    """The order waits on its Postgres timer, not in a process: killed (-9) while the order is scheduled,
    a new worker started after the due time finds the timer and activates the order, once."""
    at = datetime.now(UTC) + timedelta(seconds=4)
    order_id, _ = world.place_order("tanaka", "VPN", ["VPN-TOKYO"], Activation_Type__c="Scheduled",
                                    Activation_Scheduled_At__c=at.isoformat())  # fmt: skip
    await world.request(order_id)
    await worker.start(crash=None)
    await world.reaches(order_id, "scheduled", timeout=60)
    assert worker.proc is not None
    worker.proc.kill()
    assert await worker.exited(10) == -signal.SIGKILL
    await asyncio.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 1)  # due while no worker runs
    assert (await world.record(order_id)) is not None and world.whmcs_orders(order_id) == []
    await worker.start(crash=None)
    await world.reaches(order_id, "fulfilled", timeout=90)
    assert len(world.whmcs_orders(order_id)) == 1


if __name__ == "__main__":
    main()
