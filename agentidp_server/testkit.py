"""Test helpers for the kernel and plugins: an organisation, its admin, agents, tokens."""

from __future__ import annotations

import base64
from typing import Any

from agentidp_server import agents, credentials, tenants


async def make_org(idp: Any, name: str = "Acme", tier: str = "free") -> dict[str, Any]:
    """What `agentidp orgs create` does, returning the admin client's credentials."""
    async with idp.db.transaction() as conn:
        org = await tenants.create_org(conn, name, tier)
        admin = await agents.create_agent(
            conn,
            org["org_id"],
            {"name": "admin", "deployment_env": "admin", "scopes": list(agents.ADMIN_SCOPES)},
            kind="admin",
        )
        secret = await credentials.create_secret(conn, admin, idp.settings.CREDENTIAL_PEPPER, None)
    return {**org, "client_id": secret["client_id"], "client_secret": secret["client_secret"]}


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def token(client: Any, client_id: str, secret: str, **params: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/token",
        form={"grant_type": "client_credentials", **params},
        headers=basic(client_id, secret),
    )
    body: dict[str, Any] = await response.get_json()
    assert response.status_code == 200, body
    return body


async def admin_headers(client: Any, org: dict[str, Any]) -> dict[str, str]:
    body = await token(client, org["client_id"], org["client_secret"])
    return {"Authorization": f"Bearer {body['access_token']}"}


async def make_agent(
    client: Any, headers: dict[str, str], **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register an agent and give it a client secret; return (agent, credential)."""
    data = {"name": "worker", "deployment_env": "production", "scopes": ["read", "write"], **fields}
    response = await client.post("/api/v1/agents", json=data, headers=headers)
    agent = await response.get_json()
    assert response.status_code == 201, agent
    response = await client.post(
        f"/api/v1/agents/{agent['agent_id']}/credentials",
        json={"type": "client_secret"},
        headers=headers,
    )
    credential = await response.get_json()
    assert response.status_code == 201, credential
    return agent, credential
