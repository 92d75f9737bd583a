"""Third-party OAuth clients against the server, in process: Authlib speaks to it
over httpx's ASGI transport and PyJWT (not joserfc, which the server uses) checks
its access tokens against the published JWKS."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from joserfc import jwk, jws

from agentidp_server.testkit import admin_headers, make_agent, make_org

BASE = "http://localhost:3000"  # the default ISSUER in the test environment


@pytest.fixture
async def http(agentidp_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=agentidp_app.app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


@pytest.fixture
async def metadata(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    data: dict[str, Any] = response.json()
    return data


def oauth_client(agentidp_app: Any, client_id: str, secret: Any, method: str) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id,
        secret,
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
        transport=httpx.ASGITransport(app=agentidp_app.app),
        base_url=BASE,
    )


def verify_with_pyjwt(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    """What an independent resource server does with an RFC 9068 access token."""
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    key = keys[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key=key.key,
        algorithms=[key.algorithm_name],
        audience=audience,
        issuer=BASE,
        options={"require": ["exp", "iss", "aud", "sub", "iat", "jti"]},
    )
    return claims


async def test_discovery_metadata_is_valid_rfc8414(metadata):
    assert metadata["issuer"] == BASE
    validated = AuthorizationServerMetadata(metadata)
    # Authlib treats an empty response_types_supported as missing. RFC 8414 §2 only
    # requires a JSON array, and this server has no authorization endpoint, so it
    # supports no response type: an empty array is the truthful answer.
    assert metadata["response_types_supported"] == []
    for key in validated.REGISTRY_KEYS:
        if key != "response_types_supported":
            getattr(validated, f"validate_{key}")()
    assert "authorization_endpoint" not in metadata
    assert metadata["grant_types_supported"] == ["client_credentials"]
    for method in ("client_secret_basic", "client_secret_post", "private_key_jwt"):
        assert method in metadata["token_endpoint_auth_methods_supported"]
        assert method in metadata["introspection_endpoint_auth_methods_supported"]
        assert method in metadata["revocation_endpoint_auth_methods_supported"]
    assert "none" not in metadata["token_endpoint_auth_signing_alg_values_supported"]
    for endpoint in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        assert metadata[endpoint].startswith(BASE + "/")


async def _lifecycle(
    client: AsyncOAuth2Client,
    http: httpx.AsyncClient,
    metadata: dict[str, Any],
    agent: dict[str, Any],
) -> None:
    token = await client.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "read write"
    access = token["access_token"]

    jwks = (await http.get(metadata["jwks_uri"])).json()
    claims = verify_with_pyjwt(access, jwks, audience=BASE)
    assert claims["sub"] == agent["agent_id"]
    assert claims["client_id"] == agent["client_id"]

    response = await client.introspect_token(
        metadata["introspection_endpoint"], token=access, token_type_hint="access_token"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["active"] is True
    assert body["sub"] == agent["agent_id"]
    assert body["client_id"] == agent["client_id"]
    assert body["scope"] == "read write"

    response = await client.revoke_token(
        metadata["revocation_endpoint"], token=access, token_type_hint="access_token"
    )
    assert response.status_code == 200

    response = await client.introspect_token(metadata["introspection_endpoint"], token=access)
    assert response.status_code == 200
    assert response.json() == {"active": False}


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_with_client_secret(
    agentidp_app, agentidp_client, agentidp_idp, http, metadata, method
):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, credential = await make_agent(agentidp_client, headers)
    async with oauth_client(
        agentidp_app, credential["client_id"], credential["client_secret"], method
    ) as client:
        await _lifecycle(client, http, metadata, agent)


def _private_key(alg: str) -> Any:
    if alg == "RS256":
        return jwk.RSAKey.generate_key(2048, private=True)
    if alg == "ES256":
        return jwk.ECKey.generate_key("P-256", private=True)
    return jwk.OKPKey.generate_key("Ed25519", private=True)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_authlib_with_private_key_jwt(
    agentidp_app, agentidp_client, agentidp_idp, http, metadata, alg
):
    agent, key = await _key_client(agentidp_app, agentidp_client, agentidp_idp, alg)
    client = oauth_client(agentidp_app, agent["client_id"], key, "private_key_jwt")
    # No fixed endpoint: each assertion's `aud` is the endpoint it is sent to.
    client.register_client_auth_method(PrivateKeyJWT(alg=alg))
    async with client:
        await _lifecycle(client, http, metadata, agent)


async def test_pyjwt_rejects_a_token_for_another_audience(
    agentidp_app, agentidp_client, agentidp_idp, http, metadata
):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    _, credential = await make_agent(agentidp_client, headers)
    async with oauth_client(
        agentidp_app, credential["client_id"], credential["client_secret"], "client_secret_basic"
    ) as client:
        token = await client.fetch_token(
            metadata["token_endpoint"],
            grant_type="client_credentials",
            resource="https://api.example.com/",
            scope="read",
        )
    assert token["scope"] == "read"
    jwks = (await http.get(metadata["jwks_uri"])).json()
    claims = verify_with_pyjwt(token["access_token"], jwks, audience="https://api.example.com/")
    assert claims["aud"] == "https://api.example.com/"
    with pytest.raises(jwt.InvalidAudienceError):
        verify_with_pyjwt(token["access_token"], jwks, audience=BASE)


async def _key_client(
    agentidp_app: Any, agentidp_client: Any, agentidp_idp: Any, alg: str
) -> tuple[dict[str, Any], Any]:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, _ = await make_agent(agentidp_client, headers)
    key = _private_key(alg)
    response = await agentidp_client.post(
        f"/api/v1/agents/{agent['agent_id']}/credentials",
        json={"type": "private_key_jwt", "jwk": dict(key.as_dict(private=False))},
        headers=headers,
    )
    created = await response.get_json()
    assert response.status_code == 201, created
    assert "d" not in created["jwk"]  # the private member is never echoed
    return agent, key


@pytest.mark.parametrize("audience", ["token_endpoint", "issuer"])
async def test_authlib_private_key_jwt_with_one_audience_everywhere(
    agentidp_app, agentidp_client, agentidp_idp, http, metadata, audience
):
    """RFC 7523 §3: `PrivateKeyJWT(token_endpoint)` puts the token endpoint's URL in
    every assertion's `aud`, also at introspection and revocation."""
    agent, key = await _key_client(agentidp_app, agentidp_client, agentidp_idp, "ES256")
    client = oauth_client(agentidp_app, agent["client_id"], key, "private_key_jwt")
    aud = metadata["token_endpoint"] if audience == "token_endpoint" else metadata["issuer"]
    client.register_client_auth_method(PrivateKeyJWT(aud, alg="ES256"))
    async with client:
        await _lifecycle(client, http, metadata, agent)


