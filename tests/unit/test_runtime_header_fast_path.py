"""The consume loop's header fast path decides exactly as the header-dict checks do, whatever the order.

``events.envelope.ordered_binary_type`` reads the CloudEvents headers by position when they come in
``to_record``'s order; anything it does not accept must get the same verdict from ``binary_type`` on a
header dict (last value wins) and from the worker, which falls back to that.
"""

from __future__ import annotations

import itertools
import random

import pytest

from events import failure as fh
from events.base import to_envelope
from events.envelope import (
    H_CONTENT_TYPE,
    H_ID,
    H_SPECVERSION,
    H_TIME,
    H_TYPE,
    binary_type,
    ordered_binary_type,
    to_record,
)
from events.salesforce import OrderChanged
from tests.unit.test_runtime_worker import DLQ, SRC, Harness, order
from workers.runtime.message import Message

Headers = list[tuple[str, bytes | None]]


def produced() -> Headers:
    _, _, headers = to_record(to_envelope(order(1), source="/test", correlationid="c-1"))
    return list(headers)


def replace(headers: Headers, name: str, value: bytes | None) -> Headers:
    return [(n, value if n == name else v) for n, v in headers]


def variants() -> list[Headers]:
    """Produced headers, reordered, shortened, repeated and with every checked value broken."""
    base = produced()
    out: list[Headers] = [base, base[:6], base[:5], list(reversed(base)), [*base, (H_TYPE, b"fleet.other.v1")]]
    out += [[*base, (name, value)] for name, value in base[:6]]  # a later repeat (same value) wins in a dict
    out += [base[:3] + [base[4], base[3]] + base[5:]]  # two swapped
    bad = {
        H_SPECVERSION: [b"0.3", b"", None],
        H_ID: [b"", None],
        "ce_source": [b"", None],
        H_TYPE: [b"", None],
        H_TIME: [b"yesterday", b"", None, b"\xff"],
        H_CONTENT_TYPE: [b"text/plain", None, b"application/json; charset=utf-8"],
    }
    for name, values in bad.items():
        out += [replace(base, name, value) for value in values]
    rng = random.Random(7)
    for _ in range(50):
        shuffled = list(base)
        rng.shuffle(shuffled)
        out.append(shuffled)
    return out


@pytest.mark.parametrize("headers", variants())
def test_the_ordered_check_never_disagrees_with_the_dict_check(headers: Headers) -> None:
    fast = ordered_binary_type(headers)
    assert fast is None or fast == binary_type(dict(headers))


def test_the_ordered_check_takes_what_the_fleet_produces() -> None:
    headers = produced()
    assert ordered_binary_type(headers) == OrderChanged.TYPE.encode()
    retry_copy = [*headers, (fh.ATTEMPTS, b"3"), (fh.SOURCE_TOPIC, b"t.src")]  # failure headers only append
    assert ordered_binary_type(retry_copy) == OrderChanged.TYPE.encode()


@pytest.mark.parametrize("n", range(1, 4))
def test_a_later_repeat_of_a_checked_header_leaves_the_decision_to_the_dict(n: int) -> None:
    for extra in itertools.combinations(produced()[:6], n):
        assert ordered_binary_type([*produced(), *extra]) is None


def test_a_message_builds_its_header_map_on_first_access() -> None:
    headers: Headers = [(H_ID, b"e-1"), (H_ID, b"e-2")]
    msg = Message(order(1), "g", "t", 0, 0, 0, None, None, headers, None, OrderChanged.TYPE)
    assert msg.header_map == {H_ID: b"e-2"} and msg.event_id == "e-2"  # last value wins
    assert msg.header_map is msg.header_map


async def test_records_with_headers_in_any_order_are_handled_and_bad_ones_dead_lettered() -> None:
    h = Harness()
    key, value, headers = to_record(to_envelope(order(1), source="/test"))
    h.consumer.append(SRC, value, key=key, headers=list(reversed(headers)))  # out of order: the dict path
    h.consumer.append(SRC, value, key=key, headers=[*headers, (H_TYPE, b"fleet.nobody.knows.v1")])  # last wins
    h.consumer.append(SRC, value, key=key, headers=replace(list(headers), H_TIME, b"soon"))
    h.send(2)  # in order: the fast path
    await h.until(lambda: h.committed() == 4)
    await h.finish()
    assert h.handler.ids() == ["8011", "8012"]
    assert h.handler.messages[0].event_id == dict(headers)[H_ID].decode()
    dead = [dict(hs) for _, _, hs in h.producer.on(DLQ)]
    assert [d[fh.SOURCE_OFFSET] for d in dead] == [b"1", b"2"]
    assert b"no model for event type" in dead[0][fh.ERROR_MESSAGE]
    assert b"bad ce_time" in dead[1][fh.ERROR_MESSAGE]
