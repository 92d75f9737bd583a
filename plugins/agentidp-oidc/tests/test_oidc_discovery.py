"""OpenID Provider metadata (Discovery §3, §4) and the RFC 8414 fields the plugin adds."""

from __future__ import annotations

from typing import Any

import pytest
from authlib.oidc.discovery import OpenIDProviderMetadata
from oidc_helpers import CONFIGURATION, ENABLED, ISSUER, RFC8414


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return ENABLED


async def fetch(client: Any, path: str) -> dict[str, Any]:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = await response.get_json()
    return body


async def test_openid_configuration(agentidp_client):
    document = await fetch(agentidp_client, CONFIGURATION)
    # Discovery §4.3: the issuer the document was fetched for, exactly.
    assert document["issuer"] == ISSUER
    assert document["userinfo_endpoint"] == ISSUER + "/api/v1/oidc/userinfo"
    assert document["subject_types_supported"] == ["public"]
    assert "openid" in document["scopes_supported"]
    jwks = await fetch(agentidp_client, "/.well-known/jwks.json")
    algs = sorted({k["alg"] for k in jwks["keys"]})
    assert document["id_token_signing_alg_values_supported"] == algs == ["RS256"]
    for claim in ("sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash"):
        assert claim in document["claims_supported"]
    for claim in ("name", "owner", "deployment_env", "org_id", "org_name", "updated_at", "act"):
        assert claim in document["claims_supported"]
    # No browser flow: no authorization endpoint, no response type (README).
    assert "authorization_endpoint" not in document
    assert document["response_types_supported"] == []
    # Discovery §3 defaults this to true; nothing here reads request_uri.
    assert document["request_uri_parameter_supported"] is False
    assert document["request_parameter_supported"] is False
    assert document["claims_parameter_supported"] is False
    validated = OpenIDProviderMetadata(document)
    for key in validated.REGISTRY_KEYS:
        if key != "response_types_supported":  # Authlib reads [] as missing
            getattr(validated, f"validate_{key}")()


async def test_consistent_with_rfc8414(agentidp_client):
    oauth = await fetch(agentidp_client, RFC8414)
    openid = await fetch(agentidp_client, CONFIGURATION)
    # RFC 8414 §2 names these, with the OpenID fields of its registry (§7.1.2): one server,
    # one answer in both documents.
    for name, value in oauth.items():
        assert openid[name] == value, name
    for name in ("token_endpoint", "jwks_uri", "grant_types_supported"):
        assert openid[name] == oauth[name]
    assert oauth["grant_types_supported"] == ["client_credentials"]
    assert set(oauth["token_endpoint_auth_methods_supported"]) >= {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }
    assert oauth["userinfo_endpoint"] == ISSUER + "/api/v1/oidc/userinfo"
    assert "openid" in oauth["scopes_supported"]
    assert "agents:read" in oauth["scopes_supported"]


async def test_cached_like_the_rfc8414_document(agentidp_client):
    response = await agentidp_client.get(CONFIGURATION)
    oauth = await agentidp_client.get(RFC8414)
    assert response.headers["Cache-Control"] == oauth.headers["Cache-Control"]


@pytest.mark.parametrize("agentidp_overrides", [{**ENABLED, "JWT_ALGORITHM": "ES256"}])
async def test_warns_when_rs256_is_not_offered(capsys, agentidp_client):
    # OIDC Core §15.1 / Discovery §3 expect RS256; the operator is told at startup.
    document = await fetch(agentidp_client, CONFIGURATION)
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]
    # The kernel's log handler writes to stdout.
    assert "need JWT_ALGORITHM=RS256" in capsys.readouterr().out


async def test_no_warning_with_rs256(capsys, agentidp_client):
    await fetch(agentidp_client, CONFIGURATION)
    assert "JWT_ALGORITHM=RS256" not in capsys.readouterr().out
