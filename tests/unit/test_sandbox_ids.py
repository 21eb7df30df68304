"""Sandbox ids within one process and the numbering rule behind them (the cross-process case is
``tests/integration/test_sandbox_ids.py``).

Contract: a reset or a second sandbox in the same process continues the numbering instead of
starting it again; Salesforce ids carry Salesforce's case-safe suffix; a WHMCS numbering started
later starts higher, by ``per_second`` for every second in between.
"""

from __future__ import annotations

from multidict import MultiDict, MultiDictProxy

from sandbox import demo_data
from sandbox.salesforce import SalesforceSandbox
from sandbox.salesforce.org import AGENT
from sandbox.salesforce.store import case_safe_suffix, sf_record_id
from sandbox.whmcs import WhmcsSandbox
from sandbox.whmcs.actions import add_order
from sandbox.whmcs.state import ID_EPOCH, ORDER_IDS_PER_SECOND, clock_ids


def new_order(sandbox: SalesforceSandbox) -> str:
    with sandbox.org.transaction(AGENT) as tx:
        return str(tx.create("Order", {"AccountId": demo_data.CUSTOMERS[0]["sf_account_id"]})["Id"])


def test_a_reset_or_a_second_salesforce_sandbox_never_hands_out_an_id_again() -> None:
    first = SalesforceSandbox()
    before = new_order(first)
    first.reset()
    after_reset = new_order(first)
    other = new_order(SalesforceSandbox())
    assert len({before, after_reset, other}) == 3 and before < after_reset < other
    assert first.store.get("Account", demo_data.CUSTOMERS[0]["sf_account_id"]) is not None


def test_salesforce_ids_carry_the_case_safe_suffix() -> None:
    assert case_safe_suffix("001A0000006Vm9r") == "IAC"  # Salesforce's documented example
    assert sf_record_id("801", 0) == "8015g0000000000AAA"
    assert sf_record_id("801", 62**9 - 1) == "8015g0zzzzzzzzzAAA"


def test_a_reset_whmcs_sandbox_continues_its_order_numbering() -> None:
    sandbox = WhmcsSandbox()
    fields = {"clientid": "1001", "paymentmethod": "mailin", "pid[]": "182", "billingcycle[]": "monthly"}
    form = MultiDictProxy(MultiDict(fields))
    first = add_order(sandbox.world, form)
    sandbox.reset()
    second = add_order(sandbox.world, form)
    assert second["orderid"] > first["orderid"] and second["serviceids"] != first["serviceids"]


def test_a_whmcs_numbering_started_later_starts_higher() -> None:
    start = ID_EPOCH + 3600
    assert next(clock_ids(ORDER_IDS_PER_SECOND, start + 2)) - next(clock_ids(ORDER_IDS_PER_SECOND, start)) == 20
    assert next(clock_ids(ORDER_IDS_PER_SECOND, ID_EPOCH + 6.8 * 365 * 86400)) < 2**31
