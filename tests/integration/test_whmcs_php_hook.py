"""The WHMCS hook file (deploy/whmcs/fleet_webhooks.php) run by a real PHP interpreter against the receiver.

A harness stands in for WHMCS: it defines ``add_hook`` (collecting the callbacks), ``localAPI``
(answering from JSON fixtures) and ``logActivity`` (to stderr), includes the hook file, and fires
one hook with sample ``$vars``. The hook file really POSTs (curl, or PHP streams without curl) to
the receiver served by ``serve`` on the local stack.

Contract: a webhook signed by the PHP code is accepted (200) and lands on Kafka keyed by the client
id; a tampered body is refused (401); with several secrets every one signs; when the receiver is
unreachable the hook returns within its timeout, spools the message, and the cron hook delivers it
later under the same webhook-id; no card data ever leaves WHMCS.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.test_webhook_receiver import SECRET, Receiver, running_receiver

# No skip when php is missing: the issue requires this test to run a real php binary, and
# deploy/bootstrap.sh (run by `make install` and .ci/run) installs php-cli and php-curl.
pytestmark = pytest.mark.integration

HOOK_FILE = Path(__file__).resolve().parents[2] / "deploy" / "whmcs" / "fleet_webhooks.php"
HARNESS = r"""<?php
define('WHMCS', true);
$hooks = [];
function add_hook($name, $priority, $callback) { global $hooks; $hooks[$name][] = $callback; }
function logActivity($message) { fwrite(STDERR, "logActivity: $message\n"); }
function localAPI($command, $params, $admin = null) {
    $fixtures = json_decode(getenv('FLEET_TEST_LOCALAPI') ?: '{}', true);
    return isset($fixtures[$command]) ? $fixtures[$command] : ['result' => 'error', 'message' => 'not stubbed'];
}
require getenv('FLEET_TEST_HOOK_FILE');
$mode = $argv[1];
if ($mode === 'hooks') { echo json_encode(array_keys($hooks)); }
if ($mode === 'fire') { foreach ($hooks[$argv[2]] as $callback) { $callback(json_decode($argv[3], true)); } }
if ($mode === 'sign') {  // what the hook file would send, printed instead of sent
    $config = fleet_webhooks_config();
    $message = fleet_webhooks_message($argv[2], json_decode($argv[3], true));
    $ts = time();
    echo json_encode(['id' => $message['id'], 'timestamp' => $ts, 'body' => $message['body'],
        'signature' => fleet_webhooks_sign($config['secrets'], $message['id'], $ts, $message['body'])]);
}
"""
LOCAL_API = {
    "GetInvoice": {"result": "success", "invoiceid": "9001", "userid": "4242", "status": "Paid", "total": "15.95"},
    "GetOrders": {"result": "success", "orders": {"order": [{"id": 5001, "userid": 4242, "status": "Pending",
                                                             "invoiceid": 9001}]}},
    "GetClientsProducts": {"result": "success", "products": {"product": [{"id": 7001, "clientid": 4242,
                                                                         "status": "Active"}]}},
}  # fmt: skip


@pytest_asyncio.fixture
async def receiver(stack_env: dict[str, str]) -> AsyncIterator[Receiver]:
    async with running_receiver(stack_env) as running:
        yield running


class Php:
    def __init__(self, tmp_path: Path, url: str, secrets: str = SECRET) -> None:
        self.harness = tmp_path / "harness.php"
        self.harness.write_text(HARNESS)
        self.spool = tmp_path / "spool"
        self.env = {
            "PATH": os.environ["PATH"],
            "FLEET_TEST_HOOK_FILE": str(HOOK_FILE),
            "FLEET_TEST_LOCALAPI": json.dumps(LOCAL_API),
            "FLEET_WEBHOOK_URL": url,
            "FLEET_WEBHOOK_SECRETS": secrets,
            "FLEET_WEBHOOK_SPOOL_DIR": str(self.spool),
            "FLEET_WEBHOOK_TIMEOUT_MS": "2000",
        }

    async def run(self, *args: str, options: tuple[str, ...] = ()) -> tuple[str, str]:
        """(stdout, stderr) of the harness. Asynchronous: the receiver shares this event loop."""
        proc = await asyncio.create_subprocess_exec(
            "php", *options, str(self.harness), *args, env=self.env, stdout=PIPE, stderr=PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        stdout, stderr = out.decode(), err.decode()
        assert proc.returncode == 0, stderr
        assert "Fatal" not in stderr and "Warning" not in stderr and "Deprecated" not in stderr, stderr
        return stdout, stderr

    async def fire(self, hook: str, vars: dict[str, Any], options: tuple[str, ...] = ()) -> str:
        return (await self.run("fire", hook, json.dumps(vars), options=options))[1]

    def spooled(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.spool.glob("msg_*.json"))]


async def test_the_hook_file_is_valid_php_and_registers_the_documented_hooks(tmp_path: Path) -> None:
    lint = await asyncio.create_subprocess_exec("php", "-l", str(HOOK_FILE), stdout=PIPE, stderr=PIPE)
    out, _ = await lint.communicate()
    assert lint.returncode == 0, out
    hooks = json.loads((await Php(tmp_path, "http://127.0.0.1:9").run("hooks"))[0])
    assert set(hooks) == {
        "InvoiceCreated", "InvoicePaid", "InvoiceUnpaid", "InvoiceCancelled", "InvoiceRefunded", "AddInvoicePayment",
        "AcceptOrder", "PendingOrder", "CancelOrder", "FraudOrder", "AfterShoppingCartCheckout", "OrderPaid",
        "ServiceEdit", "AfterModuleCreate", "AfterModuleSuspend", "AfterModuleUnsuspend", "AfterModuleTerminate",
        "ClientAdd", "ClientEdit", "ClientClose", "CCUpdate", "AfterCronJob",
    }  # fmt: skip


CASES = [
    ("InvoicePaid", {"invoiceid": 9001}, "fleet.billing.invoice-changed.v1", {"invoice_id": 9001, "status": "Paid"}),
    ("AcceptOrder", {"orderid": 5001}, "fleet.billing.order-changed.v1", {"whmcs_order_id": 5001, "status": "Active"}),
    ("AfterShoppingCartCheckout", {"OrderID": 5001, "ServiceIDs": [7001], "InvoiceID": 9001},
     "fleet.billing.order-changed.v1", {"whmcs_order_id": 5001, "status": "Pending"}),
    ("OrderPaid", {"orderId": 5001, "userId": 4242, "invoiceId": 9001}, "fleet.billing.order-changed.v1",
     {"whmcs_order_id": 5001}),
    ("ServiceEdit", {"userid": 4242, "serviceid": 7001}, "fleet.billing.service-changed.v1",
     {"service_id": 7001, "status": "Active"}),
    ("AfterModuleSuspend", {"params": {"serviceid": 7001, "userid": 4242, "pid": 3}},
     "fleet.billing.service-changed.v1", {"service_id": 7001, "status": "Suspended"}),
    ("ClientAdd", {"client_id": 4242, "user_id": 1, "firstname": "Hanako"}, "fleet.billing.client-changed.v1", {}),
    ("ClientEdit", {"userid": 4242, "status": "Active", "email": "x@example.com"},
     "fleet.billing.client-changed.v1", {}),
    ("CCUpdate", {"userid": 4242, "cardtype": "Visa", "cardnum": "4111111111111111", "cardcvv": "123"},
     "fleet.billing.payment-method-changed.v1", {}),
]  # fmt: skip


@pytest.mark.parametrize(("hook", "vars", "ce_type", "fields"), CASES, ids=[case[0] for case in CASES])
async def test_a_webhook_sent_by_the_php_hook_is_accepted_and_lands_on_kafka(
    receiver: Receiver, tmp_path: Path, hook: str, vars: dict[str, Any], ce_type: str, fields: dict[str, Any]
) -> None:
    php = Php(tmp_path, receiver.url + "/webhooks/whmcs")
    log = await php.fire(hook, vars)
    assert "spooled" not in log and "refused" not in log, log
    [record] = await receiver.records(receiver.topic, 1)
    assert record.key == b"4242"
    assert dict(record.headers)["ce_type"] == ce_type.encode()
    assert dict(record.headers)["ce_id"].startswith(b"whmcs-webhook:msg_")
    data = json.loads(record.value)
    assert data | {"hook": hook, "whmcs_client_id": 4242, **fields} == data
    # card data never leaves WHMCS: not the number, not the CVV as any value (a check for the substring
    # "4111" also matched the random hex ids of the record, "...af4111...": a flake, not a leak)
    assert "4111111111111111" not in record.value.decode()
    assert not {"4111111111111111", "123"} & set(scalars(data))


def scalars(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in scalars(v)]
    if isinstance(value, list):
        return [s for v in value for s in scalars(v)]
    return [str(value)]


async def test_a_php_signature_verifies_and_a_tampered_body_does_not(receiver: Receiver, tmp_path: Path) -> None:
    php = Php(tmp_path, receiver.url + "/webhooks/whmcs")
    sent = json.loads((await php.run("sign", "InvoicePaid", json.dumps({"client_id": 4242, "invoice_id": 9001})))[0])
    headers = {"webhook-id": sent["id"], "webhook-timestamp": str(sent["timestamp"]),
               "webhook-signature": sent["signature"], "content-type": "application/json"}  # fmt: skip
    tampered = sent["body"].replace("9001", "9002").encode()
    assert (await receiver.post(tampered, headers))[0] == 401
    assert (await receiver.post(sent["body"].encode(), headers))[0] == 200


async def test_during_a_rotation_every_secret_signs_and_the_receiver_needs_only_one(
    receiver: Receiver, tmp_path: Path
) -> None:
    php = Php(
        tmp_path, receiver.url + "/webhooks/whmcs", secrets=f"whsec_bmV3LXNlY3JldC1ub3QteWV0LWRlcGxveWVk,{SECRET}"
    )
    sent = json.loads((await php.run("sign", "ClientEdit", json.dumps({"client_id": 4242})))[0])
    assert len(sent["signature"].split(" ")) == 2
    await php.fire("ClientEdit", {"userid": 4242})
    assert len(await receiver.records(receiver.topic, 1)) == 1


async def test_an_unreachable_receiver_spools_and_the_cron_hook_delivers_later(
    receiver: Receiver, tmp_path: Path
) -> None:
    php = Php(tmp_path, "http://127.0.0.1:9/webhooks/whmcs")  # nothing listens on the discard port
    started = time.monotonic()
    log = await php.fire("InvoicePaid", {"invoiceid": 9001})
    assert time.monotonic() - started < 10  # the 2 s timeout, plus PHP start-up
    [spooled] = php.spooled()
    assert "spooled" in log

    php.env["FLEET_WEBHOOK_URL"] = receiver.url + "/webhooks/whmcs"
    await php.fire("AfterCronJob", {})
    assert php.spooled() == []
    [record] = await receiver.records(receiver.topic, 1)
    assert dict(record.headers)["ce_id"] == f"whmcs-webhook:{spooled['id']}".encode()


async def test_php_without_curl_falls_back_to_streams(receiver: Receiver, tmp_path: Path) -> None:
    php = Php(tmp_path, receiver.url + "/webhooks/whmcs")
    await php.fire("ClientClose", {"userid": 4242}, options=("-d", "disable_functions=curl_init"))
    [record] = await receiver.records(receiver.topic, 1)
    assert json.loads(record.value)["hook"] == "ClientClose"


async def test_without_a_secret_nothing_is_sent_and_the_reason_is_logged(tmp_path: Path) -> None:
    php = Php(tmp_path, "http://127.0.0.1:9/webhooks/whmcs", secrets="")
    log = await php.fire("InvoicePaid", {"invoiceid": 9001})
    assert "FLEET_WEBHOOK_SECRETS is not set" in log
    assert php.spooled() == []


async def test_a_failed_lookup_sends_nothing_rather_than_a_webhook_without_client(tmp_path: Path) -> None:
    php = Php(tmp_path, "http://127.0.0.1:9/webhooks/whmcs")
    php.env["FLEET_TEST_LOCALAPI"] = "{}"
    log = await php.fire("InvoicePaid", {"invoiceid": 9001})
    assert "no client id for InvoicePaid" in log
    assert php.spooled() == []
