"""What a worker process may depend on: the one vocabulary the routing table, the composition root
and the production profile share.

Owns the ``Need`` names only. Must not import anything of ours: ``workers.routes`` imports the flows
and the ingress entry points, which import ``workers.bootstrap``, which needs these names; a module of
its own keeps that chain free of circles.
"""

from __future__ import annotations

from enum import StrEnum


class Need(StrEnum):
    """A dependency a worker uses; each has settings that must be real in staging/production."""

    KAFKA = "kafka"
    POSTGRES = "postgres"
    REDIS = "redis"
    SALESFORCE = "salesforce"
    WHMCS_API = "whmcs-api"
    FREEBIT = "freebit"
    WEBHOOK_SECRETS = "webhook-secrets"
