"""``HttpFreebit`` offline through httpx.MockTransport: result-code mapping and the authKey policy.

Contract: one login serves many calls; a refused authKey (202) triggers exactly one fresh login
and one repeat, and a second refusal is ``AuthenticationFailed``; duplicates are distinguishable;
busy/locked/system codes are retryable; every other code is ``RejectedByUpstream`` with the
"<statusCode>-<resultCode>" code; bodies that are not Freebit JSON are ``InvalidPayload``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from adapters.freebit import DUPLICATE_ACCOUNT, HttpFreebit
from events.errors import AuthenticationFailed, FleetError, InvalidPayload, RejectedByUpstream, UpstreamUnavailable

BASE = "https://i1.mvno.net/emptool/api"


def ok(**extra: Any) -> dict[str, Any]:
    return {"resultCode": "100", "status": {"message": "OK", "statusCode": "200"}, **extra}


def fail(result: str, status: str, message: str = "no") -> dict[str, Any]:
    return {"resultCode": result, "status": {"message": message, "statusCode": status}}


class Script:
    """Answers authOem with fresh keys and every other path from a queue; records (path, json)."""

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/emptool/api/").strip("/")
        body = json.loads(parse_qs(request.content.decode())["json"][0])
        self.seen.append((path, body))
        if path == "authOem":
            return httpx.Response(200, json=ok(authKey=f"key{sum(p == 'authOem' for p, _ in self.seen)}"))
        return httpx.Response(200, json=self.answers.pop(0))

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


def freebit_for(handler: Callable[[httpx.Request], httpx.Response]) -> HttpFreebit:
    return HttpFreebit(httpx.AsyncClient(transport=httpx.MockTransport(handler)), BASE + "/", "PASI", "k")


async def test_one_login_serves_many_calls() -> None:
    script = Script(ok(), ok())
    freebit = freebit_for(script)
    await freebit.register_physical_sim("08011112222", serial_number="AX1", plan_code="P")
    await freebit.add_voice_options("08011112222", voice_mail=True, call_waiting=False)
    assert script.paths() == ["authOem", "master/addAcnt", "mvno/talkoption/addOrder"]
    assert [body["authKey"] for _, body in script.seen[1:]] == ["key1", "key1"]
    assert (script.seen[2][1]["voiceMail"], script.seen[2][1]["callWaiting"], script.seen[2][1]["userConfirmed"]) == (
        "10",
        "20",
        "10",
    )


async def test_a_refused_key_is_renewed_once_and_the_call_repeated() -> None:
    script = Script(fail("202", "401"), ok())
    await freebit_for(script).cancel_account("08011112222")
    assert script.paths() == ["authOem", "master/cnclAcnt", "authOem", "master/cnclAcnt"]
    assert script.seen[3][1]["authKey"] == "key2"


async def test_a_key_refused_right_after_login_is_authentication_failed() -> None:
    script = Script(fail("202", "401"), fail("202", "401"))
    with pytest.raises(AuthenticationFailed):
        await freebit_for(script).cancel_account("08011112222")
    assert script.paths().count("authOem") == 2  # no login loop


@pytest.mark.parametrize(
    ("result", "status", "error", "code"),
    [
        ("230", "409", RejectedByUpstream, DUPLICATE_ACCOUNT),
        ("356", "400", RejectedByUpstream, "400-356"),
        ("210", "400", RejectedByUpstream, "400-210"),
        ("240", "409", UpstreamUnavailable, "409-240"),
        ("500", "500", UpstreamUnavailable, "500-500"),
        ("503", "503", UpstreamUnavailable, "503-503"),
        ("999", "400", RejectedByUpstream, "400-999"),  # an unknown code is refused, not retried forever
    ],
)
async def test_result_codes_map_to_one_class_and_code(
    result: str, status: str, error: type[FleetError], code: str
) -> None:
    with pytest.raises(error) as caught:
        await freebit_for(Script(fail(result, status))).register_esim("08011112222", eid="8" * 32, plan_code="P")
    assert (type(caught.value), caught.value.code, caught.value.upstream) == (error, code, "freebit")


async def test_not_found_detail_is_none_and_already_cancelled_is_success() -> None:
    freebit = freebit_for(Script(fail("220", "404"), fail("221", "409")))
    assert await freebit.account_detail("08011112222") is None
    await freebit.cancel_account("08011112222")


async def test_detail_parses_state_and_tolerates_unknown_fields() -> None:
    row = {"account": "08011112222", "state": "active", "simKind": "esim", "eid": "8" * 32, "voicemail": "x"}
    detail = await freebit_for(Script(ok(responseDatas=[row]))).account_detail("08011112222")
    assert detail is not None and (detail.state, detail.sim_kind, detail.eid) == ("active", "esim", "8" * 32)


@pytest.mark.parametrize("body", ['{"resultCode": "10', "[]", '{"status": {}}'])
async def test_bodies_that_are_not_freebit_json_are_invalid_payload(body: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/authOem/"):
            return httpx.Response(200, json=ok(authKey="k"))
        return httpx.Response(200, text=body)

    with pytest.raises(InvalidPayload) as caught:
        await freebit_for(handler).account_detail("08011112222")
    assert caught.value.code == "MALFORMED_RESPONSE" and "mvno/getDetail" in caught.value.message
