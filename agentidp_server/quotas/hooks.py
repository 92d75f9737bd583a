"""The rate and tier limits' metrics, registered through the plugin hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter

from agentidp_server.hookspecs import hookimpl
from agentidp_server.quotas.limits import QuotaMetrics
from agentidp_server.server.metrics import labelled

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


@hookimpl
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    idp.quotas.metrics = QuotaMetrics(
        rate_limit_hits=Counter(
            "agentidp_rate_limit_hits_total",
            "Rate limit rejections",
            ["client_id"],
            registry=registry,
        ),
        tenant_api_calls=labelled(
            Counter(
                "agentidp_tenant_api_calls_total",
                "API calls per tenant per tier",
                ["org_id", "tier"],
                registry=registry,
            )
        ),
        billing_limit_rejections=Counter(
            "agentidp_billing_limit_rejections_total",
            "Tier limit enforcement rejections",
            ["org_id", "limit_type"],
            registry=registry,
        ),
        rate_limit_fail_open=Counter(
            "agentidp_rate_limit_fail_open_total",
            "Requests let through unlimited because the kv was unavailable",
            registry=registry,
        ),
    )
