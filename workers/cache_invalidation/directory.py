"""Who an event is about: the ``id_mappings`` lookup its keys need, and the rows one batch needs.

Owns the resolution of WHMCS client / Salesforce account ids to portal users (``id_mappings``, read
once per id kind per batch). Must not cache rows across batches: a link the portal made a moment
ago must count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adapters.mappings import IdMapping, IdMappingsPort
from events.base import DomainEvent
from events.billing import ClientChanged, InvoiceChanged, PaymentMethodChanged, ServiceChanged, WhmcsOrderChanged
from events.fulfillment import OrderFulfilled, OrderFulfillmentFailed, OrderParked

BillingEvent = InvoiceChanged | ServiceChanged | PaymentMethodChanged | ClientChanged | WhmcsOrderChanged
OrderOutcome = OrderFulfilled | OrderFulfillmentFailed | OrderParked
_BILLING = (InvoiceChanged, ServiceChanged, PaymentMethodChanged, ClientChanged, WhmcsOrderChanged)
_OUTCOMES = (OrderFulfilled, OrderFulfillmentFailed, OrderParked)


def lookup_of(event: DomainEvent) -> int | str | None:
    """The ``id_mappings`` lookup an event's keys need: a WHMCS client id, a Salesforce account id, or none.

    Billing events name their client; an outcome names its client when fulfillment got that far,
    else only the account (a failed or parked order may have neither)."""
    if isinstance(event, _BILLING):
        return event.whmcs_client_id
    if isinstance(event, _OUTCOMES):
        return event.whmcs_client_id if event.whmcs_client_id is not None else event.sf_account_id or None
    return None


class Directory:
    """The ``id_mappings`` rows one batch needs, read in one query per id kind. Per batch, never kept:
    a link the portal made a moment ago must count (a stale "no user" would leave keys standing)."""

    def __init__(
        self, by_client: Mapping[int, Sequence[IdMapping]], by_account: Mapping[str, Sequence[IdMapping]]
    ) -> None:
        self._by_client, self._by_account = by_client, by_account

    @classmethod
    async def load(cls, mappings: IdMappingsPort, events: Sequence[DomainEvent]) -> Directory:
        wanted = [lookup_of(e) for e in events]
        clients = {w for w in wanted if isinstance(w, int)}
        accounts = {w for w in wanted if isinstance(w, str)}
        by_client = await mappings.for_whmcs_clients(clients) if clients else {}
        by_account = await mappings.for_sf_accounts(accounts) if accounts else {}
        return cls(by_client, by_account)

    def rows_for(self, event: DomainEvent) -> Sequence[IdMapping]:
        lookup = lookup_of(event)
        if isinstance(lookup, int):
            return self._by_client.get(lookup, ())
        return self._by_account.get(lookup, ()) if lookup is not None else ()

    def users_of(self, event: DomainEvent) -> list[str]:
        return [row.user_id for row in self.rows_for(event)]
