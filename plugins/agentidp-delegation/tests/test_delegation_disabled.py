"""The plugin installed but off: no routes, no grant type, nothing advertised or
exported, its tables absent, its module never imported."""

from __future__ import annotations

from typing import Any

import pytest
from agentidp_server.testkit import basic, module_imported_by_app
from delegation_helpers import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE, bearer, make_world, own_token


@pytest.mark.parametrize("agentidp_overrides", [{}, {"DELEGATION_ENABLED": False}])
async def test_disabled_plugin_leaves_no_trace(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    for method, path in (
        ("GET", "/api/v1/delegations"),
        ("POST", "/api/v1/delegations"),
        ("GET", "/api/v1/delegations/x"),
        ("DELETE", "/api/v1/delegations/x"),
        ("GET", "/api/v1/delegations/x/chain"),
    ):
        response = await agentidp_client.open(path, method=method, headers=w.admin)
        assert response.status_code == 404, (method, path)
    status, body = await _exchange(agentidp_client, b, await own_token(agentidp_client, a))
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    discovery = await (
        await agentidp_client.get("/.well-known/oauth-authorization-server")
    ).get_json()
    assert TOKEN_EXCHANGE not in discovery["grant_types_supported"]
    metrics = (await (await agentidp_client.get("/metrics")).get_data()).decode()
    assert "agentidp_delegation" not in metrics
    assert "delegation" not in agentidp_idp.state
    applied = await agentidp_idp.db.fetchval(
        "SELECT COUNT(*) FROM schema_migrations WHERE migration_set = $1", "delegation"
    )
    assert applied == 0
    # The kernel's own flows are untouched.
    response = await agentidp_client.get("/api/v1/agents", headers=w.admin)
    assert response.status_code == 200
    response = await agentidp_client.get(
        "/api/v1/agents", headers=bearer(await own_token(agentidp_client, a))
    )
    assert response.status_code == 403


async def _exchange(client: Any, actor: Any, subject: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        "/api/v1/token",
        form={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": ACCESS_TOKEN_TYPE,
        },
        headers=basic(actor.client_id, actor.secret),
    )
    return response.status_code, await response.get_json()


@pytest.mark.parametrize(("enabled", "imported"), [("false", False), ("true", True)])
def test_disabled_plugin_is_never_imported(enabled, imported):
    assert (
        module_imported_by_app("agentidp_delegation", {"DELEGATION_ENABLED": enabled}) is imported
    )
