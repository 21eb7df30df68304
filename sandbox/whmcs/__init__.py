"""The WHMCS sandbox: External API actions the fleet uses, in-memory billing world, outbound webhooks.

``app`` (``WhmcsSandbox``: routes, auth, control API), ``actions`` (one function per API action),
``state`` (the world, seeded from ``sandbox.demo_data``), ``webhooks`` (the signed emitter) and
``phpserial`` (decoding ``customfields``). Never imported by production code.
"""

from sandbox.whmcs.app import DEFAULT_WEBHOOK_SECRET, WhmcsSandbox

__all__ = ["DEFAULT_WEBHOOK_SECRET", "WhmcsSandbox"]
