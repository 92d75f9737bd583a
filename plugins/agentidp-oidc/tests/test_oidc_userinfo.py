"""UserInfo (OIDC Core §5.3): claims for a token with `openid`, and RFC 6750 §3 errors."""

from __future__ import annotations

from typing import Any

import pytest
from agentidp_server.testkit import basic, token
from oidc_helpers import ENABLED, USERINFO, openid_agent, segment


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return ENABLED


@pytest.fixture
async def issued(agentidp_client: Any, agentidp_idp: Any) -> dict[str, Any]:
    """An OpenID token response, with the agent and credential behind it."""
    org, agent, credential, headers = await openid_agent(agentidp_client, agentidp_idp)
    body = await token(
        agentidp_client, credential["client_id"], credential["client_secret"], scope="openid read"
    )
    return {"org": org, "agent": agent, "credential": credential, "headers": headers, **body}


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def challenge(response: Any) -> str:
    value: str = response.headers["WWW-Authenticate"]
    assert value.startswith("Bearer ")
    return value


async def test_userinfo_by_header_and_by_form_body(agentidp_client, issued):
    expected = {
        "sub": issued["agent"]["agent_id"],
        "name": "worker",
        "owner": "team-robots",
        "deployment_env": "production",
        "org_id": issued["org"]["org_id"],
        "org_name": "Acme Robotics",
    }
    responses = [
        await agentidp_client.get(USERINFO, headers=bearer(issued["access_token"])),
        await agentidp_client.post(USERINFO, headers=bearer(issued["access_token"])),
        # RFC 6750 §2.2: the form-encoded body parameter of a POST.
        await agentidp_client.post(USERINFO, form={"access_token": issued["access_token"]}),
    ]
    for response in responses:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.get_json()
        assert isinstance(body.pop("updated_at"), int)
        assert body == expected


async def test_userinfo_sub_matches_the_id_token(agentidp_client, issued):
    response = await agentidp_client.get(USERINFO, headers=bearer(issued["access_token"]))
    id_claims = segment(issued["id_token"], 1)
    # OIDC Core §5.3.2: the same sub, and the same identity claims.
    for name, value in (await response.get_json()).items():
        assert id_claims[name] == value


async def test_no_token_is_401_without_error_code(agentidp_client, issued):
    for response in (
        await agentidp_client.get(USERINFO),
        await agentidp_client.post(USERINFO, form={}),
        # Another scheme is no Bearer credential at all.
        await agentidp_client.get(USERINFO, headers=basic("id", "secret")),
    ):
        assert response.status_code == 401
        # RFC 6750 §3.1: a request without credentials gets no error code.
        assert challenge(response) == 'Bearer realm="agentidp"'


@pytest.mark.parametrize(
    "value", ["not-a-token", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "a.b.c"], ids=["opaque", "hs", "abc"]
)
async def test_bad_token_is_invalid_token(agentidp_client, issued, value):
    response = await agentidp_client.get(USERINFO, headers=bearer(value))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)
    assert (await response.get_json())["error"] == "invalid_token"


async def test_tampered_token_is_invalid_token(agentidp_client, issued):
    header, payload, signature = issued["access_token"].split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    response = await agentidp_client.get(USERINFO, headers=bearer(forged))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)


async def test_id_token_is_not_an_access_token(agentidp_client, issued):
    # RFC 9068 §4: only typ at+jwt is an access token; the id_token is for the client.
    response = await agentidp_client.get(USERINFO, headers=bearer(issued["id_token"]))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)


async def test_malformed_requests_are_invalid_request(agentidp_client, issued):
    access = issued["access_token"]
    for response in (
        # RFC 6750 §2: one method per request.
        await agentidp_client.post(USERINFO, form={"access_token": access}, headers=bearer(access)),
        # §2.3 (URI query) is not offered.
        await agentidp_client.get(USERINFO, query_string={"access_token": access}),
        # §2.1: b64token syntax.
        await agentidp_client.get(USERINFO, headers={"Authorization": 'Bearer a"b c'}),
        await agentidp_client.get(USERINFO, headers={"Authorization": "Bearer "}),
    ):
        assert response.status_code == 400
        assert 'error="invalid_request"' in challenge(response)


async def test_token_without_openid_is_insufficient_scope(agentidp_client, issued):
    credential = issued["credential"]
    body = await token(
        agentidp_client, credential["client_id"], credential["client_secret"], scope="read"
    )
    response = await agentidp_client.get(USERINFO, headers=bearer(body["access_token"]))
    assert response.status_code == 403
    value = challenge(response)
    # RFC 6750 §3.1: insufficient_scope names the scope needed.
    assert 'error="insufficient_scope"' in value
    assert 'scope="openid"' in value
    # An organisation admin token never carries openid.
    response = await agentidp_client.get(USERINFO, headers=issued["headers"])
    assert response.status_code == 403


async def test_revoked_token_is_invalid_token(agentidp_client, issued):
    credential = issued["credential"]
    response = await agentidp_client.post(
        "/api/v1/token/revoke",
        form={"token": issued["access_token"]},
        headers=basic(credential["client_id"], credential["client_secret"]),
    )
    assert response.status_code == 200
    response = await agentidp_client.get(USERINFO, headers=bearer(issued["access_token"]))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)
    assert "revoked" in (await response.get_json())["error_description"]


async def test_suspended_agent_is_invalid_token(agentidp_client, issued):
    response = await agentidp_client.patch(
        f"/api/v1/agents/{issued['agent']['agent_id']}",
        json={"status": "suspended"},
        headers=issued["headers"],
    )
    assert response.status_code == 200, await response.get_json()
    response = await agentidp_client.get(USERINFO, headers=bearer(issued["access_token"]))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)


async def test_token_for_another_resource_is_invalid_token(agentidp_client, issued):
    credential = issued["credential"]
    body = await token(
        agentidp_client,
        credential["client_id"],
        credential["client_secret"],
        scope="openid",
        resource="https://api.example.com/",
    )
    # RFC 9068 §4 / RFC 8707: that token's audience is another server.
    response = await agentidp_client.get(USERINFO, headers=bearer(body["access_token"]))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)


# An hour-long window: the requests below cannot straddle two windows.
@pytest.mark.parametrize(
    "agentidp_overrides", [{**ENABLED, "RATE_LIMIT_MAX": 50, "RATE_LIMIT_WINDOW_MS": 3_600_000}]
)
async def test_userinfo_carries_the_rate_window(agentidp_client, issued):
    """UserInfo is counted like every protected route, and says so in its headers."""
    first, second = [
        await agentidp_client.get(USERINFO, headers=bearer(issued["access_token"]))
        for _ in range(2)
    ]
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "50"
    # The token request counted first; then each UserInfo call.
    assert first.headers["X-RateLimit-Remaining"] == "48"
    assert second.headers["X-RateLimit-Remaining"] == "47"
    assert first.headers["X-RateLimit-Reset"] == second.headers["X-RateLimit-Reset"]
