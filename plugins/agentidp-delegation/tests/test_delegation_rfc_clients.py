"""An independent RFC 8693 client: Authlib performs the token exchange itself (its own
request encoding and client authentication) over httpx's ASGI transport, and PyJWT
checks the issued token against the published JWKS as a resource server would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from delegation_helpers import ACCESS_TOKEN_TYPE, ENABLED, TOKEN_EXCHANGE, grant, make_world

BASE = "http://localhost:3000"  # the default ISSUER in the test environment


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return dict(ENABLED)


@pytest.fixture
async def http(agentidp_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=agentidp_app.app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


def oauth_client(app: Any, client_id: str, secret: str, method: str) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id,
        secret,
        token_endpoint_auth_method=method,
        transport=httpx.ASGITransport(app=app.app),
        base_url=BASE,
    )


def verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    key = keys[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key=key.key, algorithms=[key.algorithm_name], audience=BASE, issuer=BASE
    )
    return claims


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_exchanges_a_to_b_to_c(
    agentidp_app, agentidp_client, agentidp_idp, http, method
):
    metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
    # RFC 8414 §2: the grant type is advertised while the plugin is on.
    assert TOKEN_EXCHANGE in metadata["grant_types_supported"]
    endpoint = metadata["token_endpoint"]
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    await grant(agentidp_client, w.admin, a, b, ["read", "write"], max_depth=1)
    await grant(agentidp_client, w.admin, b, c, ["read"])

    async with oauth_client(agentidp_app, a.client_id, a.secret, method) as client_a:
        subject = await client_a.fetch_token(endpoint, grant_type="client_credentials")
    async with oauth_client(agentidp_app, b.client_id, b.secret, method) as client_b:
        # RFC 8693 §2.1, as Authlib encodes it.
        issued = await client_b.fetch_token(
            endpoint,
            grant_type=TOKEN_EXCHANGE,
            subject_token=subject["access_token"],
            subject_token_type=ACCESS_TOKEN_TYPE,
            scope="read write",
        )
        assert issued["issued_token_type"] == ACCESS_TOKEN_TYPE
        assert issued["token_type"] == "Bearer"
        assert issued["scope"] == "read write"
    async with oauth_client(agentidp_app, c.client_id, c.secret, method) as client_c:
        deeper = await client_c.fetch_token(
            endpoint,
            grant_type=TOKEN_EXCHANGE,
            subject_token=issued["access_token"],
            subject_token_type=ACCESS_TOKEN_TYPE,
        )
        assert deeper["scope"] == "read"
        # §2.2.2 through the client: widening is refused as invalid_scope.
        with pytest.raises(OAuthError) as refused:
            await client_c.fetch_token(
                endpoint,
                grant_type=TOKEN_EXCHANGE,
                subject_token=issued["access_token"],
                subject_token_type=ACCESS_TOKEN_TYPE,
                scope="write",
            )
        assert refused.value.error == "invalid_scope"
        # RFC 7662 through the client: the nested act survives introspection.
        response = await client_c.introspect_token(
            metadata["introspection_endpoint"], token=deeper["access_token"]
        )
        seen = response.json()
        assert seen["active"] is True
        assert seen["act"] == {"sub": c.id, "act": {"sub": b.id}}

    jwks = (await http.get(metadata["jwks_uri"])).json()
    claims = verify(deeper["access_token"], jwks)
    assert claims["sub"] == a.id
    assert claims["act"] == {"sub": c.id, "act": {"sub": b.id}}
