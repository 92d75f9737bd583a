"""The id_token beside an access token: its claims (OIDC Core §2, §3.1.3.6, §5.1), when
it is issued, refusals, and its counter."""

from __future__ import annotations

import base64
import hashlib
import time
from importlib.metadata import PackageNotFoundError, distribution
from typing import Any

import pytest
from agentidp_server import OAuthError
from agentidp_server.testkit import admin_headers, basic, make_agent, make_org, token
from oidc_helpers import (
    ENABLED,
    ISSUER,
    TOKEN,
    USERINFO,
    openid_agent,
    segment,
    verify_with_pyjwt,
)

from agentidp_oidc.id_token import at_hash, id_token_fields

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return ENABLED


def did_installed() -> bool:
    try:
        distribution("agentidp-did")
    except PackageNotFoundError:
        return False
    return True


async def jwks(client: Any) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/.well-known/jwks.json")).get_json()
    return body


async def test_id_token_claims(agentidp_client, agentidp_idp):
    org, agent, credential, _ = await openid_agent(
        agentidp_client, agentidp_idp, deployment_env="staging"
    )
    before = int(time.time())
    body = await token(
        agentidp_client,
        credential["client_id"],
        credential["client_secret"],
        scope="openid read",
        nonce="n-0S6_WzA2Mj",
    )
    id_token = body["id_token"]
    header = segment(id_token, 0)
    # An id_token is a plain JWT, never mistakable for an RFC 9068 access token.
    assert header["typ"] == "JWT"
    assert header["kid"] in {k["kid"] for k in (await jwks(agentidp_client))["keys"]}
    claims = verify_with_pyjwt(id_token, await jwks(agentidp_client), credential["client_id"])
    access = segment(body["access_token"], 1)
    assert claims.pop("iat") == access["iat"] >= before
    assert claims.pop("exp") == access["exp"]
    assert claims.pop("auth_time") == access["iat"]
    # OIDC Core §3.1.3.6: left half of SHA-256 of the access token, base64url (RS256).
    digest = hashlib.sha256(body["access_token"].encode()).digest()[:16]
    assert claims.pop("at_hash") == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    updated_at = claims.pop("updated_at")
    assert isinstance(updated_at, int)
    assert abs(updated_at - before) < 60
    assert claims == {
        "iss": ISSUER,
        "sub": agent["agent_id"],
        "aud": credential["client_id"],
        "nonce": "n-0S6_WzA2Mj",
        "name": "worker",
        "owner": "team-robots",
        "deployment_env": "staging",
        "org_id": org["org_id"],
        "org_name": "Acme Robotics",
    }


def test_at_hash_follows_the_alg():
    # OIDC Core §3.1.3.6's example: the hash of the JWS alg, then its left half.
    assert at_hash("token", "RS256") == at_hash("token", "ES256")
    assert len(base64.urlsafe_b64decode(at_hash("token", "RS256") + "==")) == 16
    assert len(base64.urlsafe_b64decode(at_hash("token", "EdDSA") + "==")) == 32
    assert len(base64.urlsafe_b64decode(at_hash("token", "ES384") + "==")) == 24
    with pytest.raises(ValueError, match="HS0"):
        at_hash("token", "HS0")


