"""Property: whatever a channel delivers, over either transport (an int or a bytes replay id), parse() +
translate() never crash. The only outcomes are typed domain events (which encode as CloudEvents
records) or a permanent error the subscriber dead-letters (``InvalidPayload`` from parsing,
``UnresolvableChange`` from the rules)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from events.base import to_envelope
from events.envelope import to_record
from events.errors import InvalidPayload, PermanentError
from tests.unit.test_cdc_translate import CHANNELS, ORDER_ID, SIM_ORDER_ID, fake_org, sf_id, translator
from workers.ingress.cdc_translate import Translation, parse

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
FIELD_NAMES = [
    "Status",
    "Activation_Status__c",
    "WHMCS_Order_ID__c",
    "Type",
    "AccountId",
    "OrderId",
    "Quantity",
    "Product2Id",
    "BillingAddress",
    "SIM_Type__c",
    "Name",
]
field_values = st.sampled_from(["Activating", "Approved", "Processed", "SIM", "Draft", None, ORDER_ID]) | json_values
valid_ids = st.sampled_from([ORDER_ID, SIM_ORDER_ID, sf_id("802", 1), sf_id("802", 7), sf_id("01t", 1), "801*"])
record_ids = st.lists(valid_ids, min_size=1, max_size=3) | st.lists(valid_ids | st.text(max_size=5), max_size=2)
change_types = st.sampled_from(
    ["CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_OVERFLOW", "SNAPSHOT"]
) | st.text(max_size=6)


def mostly(draw: st.DrawFn, valid: Any) -> Any:
    """The valid value nine times in ten, any JSON value otherwise."""
    return draw(json_values) if draw(st.integers(0, 9)) == 9 else valid


@st.composite
def headers(draw: st.DrawFn) -> Any:
    header: dict[str, Any] = {
        "entityName": draw(st.sampled_from([*CHANNELS, "Account"])),
        "recordIds": draw(record_ids),
        "changeType": draw(change_types),
        "changeOrigin": draw(st.sampled_from(["", "com/salesforce/api/rest/60.0;client=fulfillment-fleet"])),
        "commitTimestamp": draw(st.integers(0, 4 * 10**12) | st.integers(-(10**16), 10**16)),
        "changedFields": draw(st.lists(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), max_size=4)),
        "transactionKey": draw(st.none() | st.text(max_size=6)),
        "sequenceNumber": draw(st.none() | st.integers(0, 5)),
        "nulledFields": draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=2)),
    }
    if draw(st.integers(0, 4)) == 4:  # now and then, drop or garble a header field
        name = draw(st.sampled_from(list(header)))
        if draw(st.booleans()):
            del header[name]
        else:
            header[name] = draw(json_values)
    return header


@st.composite
def deliveries(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 19:
        return draw(json_values)  # anything at all
    channel = draw(st.sampled_from([*CHANNELS.values(), "/event/Account_Eligibility_Update__e", "/data/X"]))
    fields = draw(st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=4))
    if channel.startswith("/event/"):
        payload: Any = {"Account_Id__c": mostly(draw, draw(st.sampled_from([sf_id("001", 1), ""]))), **fields}
    else:
        payload = {"ChangeEventHeader": mostly(draw, draw(headers())), **fields}
    # CometD's integer replay ids, or the Pub/Sub API's opaque bytes
    replay_id = draw(st.integers(1, 10**6) | st.binary(min_size=1, max_size=12))
    event = {"replayId": mostly(draw, replay_id), "EventUuid": draw(st.none() | st.uuids().map(str))}
    return {"channel": channel, "data": {"schema": "s", "payload": mostly(draw, payload), "event": mostly(draw, event)}}


def _translate(message: Any) -> Translation | PermanentError:
    try:
        change = parse(message)
    except InvalidPayload as exc:
        return exc
    try:
        return asyncio.run(translator(fake_org()).translate(change))
    except PermanentError as exc:
        return exc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_translate_never_crashes_and_every_event_encodes(message: Any) -> None:
    outcome = _translate(message)
    event(type(outcome).__name__ if not isinstance(outcome, Translation) else f"emitted {bool(outcome.emissions)}")
    if isinstance(outcome, PermanentError):
        assert outcome.message  # a reason for the DLQ header
        return
    assert isinstance(outcome, Translation)
    for emission in (*outcome.emissions, *outcome.resyncs):
        key, value, headers = to_record(to_envelope(emission.event, source="/test", id=emission.event_id))
        assert key and value and headers
