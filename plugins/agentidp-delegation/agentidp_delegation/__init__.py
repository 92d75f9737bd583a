"""agentidp-delegation: agents acting for other agents, with every hop on record.

Agent A grants agent B a delegation (scopes, audience, expiry, how far B may
delegate onward) through `/api/v1/delegations`. B then exchanges a token of A
at the token endpoint (RFC 8693 token exchange) for a token with `sub` = A and
`act` = B; a chain A→B→C nests the actors (RFC 8693 §4.1). Revoking a grant or
suspending an agent anywhere in a chain makes every token issued through it
inactive (the `token_status` hook).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentidp_server import AuditAction, IdP, MigrationSet, Setting, hookimpl
from prometheus_client import CollectorRegistry, Counter
from quart import Blueprint

from agentidp_delegation import chains
from agentidp_delegation.rfc8693 import DelegationExchange
from agentidp_delegation.routes import blueprint
from agentidp_delegation.state import NAME, state

# RFC 8693 §4.1 allows any depth; each hop is one more party to trust and check.
HARD_DEPTH_LIMIT = 10


def _depth(value: Any) -> str | None:
    if 1 <= value <= HARD_DEPTH_LIMIT:
        return None
    return f"must be from 1 to {HARD_DEPTH_LIMIT}, got {value!r}"


@hookimpl
def register_settings() -> list[Setting]:
    return [
        Setting(
            "DELEGATION_MAX_DEPTH",
            3,
            "Most hops (actors) a delegation chain may have; a grant's max_depth is at most "
            "one less",
            int,
            _depth,
        )
    ]


@hookimpl
def register_blueprints(idp: IdP) -> list[Blueprint]:
    return [blueprint]


@hookimpl
def register_migrations(idp: IdP) -> list[MigrationSet]:
    return [MigrationSet(NAME, Path(__file__).resolve().parent / "migrations")]


@hookimpl
def register_token_exchange_handlers(idp: IdP) -> list[DelegationExchange]:
    # The kernel serves and advertises RFC 8693 token exchange; we decide for our tokens.
    return [DelegationExchange()]


@hookimpl
def register_audit_actions(idp: IdP) -> list[AuditAction]:
    return [
        AuditAction("delegation.created", "An agent delegated scopes to another (a chain link)"),
        AuditAction("delegation.revoked", "A delegation was revoked"),
    ]


@hookimpl
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    # The runbook's counter, without labels: one per delegated token a token exchange
    # issues (each is a chain of one or more hops).
    state(idp)["chains_created"] = Counter(
        "agentidp_delegation_chains_created_total",
        "A2A delegation chains created",
        registry=registry,
    )


@hookimpl
async def token_status(idp: IdP, claims: Mapping[str, Any]) -> str | None:
    return await chains.status(idp, claims)
