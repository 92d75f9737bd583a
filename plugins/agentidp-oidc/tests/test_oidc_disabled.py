"""The OIDC plugin installed but disabled: nothing of it exists, on both storage backends."""

from __future__ import annotations

import json

import pytest
from agentidp_server.testkit import module_imported_by_app, token
from oidc_helpers import CONFIGURATION, ISSUER, RFC8414, USERINFO, openid_agent, segment


@pytest.mark.parametrize(
    "agentidp_overrides",
    [{"ISSUER": ISSUER}, {"ISSUER": ISSUER, "OIDC_ENABLED": False}],
    ids=["unset", "false"],
)
async def test_disabled_plugin_leaves_no_trace(agentidp_client, agentidp_idp):
    _, _, credential, _ = await openid_agent(agentidp_client, agentidp_idp)
    body = await token(
        agentidp_client,
        credential["client_id"],
        credential["client_secret"],
        scope="openid read",
        nonce="n",
    )
    # The kernel grants a scope it knows nothing about; no plugin turns it into OpenID.
    assert "id_token" not in body
    assert "openid" in segment(body["access_token"], 1)["scope"]
    for response in (
        await agentidp_client.get(CONFIGURATION),
        await agentidp_client.get(USERINFO, headers={"Authorization": "Bearer x"}),
        await agentidp_client.post(USERINFO, form={"access_token": body["access_token"]}),
    ):
        assert response.status_code == 404
    metadata = await (await agentidp_client.get(RFC8414)).get_json()
    for name in (
        "userinfo_endpoint",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
        "claims_supported",
    ):
        assert name not in metadata
    assert "openid" not in json.dumps(metadata)
    jwks = await (await agentidp_client.get("/.well-known/jwks.json")).get_json()
    assert "oidc" not in json.dumps(jwks).lower()
    metrics = (await (await agentidp_client.get("/metrics")).get_data()).decode()
    assert "agentidp_oidc" not in metrics
    assert "oidc" not in agentidp_idp.state


@pytest.mark.parametrize(("enabled", "imported"), [("false", False), ("true", True)])
def test_disabled_plugin_is_never_imported(enabled, imported):
    assert module_imported_by_app("agentidp_oidc", {"OIDC_ENABLED": enabled}) is imported
