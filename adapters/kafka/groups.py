"""Consumer groups as the broker describes them (DescribeGroups: state, members, assignments).

Owns one fix of aiokafka's protocol table, applied before the first description: aiokafka 0.14
pairs ``DescribeGroupsRequest_v3`` with the *v2* response schema, which lacks v3's trailing
``authorized_operations`` (int32) per group. A broker that negotiates v3 (Kafka 2.3 and later, the
stack's Kafka 4 included) answers a group with members, and decoding fails with "Buffer underrun
decoding string" (a group without members happens to decode). aiokafka's own v3 response class is
right; the request is pointed at it. Drop this when aiokafka pairs them itself (checked at import:
the fix is skipped if the pairing is already right). Must not join a group or commit anything.
"""

from __future__ import annotations

from typing import Any

from aiokafka.protocol import admin as protocol  # type: ignore[import-untyped]


def _pair_describe_groups_v3() -> None:
    request = protocol.DescribeGroupsRequest_v3
    if request.RESPONSE_TYPE is protocol.DescribeGroupsResponse_v2:
        request.RESPONSE_TYPE = protocol.DescribeGroupsResponse_v3


_pair_describe_groups_v3()


async def describe_groups(admin: Any, groups: list[str]) -> dict[str, Any]:
    """Each group's DescribeGroups entry, by group id (``admin``: a started ``AIOKafkaAdminClient``).
    An entry is ``(error_code, group, state, protocol_type, protocol, members, ...)``; a member is
    ``(member_id, client_id, client_host, member_metadata, member_assignment)``."""
    described = await admin.describe_consumer_groups(groups)
    return {g[1]: g for response in described for g in response.groups}
