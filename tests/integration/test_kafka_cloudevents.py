"""A CloudEvents binary-mode record survives the real broker: key and every ce_* header intact."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from adapters.kafka import AiokafkaProducer, durable_producer, ensure_topics
from events.base import decode_event, to_envelope
from events.envelope import from_record
from events.salesforce import OrderActivationRequested
from events.topics import TopicSpec

pytestmark = pytest.mark.integration


async def test_binary_mode_record_round_trips_through_kafka(stack_env: dict[str, str]) -> None:
    bootstrap = stack_env["KAFKA_BOOTSTRAP"]
    topic = f"t-cloudevents-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 2, 3_600_000)])
    event = OrderActivationRequested(sf_order_id="8015g00000000042AA", status="Approved", order_type="SIM")
    sent = to_envelope(
        event, source="/fleet/test", correlationid="corr-42", causationid="cause-1", traceparent="00-t-s-01"
    )

    producer = durable_producer(bootstrap, "test-producer")
    await producer.start()
    try:
        delivered = await AiokafkaProducer(producer).publish(topic, sent)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()

    assert (record.partition, record.offset) == (delivered.partition, delivered.offset)
    assert record.key == b"8015g00000000042AA"
    headers = dict(record.headers)
    assert headers == {
        "ce_specversion": b"1.0",
        "ce_id": sent.id.encode(),
        "ce_source": b"/fleet/test",
        "ce_type": b"fleet.order.activation-requested.v2",
        "ce_time": sent.time.isoformat().replace("+00:00", "Z").encode(),
        "ce_subject": b"8015g00000000042AA",
        "ce_correlationid": b"corr-42",
        "ce_causationid": b"cause-1",
        "ce_traceparent": b"00-t-s-01",
        "content-type": b"application/json",
    }
    received = from_record(record.key, record.value, record.headers)
    assert received == sent
    assert decode_event(received) == event
