"""Scenario: the ingress dead-letter topic's depth and oldest age, exported by the sf-cdc leader only.

Contract: with two subscribers (``workers.ingress.sf_cdc.serve``) for one org against the real
Kafka broker and Postgres of the local stack, the one holding the CDC lease exports
``fleet_dead_letters{group="ingress"}`` (0 while the test's ingress DLQ topic is empty, then the
records put there, whoever wrote them) and ``fleet_dead_letter_oldest_age_seconds{group="ingress"}``,
read from the topic's offsets; the standby exports no sample. When the leader stops, the standby
takes the lease over and exports the same depth.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from tests.e2e.test_sf_cdc_flow import World, eventually, world  # noqa: F401
from workers.ingress.sf_cdc import CdcMetrics, serve

pytestmark = pytest.mark.e2e

INGRESS = {"group": "ingress"}


def depth(metrics: CdcMetrics) -> float | None:
    return metrics.registry.get_sample_value("fleet_dead_letters", INGRESS)


@pytest.mark.parametrize("world", ["cometd"], indirect=True)  # the gauges do not depend on the transport
async def test_the_leader_exports_the_ingress_dead_letters_and_the_standby_takes_the_job_over(
    world: World,  # noqa: F811
) -> None:
    runtime = world.settings.runtime.model_copy(update={"dead_letter_check_interval_s": 0.2})
    world.settings = world.settings.model_copy(update={"runtime": runtime})
    leader = await world.start()
    await eventually(lambda: depth(leader) == 0, 15, "depth 0 of the empty ingress DLQ")

    stop_b, standby = asyncio.Event(), CdcMetrics()
    task_b = asyncio.create_task(
        serve(world.settings, stop_b, topics=world.topics, options=world.options, metrics=standby)
    )
    world.runs.append((task_b, stop_b, standby))
    standby_state = {"state": "standby"}
    await eventually(lambda: standby.registry.get_sample_value("sf_cdc_lease_state", standby_state) == 1, 15, "standby")

    producer = AIOKafkaProducer(bootstrap_servers=world.settings.kafka.bootstrap)
    await producer.start()
    try:
        for i in range(2):  # as the WHMCS receiver writes a body it refused: key = webhook-id
            await producer.send_and_wait(world.topics.dlq, key=f"wh-{i}".encode(), value=b"<not json>")
    finally:
        await producer.stop()
    await eventually(lambda: depth(leader) == 2, 15, "depth 2 on the leader")
    age = leader.registry.get_sample_value("fleet_dead_letter_oldest_age_seconds", INGRESS)
    assert age is not None and 0 <= age < 60
    assert depth(standby) is None  # the standby reads nothing and exports no sample

    # the leader stops (lease released cleanly): the standby leads and exports the same depth
    task_a, stop_a, _ = world.runs[0]
    stop_a.set()
    await asyncio.wait_for(task_a, 30)
    await eventually(lambda: depth(standby) == 2, 20, "depth 2 on the new leader")
    assert standby.registry.get_sample_value("sf_cdc_lease_state", {"state": "leader"}) == 1
