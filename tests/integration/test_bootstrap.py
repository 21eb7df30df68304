"""The composition root wires real adapters to the configured endpoints (stack + sandboxes over HTTP)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events.base import to_envelope
from events.billing import ClientChanged
from sandbox.demo_data import CUSTOMERS, PRODUCTS
from sandbox.runner import run_sandboxes
from workers.bootstrap import bootstrap
from workers.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def sandbox_ports(tmp_path: Path) -> AsyncIterator[dict[str, int]]:
    """All three sandboxes in-process on free ports; the ready file says which."""
    stop = asyncio.Event()
    ready_file = tmp_path / "ready.json"
    ports = {"salesforce": 0, "whmcs": 0, "freebit": 0}
    task = asyncio.create_task(run_sandboxes("127.0.0.1", ports, stop=stop, ready_file=ready_file))
    for _ in range(250):
        if ready_file.exists() and ready_file.read_text():
            break
        await asyncio.sleep(0.02)
    yield json.loads(ready_file.read_text())
    stop.set()
    await task


def settings_for(stack_env: dict[str, str], ports: dict[str, int]) -> Settings:
    return Settings.model_validate(
        {
            "env": "test",
            "kafka": {"bootstrap": stack_env["KAFKA_BOOTSTRAP"]},
            "postgres": {"dsn": stack_env["DATABASE_URL"]},
            "redis": {"url": stack_env["REDIS_URL"]},
            "salesforce": {
                "login_url": f"http://localhost:{ports['salesforce']}",
                "instance_url": f"http://localhost:{ports['salesforce']}",
            },
            "whmcs": {"api_url": f"http://127.0.0.1:{ports['whmcs']}/includes/api.php"},
            "freebit": {"base_url": f"http://127.0.0.1:{ports['freebit']}/emptool/api"},
        }
    )


async def test_bootstrap_builds_working_real_adapters(stack_env: dict[str, str], sandbox_ports: dict[str, int]) -> None:
    settings = settings_for(stack_env, sandbox_ports)
    tanaka = CUSTOMERS[0]
    async with bootstrap(settings) as deps:
        paymethods = await deps.whmcs.list_pay_methods(tanaka["whmcs_client_id"])
        assert [p.paymethod_id for p in paymethods] == [m["id"] for m in tanaka["paymethods"]]
        rows = await deps.salesforce.query(
            f"SELECT Id, WH_Product_ID__c FROM Product2 WHERE Id = '{PRODUCTS[0]['Id']}'"
        )
        assert rows[0]["WH_Product_ID__c"] == "181"
        assert await deps.freebit.account_detail("09000000000") is None
        assert await deps.pool.fetchval("SELECT 1") == 1
        assert await deps.redis.ping()
        delivered = await deps.producer.publish(
            "whmcs.billing.v1", to_envelope(ClientChanged(whmcs_client_id=1001), source="/test/bootstrap")
        )
        assert delivered.offset >= 0
