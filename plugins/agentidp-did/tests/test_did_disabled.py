"""The DID plugin installed but disabled: nothing of it exists, on both storage backends."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from agentidp_server.testkit import (
    admin_headers,
    make_agent,
    make_org,
    module_imported_by_app,
    token,
)


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"ISSUER": "https://idp.example.com"}


def _payload(access_token: str) -> dict[str, Any]:
    part = access_token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


@pytest.mark.parametrize(
    "agentidp_overrides",
    [
        {"ISSUER": "https://idp.example.com"},
        {"ISSUER": "https://idp.example.com", "DID_ENABLED": False},
    ],
)
async def test_disabled_plugin_leaves_no_trace(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, secret = await make_agent(agentidp_client, headers)
    agent_id = agent["agent_id"]
    for path in ("/.well-known/did.json", "/did.json", f"/agents/{agent_id}/did.json"):
        assert (await agentidp_client.get(path)).status_code == 404, path
    response = await agentidp_client.get(f"/api/v1/agents/{agent_id}/did", headers=headers)
    assert response.status_code == 404

    discovery = await agentidp_client.get("/.well-known/oauth-authorization-server")
    assert "did" not in (await discovery.get_data()).decode().lower()
    jwks = await (await agentidp_client.get("/.well-known/jwks.json")).get_json()
    # Member names and DID values only: random key material may spell "did" by chance.
    for key in jwks["keys"]:
        assert not [name for name in key if "did" in name.lower()], key
        assert not [v for v in key.values() if str(v).lower().startswith("did:")], key
    assert list(jwks) == ["keys"]
    body = await token(agentidp_client, agent["client_id"], secret["client_secret"])
    assert "did" not in _payload(body["access_token"])
    assert "did" not in await agentidp_idp.tokens.verify(body["access_token"])
    metrics = (await (await agentidp_client.get("/metrics")).get_data()).decode()
    assert "agentidp_did" not in metrics
    assert "did.json" not in metrics
    assert "did" not in agentidp_idp.state


@pytest.mark.parametrize(("enabled", "imported"), [("false", False), ("true", True)])
def test_disabled_plugin_is_never_imported(enabled, imported):
    assert module_imported_by_app("agentidp_did", {"DID_ENABLED": enabled}) is imported
