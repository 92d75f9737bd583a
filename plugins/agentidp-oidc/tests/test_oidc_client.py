"""An independent OpenID client against the provider, in process: Authlib discovers it
(Discovery §4), fetches an id_token with client_credentials and validates it (OIDC Core
§3.1.3.7: signature by the discovered JWKS, iss, aud, exp, nonce, at_hash), then calls
userinfo (§5.3). PyJWT checks the same id_token a second, unrelated way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from agentidp_server.testkit import make_agent
from authlib.common.security import generate_token
from authlib.integrations.base_client import BaseApp
from authlib.integrations.base_client.async_app import AsyncOAuth2Mixin
from authlib.integrations.base_client.async_openid import AsyncOpenIDMixin
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc.errors import InvalidClaimError, MissingClaimError
from oidc_helpers import CONFIGURATION, ENABLED, ISSUER, openid_agent, verify_with_pyjwt


class OpenIDClient(AsyncOAuth2Mixin, AsyncOpenIDMixin, BaseApp):  # type: ignore[misc]
    """Authlib's relying party (what its Starlette integration is) without a web framework:
    a machine client needs no redirect, only discovery, the token endpoint and userinfo."""

    client_cls = AsyncOAuth2Client


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return ENABLED


@pytest.fixture
async def http(agentidp_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=agentidp_app.app)
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
        yield client


def relying_party(
    agentidp_app: Any, credential: dict[str, Any], method: str = "client_secret_basic"
) -> OpenIDClient:
    return OpenIDClient(
        framework=None,
        client_id=credential["client_id"],
        client_secret=credential["client_secret"],
        # Discovery §4.1: the issuer plus /.well-known/openid-configuration.
        server_metadata_url=ISSUER + CONFIGURATION,
        client_kwargs={
            "transport": httpx.ASGITransport(app=agentidp_app.app),
            "token_endpoint_auth_method": method,
        },
    )


def validate_metadata(metadata: dict[str, Any]) -> None:
    """Authlib's Discovery §3 checks, field by field. `response_types_supported` is the
    RFC 8414 document's `[]` (no authorization endpoint), which Authlib reads as missing."""
    validated = OpenIDProviderMetadata(metadata)
    for key in validated.REGISTRY_KEYS:
        if key != "response_types_supported":
            getattr(validated, f"validate_{key}")()
    assert metadata["response_types_supported"] == []


@pytest.mark.parametrize(
    "agentidp_overrides",
    [
        {**ENABLED, "JWT_ALGORITHM": "RS256"},
        {**ENABLED, "JWT_ALGORITHM": "ES256"},
        # at_hash with EdDSA hashes with SHA-512 (Core errata); Authlib does the same.
        {**ENABLED, "JWT_ALGORITHM": "EdDSA"},
    ],
    ids=["RS256", "ES256", "EdDSA"],
)
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_discovers_validates_id_token_and_calls_userinfo(
    agentidp_app, agentidp_client, agentidp_idp, agentidp_overrides, http, method
):
    org, agent, credential, _ = await openid_agent(agentidp_client, agentidp_idp)
    rp = relying_party(agentidp_app, credential, method)

    metadata = await rp.load_server_metadata()
    assert metadata["issuer"] == ISSUER
    alg = agentidp_overrides["JWT_ALGORITHM"]
    if alg == "RS256":
        # Discovery §3: RS256 must be listed; Authlib checks it (only RS256 keys can).
        validate_metadata(metadata)
    assert metadata["id_token_signing_alg_values_supported"] == [alg]

    nonce = generate_token(20)
    token = await rp.fetch_access_token(
        grant_type="client_credentials", scope="openid read", nonce=nonce
    )
    assert token["scope"] == "openid read"
    assert "id_token" in token

    # Signature by a key of the discovered jwks_uri, iss, aud, exp, iat, nonce, at_hash.
    claims = await rp.parse_id_token(token, nonce=nonce, leeway=0)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == agent["agent_id"]
    assert claims["aud"] == credential["client_id"]
    assert claims["nonce"] == nonce
    assert claims["at_hash"]
    assert claims["name"] == agent["name"]
    assert claims["org_id"] == org["org_id"]
    assert claims["org_name"] == "Acme Robotics"

    jwks = (await http.get(metadata["jwks_uri"])).json()
    assert verify_with_pyjwt(token["id_token"], jwks, credential["client_id"]) == dict(claims)

    info = await rp.userinfo(token=token)
    # OIDC Core §5.3.2: userinfo's sub is the id_token's.
    assert info["sub"] == claims["sub"]
    assert info["name"] == agent["name"]
    assert info["owner"] == "team-robots"


async def test_authlib_refuses_a_replayed_nonce(agentidp_app, agentidp_client, agentidp_idp):
    _, _, credential, _ = await openid_agent(agentidp_client, agentidp_idp)
    rp = relying_party(agentidp_app, credential)
    token = await rp.fetch_access_token(
        grant_type="client_credentials", scope="openid", nonce="the-nonce-sent"
    )
    # OIDC Core §3.1.3.7 step 11: the nonce must be the one this client sent.
    with pytest.raises(InvalidClaimError, match="nonce"):
        await rp.parse_id_token(token, nonce="another-nonce")


async def test_authlib_refuses_an_id_token_for_another_client(
    agentidp_app, agentidp_client, agentidp_idp
):
    _, _, credential, headers = await openid_agent(agentidp_client, agentidp_idp)
    token = await relying_party(agentidp_app, credential).fetch_access_token(
        grant_type="client_credentials", scope="openid", nonce="n"
    )
    _, other = await make_agent(agentidp_client, headers, scopes=["openid"])
    # OIDC Core §3.1.3.7 steps 3-5: aud must contain this client's client_id (Authlib
    # reports it as a missing azp: a token for someone else would have to name us there).
    with pytest.raises((InvalidClaimError, MissingClaimError), match=r"aud|azp"):
        await relying_party(agentidp_app, other).parse_id_token(token, nonce="n")