async def test_private_key_jwt_for_another_endpoint_is_refused(
    agentidp_app, agentidp_client, agentidp_idp, http, metadata
):
    agent, key = await _key_client(agentidp_app, agentidp_client, agentidp_idp, "ES256")
    client = oauth_client(agentidp_app, agent["client_id"], key, "private_key_jwt")
    # The revocation endpoint's URL is not an audience of the introspection endpoint.
    client.register_client_auth_method(PrivateKeyJWT(metadata["revocation_endpoint"], alg="ES256"))
    async with client:
        response = await client.introspect_token(
            metadata["introspection_endpoint"], token="anything"
        )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
async def test_assertion_with_a_non_finite_exp_is_invalid_client(
    agentidp_app, agentidp_client, agentidp_idp, http, metadata, exp
):
    """Python's json reads NaN and Infinity; such an `exp` is refused, not a 500."""
    agent, key = await _key_client(agentidp_app, agentidp_client, agentidp_idp, "ES256")
    client_id = agent["client_id"]
    payload = (
        f'{{"iss": "{client_id}", "sub": "{client_id}", "aud": "{metadata["token_endpoint"]}",'
        f' "jti": "{uuid.uuid4()}", "iat": {int(time.time())}, "exp": {exp}}}'
    )
    assertion = jws.serialize_compact({"alg": "ES256"}, payload.encode(), key)
    response = await http.post(
        metadata["token_endpoint"],
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