async def test_no_nonce_no_nonce_claim_and_no_empty_claims(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    # No owner: OIDC Core §5.3.2 leaves a claim without a value out.
    _, credential = await make_agent(agentidp_client, headers, scopes=["openid"])
    body = await token(
        agentidp_client, credential["client_id"], credential["client_secret"], scope="openid"
    )
    claims = segment(body["id_token"], 1)
    assert "nonce" not in claims
    assert "owner" not in claims
    assert None not in claims.values()


@pytest.mark.parametrize("scope", [None, "read"])
async def test_no_id_token_without_openid_in_the_request(agentidp_client, agentidp_idp, scope):
    # OIDC Core §3.1.2.1: only a request naming openid is an OpenID request; omitting
    # scope grants every allowed scope (openid too) but asks for no id_token.
    _, _, credential, _ = await openid_agent(agentidp_client, agentidp_idp)
    params = {} if scope is None else {"scope": scope}
    body = await token(
        agentidp_client, credential["client_id"], credential["client_secret"], **params
    )
    assert "id_token" not in body


async def test_openid_not_allowed_is_invalid_scope(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    _, credential = await make_agent(agentidp_client, headers, scopes=["read"])
    response = await agentidp_client.post(
        TOKEN,
        form={"grant_type": "client_credentials", "scope": "openid read"},
        headers=basic(credential["client_id"], credential["client_secret"]),
    )
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_scope"
    # The organisation's admin client is a management credential: no openid either.
    response = await agentidp_client.post(
        TOKEN,
        form={"grant_type": "client_credentials", "scope": "openid"},
        headers=basic(org["client_id"], org["client_secret"]),
    )
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_scope"


async def test_admin_client_never_gets_an_id_token(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    admin = await agentidp_idp.agents.by_client_id(org["client_id"])
    now = int(time.time())
    context = {
        "agent": admin.as_row(),  # the token_claims context holds the client's row
        "grant_type": "client_credentials",
        "params": {"grant_type": "client_credentials", "scope": "openid"},
        "claims": {
            "sub": admin.agent_id,
            "org_id": org["org_id"],
            "scope": "openid",
            "iat": now,
            "exp": now + 60,
        },
    }
    # Unreachable through the token endpoint (admins are never allowed openid): a
    # second line of defence should that ever change.
    with pytest.raises(OAuthError, match="invalid_scope"):
        await id_token_fields(agentidp_idp, context)


async def test_delegated_token_describes_its_subject(agentidp_client, agentidp_idp):
    # A token exchange (RFC 8693) token: sub is the subject A, the client is the actor B.
    _, subject, _, headers = await openid_agent(agentidp_client, agentidp_idp)
    actor, _ = await make_agent(agentidp_client, headers, name="helper", scopes=["openid"])
    actor_row = await agentidp_idp.agents.get(actor["agent_id"])
    now = int(time.time())
    access = {
        "iss": ISSUER,
        "sub": subject["agent_id"],
        "client_id": actor["client_id"],
        "org_id": subject["org_id"],
        "scope": "openid",
        "iat": now,
        "exp": now + 60,
        "act": {"sub": actor["agent_id"]},
    }
    context = {
        "agent": actor_row.as_row(),
        "grant_type": TOKEN_EXCHANGE,
        "params": {"grant_type": TOKEN_EXCHANGE, "scope": "openid"},
        "claims": access,
        "access_token": "header.payload.signature",
    }
    fields = await id_token_fields(agentidp_idp, context)
    assert fields is not None
    claims = verify_with_pyjwt(fields["id_token"], await jwks(agentidp_client), actor["client_id"])
    assert claims["sub"] == subject["agent_id"]
    assert claims["name"] == subject["name"]
    assert claims["act"] == {"sub": actor["agent_id"]}
    # The server does not know when the subject last authenticated: no auth_time.
    assert "auth_time" not in claims
    assert claims["at_hash"] == at_hash("header.payload.signature", "RS256")


async def test_counter_counts_id_tokens(agentidp_client, agentidp_idp):
    _, _, credential, _ = await openid_agent(agentidp_client, agentidp_idp)

    async def issued() -> float:
        text = (await (await agentidp_client.get("/metrics")).get_data()).decode()
        for line in text.splitlines():
            if line.startswith("agentidp_oidc_tokens_issued_total "):
                return float(line.split()[1])
        raise AssertionError("agentidp_oidc_tokens_issued_total is not exported")

    start = await issued()
    for scope in ("openid", "openid read", "read"):
        await token(
            agentidp_client, credential["client_id"], credential["client_secret"], scope=scope
        )
    assert await issued() == start + 2


@pytest.mark.skipif(not did_installed(), reason="the DID plugin is not installed")
@pytest.mark.parametrize("agentidp_overrides", [{**ENABLED, "DID_ENABLED": True}])
async def test_did_claim_when_the_did_plugin_is_on(agentidp_client, agentidp_idp):
    _, agent, credential, _ = await openid_agent(agentidp_client, agentidp_idp)
    body = await token(
        agentidp_client, credential["client_id"], credential["client_secret"], scope="openid"
    )
    did = segment(body["access_token"], 1)["did"]
    assert did.startswith("did:web:")
    assert did.endswith(agent["agent_id"])
    assert segment(body["id_token"], 1)["did"] == did
    response = await agentidp_client.get(
        USERINFO, headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert (await response.get_json())["did"] == did
    configuration = await (
        await agentidp_client.get("/.well-known/openid-configuration")
    ).get_json()
    assert "did" in configuration["claims_supported"]


async def test_no_did_claim_without_the_did_plugin(agentidp_client, agentidp_idp):
    _, _, credential, _ = await openid_agent(agentidp_client, agentidp_idp)
    body = await token(
        agentidp_client, credential["client_id"], credential["client_secret"], scope="openid"
    )
    assert "did" not in segment(body["id_token"], 1)
    configuration = await (
        await agentidp_client.get("/.well-known/openid-configuration")
    ).get_json()
    assert "did" not in configuration["claims_supported"]
