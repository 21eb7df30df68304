"""DescribeGroups v3 decodes what a broker answering v3 sends (aiokafka 0.14 paired it with v2's layout)."""

from __future__ import annotations

from aiokafka.protocol import admin as protocol  # type: ignore[import-untyped]

from adapters.kafka import groups


def _answer(names: list[str]) -> bytes:
    """The bytes of a v3 DescribeGroups answer: groups with one member each, and the v3 field."""
    member = ("member-1", "fleet-fulfillment", "/10.0.0.7", b"meta", b"assignment")
    rows = [(0, name, "Stable", "consumer", "cooperative-sticky", [member], -2147483648) for name in names]
    encoded: bytes = protocol.DescribeGroupsResponse_v3(throttle_time_ms=0, groups=rows).encode()
    return encoded


def test_the_v3_request_decodes_several_groups_with_members() -> None:
    assert groups  # imported: the pairing is fixed at import
    response_type = protocol.DescribeGroupsRequest_v3.RESPONSE_TYPE
    decoded = response_type.decode(_answer(["fleet.fulfillment", "fleet.sf-writer"]))
    assert [(g[1], g[2], [m[1] for m in g[5]]) for g in decoded.groups] == [
        ("fleet.fulfillment", "Stable", ["fleet-fulfillment"]),
        ("fleet.sf-writer", "Stable", ["fleet-fulfillment"]),
    ]


def test_the_v2_layout_cannot_decode_that_answer() -> None:
    """Why the fix exists: the layout aiokafka paired with v3 fails on the same bytes."""
    try:
        protocol.DescribeGroupsResponse_v2.decode(_answer(["fleet.fulfillment", "fleet.sf-writer"]))
    except ValueError as exc:
        assert "underrun" in str(exc)
    else:
        raise AssertionError("the v2 layout decoded a v3 answer of two groups")
