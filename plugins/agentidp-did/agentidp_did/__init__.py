"""agentidp-did: a decentralised identifier for every agent.

Each agent is `did:web:<host>[%3A<port>]:agents:<agent_id>`, derived from
ISSUER and served at `<ISSUER>/agents/<agent_id>/did.json`; the server itself
is `did:web:<host>[%3A<port>]` at `/.well-known/did.json`. Agents' Ed25519 and
P-256 keys are also listed as `did:key` identifiers (`alsoKnownAs`). Access
tokens carry the agent's DID in a `did` claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentidp_server import IdP, Setting, hookimpl
from prometheus_client import CollectorRegistry, Counter
from quart import Blueprint

from agentidp_did.identifiers import agent_did
from agentidp_did.routes import blueprint
from agentidp_did.state import state


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value!r}"


@hookimpl
def register_settings() -> list[Setting]:
    return [
        Setting(
            "DID_CACHE_MAX_AGE",
            0,
            "Seconds resolvers may cache a did.json (Cache-Control max-age); 0 sends no-cache, "
            "so a suspension shows on the next resolution",
            int,
            _non_negative,
        )
    ]


@hookimpl
def register_blueprints(idp: IdP) -> list[Blueprint]:
    return [blueprint(idp)]


@hookimpl
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    state(idp)["documents"] = Counter(
        "agentidp_did_documents_generated_total",
        "DID documents generated (did.json and the management API)",
        registry=registry,
    )


@hookimpl
def token_claims(idp: IdP, context: Mapping[str, Any]) -> Mapping[str, Any] | None:
    agent = context.get("agent")
    # Organisation admin clients are management credentials, not agents: no DID.
    if not isinstance(agent, Mapping) or agent.get("kind") == "admin":
        return None
    return {"did": agent_did(idp.issuer, str(agent["agent_id"]))}
