"""``WhmcsSandbox``: the WHMCS External API (``POST /includes/api.php``) plus its control routes.

Authenticates like WHMCS (``identifier``/``secret``, or the legacy ``username``/``password``
fields carrying the same pair), dispatches on ``action`` (also the fault endpoint key), answers
API errors with HTTP 200 and ``result=error``, and turns state changes into webhooks. Extra
control routes (beyond ``SandboxBase``'s): ``POST /_sandbox/paymethods``,
``DELETE /_sandbox/paymethods/{id}``, ``POST /_sandbox/invoices``, ``POST /_sandbox/clients``,
``POST /_sandbox/webhook``. Pay-method changes are reported as production WHMCS reports them:
``CCUpdate`` for a card, nothing for a bank account or a remote token. Must not be imported by
production code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sandbox.common import SandboxBase
from sandbox.whmcs.actions import ACTIONS, ApiError, Form, create_invoice
from sandbox.whmcs.state import World, demo_world, now_text
from sandbox.whmcs.webhooks import WebhookEmitter

API_PATH = "/includes/api.php"
#: the default of ``WhmcsSettings.webhook_secrets[0]``, so a bare ``python -m sandbox`` signs what the fleet verifies
DEFAULT_WEBHOOK_SECRET = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA=="
#: pay-method types WHMCS stores as a card (``CCUpdate`` fires for them); bank accounts and remote
#: tokens fire nothing
CARD_TYPES = frozenset({"creditcard", "remotecreditcard"})
_ACTIONS = {name.lower(): fn for name, fn in ACTIONS.items()}  # WHMCS action names are case-insensitive


def _error(message: str, status: int = 200) -> web.Response:
    return web.json_response({"result": "error", "message": message}, status=status)


@dataclass
class WhmcsSandbox(SandboxBase):
    name: str = "whmcs"
    identifier: str = "fleet-api"
    secret: str = "sandbox-whmcs-secret"
    webhook_url: str | None = None
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 0.2
    world: World = field(default_factory=demo_world)
    emitter: WebhookEmitter = field(init=False)

    def __post_init__(self) -> None:
        self.emitter = WebhookEmitter(
            self.webhook_url, self.webhook_secret, self.webhook_max_attempts, self.webhook_backoff_s
        )

    # --- SandboxBase hooks -------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_post(API_PATH, self._api)
        app.router.add_post("/_sandbox/paymethods", self._add_paymethod)
        app.router.add_delete("/_sandbox/paymethods/{id}", self._remove_paymethod)
        app.router.add_post("/_sandbox/invoices", self._invoices)
        app.router.add_post("/_sandbox/clients", self._edit_client)
        app.router.add_post("/_sandbox/webhook", self._set_webhook)
        app.on_cleanup.append(self._close)

    async def endpoint_of(self, request: web.Request) -> str:
        if request.path != API_PATH or request.method != "POST":
            return request.path
        return (await request.post()).get("action", "?")  # type: ignore[return-value]

    def error_response(self, status: int, endpoint: str) -> web.Response:
        # WHMCS sits behind a web server: overload and rate limits come back as HTML pages, not JSON
        text = f"<html><body><h1>{status}</h1>sandbox fault on {endpoint}</body></html>"
        return web.Response(status=status, text=text, content_type="text/html")

    def state(self) -> dict[str, Any]:
        return self.world.snapshot() | self.emitter.state()

    async def seed(self, body: dict[str, Any]) -> dict[str, Any]:
        for record in body.get("clients", []):
            client = self.world.add_client(record)
            self.world.emit("ClientAdd", client_id=client.id, status=client.status)
        products = [self.world.add_product(record).pid for record in body.get("products", [])]
        self._flush()
        return {"clients": [int(r["id"]) for r in body.get("clients", [])], "products": products}

    def reset(self) -> None:
        super().reset()
        self.world = demo_world()
        self.emitter.events.clear()
        self.emitter.deliveries.clear()

    # --- the API -----------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        form: Form = await request.post()  # type: ignore[assignment]
        if not self._authenticated(form):
            return _error("Authentication Failed", status=403)
        if form.get("responsetype", "json").lower() != "json":
            return _error("The sandbox answers responsetype=json only")
        action = _ACTIONS.get(form.get("action", "").lower())
        if action is None:
            return _error("Command Not Found")
        try:
            body = action(self.world, form)
        except ApiError as exc:
            return _error(exc.message)
        except ValueError as exc:  # a non-numeric id and the like; WHMCS would answer an error too
            return _error(f"Invalid request: {exc}")
        finally:
            self._flush()
        return web.json_response(body)

    def _authenticated(self, form: Form) -> bool:
        identifier = form.get("identifier") or form.get("username")
        secret = form.get("secret") or form.get("password")
        return (identifier, secret) == (self.identifier, self.secret)

    def _flush(self) -> None:
        for event, data in self.world.drain():
            self.emitter.emit(event, data)

    # --- control routes ------------------------------------------------------------------------
    async def _add_paymethod(self, request: web.Request) -> web.Response:
        body = await request.json()
        client = self.world.clients.get(int(body.get("clientid", 0)))
        if client is None:
            return web.json_response({"error": "unknown clientid"}, status=404)
        record = {k: v for k, v in body.items() if k != "clientid"}
        method = self.world.add_paymethod(client, record)
        self._card_hook(client.id, method)
        return web.json_response(method, status=201)

    def _card_hook(self, client_id: int, method: dict[str, Any]) -> None:
        """What production WHMCS reports of a pay-method change: ``CCUpdate`` (the client's id, no
        pay method id) when a card is stored or removed, and nothing at all for a bank account or a
        remote token (the WHMCS hook index has no such hook point): the fleet's re-check timer
        covers those."""
        if str(method.get("type", "")).lower() in CARD_TYPES:
            self._emit("CCUpdate", client_id=client_id)

    async def _remove_paymethod(self, request: web.Request) -> web.Response:
        wanted = int(request.match_info["id"])
        for client in self.world.clients.values():
            for method in [m for m in client.paymethods if m["id"] == wanted]:
                client.paymethods.remove(method)
                self._card_hook(client.id, method)
                return web.json_response({"removed": wanted})
        return web.json_response({"error": "unknown pay method"}, status=404)

    async def _invoices(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("action", "create") == "pay":
            return self._pay_invoice(int(body.get("invoiceid", 0)))
        client_id = int(body.get("clientid", 0))
        if client_id not in self.world.clients:
            return web.json_response({"error": "unknown clientid"}, status=404)
        invoice_id = create_invoice(self.world, client_id, float(body.get("total", 0)))
        self._flush()
        return web.json_response({"invoiceid": invoice_id, "status": "Unpaid"}, status=201)

    def _pay_invoice(self, invoice_id: int) -> web.Response:
        invoice = self.world.invoices.get(invoice_id)
        if invoice is None:
            return web.json_response({"error": "unknown invoiceid"}, status=404)
        if invoice.status != "Paid":
            invoice.status, invoice.datepaid = "Paid", now_text()
            self.world.emit(
                "InvoicePaid", client_id=invoice.userid, invoice_id=invoice.id, status="Paid", total=invoice.total
            )
            if invoice.orderid:
                self.world.emit(
                    "OrderPaid",
                    client_id=invoice.userid,
                    order_id=invoice.orderid,
                    invoice_id=invoice.id,
                    status="Paid",
                )
            self._flush()
        return web.json_response({"invoiceid": invoice.id, "status": invoice.status})

    async def _edit_client(self, request: web.Request) -> web.Response:
        body = await request.json()
        client = self.world.clients.get(int(body.get("clientid", 0)))
        if client is None:
            return web.json_response({"error": "unknown clientid"}, status=404)
        for key in ("firstname", "lastname", "email", "status"):
            setattr(client, key, body.get(key, getattr(client, key)))
        self.world.emit("ClientEdit", client_id=client.id, status=client.status)
        if client.status == "Closed":
            self.world.emit("ClientClose", client_id=client.id, status=client.status)
        self._flush()
        return web.json_response({"clientid": client.id, "status": client.status})

    async def _set_webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.emitter.url = body.get("url") or None
        self.emitter.secret = body.get("secret", self.emitter.secret)
        return web.json_response({"webhook_url": self.emitter.url})

    def _emit(self, event: str, **data: Any) -> None:
        self.world.emit(event, **data)
        self._flush()

    async def _close(self, _app: web.Application) -> None:
        await self.emitter.close()
