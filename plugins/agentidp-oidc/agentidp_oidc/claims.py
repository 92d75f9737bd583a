"""The agent's claims, shared by the id_token and userinfo (OIDC Core §5.1, §5.3.2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentidp_server import Agent, IdP

# The claims of an id_token (OIDC Core §2) this plugin issues.
ID_TOKEN_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash")
# What the agent's record says about it; `name` and `updated_at` are OIDC Core §5.1 claims.
AGENT_CLAIMS = ("name", "owner", "deployment_env", "org_id", "org_name", "updated_at")
# Copied from the access token when present: the DID plugin's `did`, and the RFC 8693
# §4.1 `act` of a delegated token (the id_token then says who acts for the subject).
TOKEN_CLAIMS = ("did", "act")


async def agent_claims(idp: IdP, agent: Agent, access_claims: Mapping[str, Any]) -> dict[str, Any]:
    """The subject's identity claims, as the id_token and userinfo give them."""
    organisation = await idp.agents.organisation(agent.org_id)
    values: dict[str, Any] = {
        "name": agent.name,
        "owner": agent.owner,
        "deployment_env": agent.deployment_env,
        "org_id": agent.org_id,
        "org_name": organisation.name if organisation else None,
        # OIDC Core §5.1: seconds since the epoch (the kernel keeps milliseconds).
        "updated_at": agent.updated_at // 1000,
    }
    for name in TOKEN_CLAIMS:
        values[name] = access_claims.get(name)
    # OIDC Core §5.3.2: a claim without a value is omitted, not sent as null or "".
    return {name: value for name, value in values.items() if value not in (None, "")}


def supported_claims(idp: IdP) -> list[str]:
    """Discovery §3 `claims_supported`: `did` only while the DID plugin supplies it."""
    names = [*ID_TOKEN_CLAIMS, *AGENT_CLAIMS, "act"]
    if idp.plugin_enabled("did"):
        names.append("did")
    return names


async def subject_agent(
    idp: IdP, client_agent: Mapping[str, Any], access_claims: Mapping[str, Any]
) -> Agent | None:
    """The agent the access token is about: the client itself (client_credentials) or,
    for a delegated token (RFC 8693), its `sub`; None for an admin client or another org's.
    `client_agent` is the token_claims context's row of the authenticated client."""
    subject = str(access_claims["sub"])
    if subject == client_agent.get("agent_id") and client_agent.get("kind") != "admin":
        return Agent.from_row(client_agent)  # already read by the kernel: no second query
    return await idp.agents.get_in_org(str(access_claims["org_id"]), subject)
