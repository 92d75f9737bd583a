"""The client credentials flow end to end, on both storage adapters."""

from __future__ import annotations

import base64
import json
import time

from agentidp_server.testkit import admin_headers, basic, make_agent, make_org, token


async def test_admin_registers_agent_which_gets_a_token(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, credential = await make_agent(agentidp_client, headers)
    assert credential["client_id"] == agent["client_id"]
    body = await token(agentidp_client, credential["client_id"], credential["client_secret"])
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read write"
    assert body["expires_in"] == 900
    header = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[0] + "=="))
    assert header["typ"] == "at+jwt"
    claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
    assert claims["sub"] == agent["agent_id"]
    assert claims["org_id"] == org["org_id"]
    assert claims["client_id"] == agent["client_id"]
    assert claims["exp"] - claims["iat"] == 900
    assert claims["iat"] <= time.time() + 1


async def test_unknown_client_and_wrong_secret_answer_identically(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    form = {"grant_type": "client_credentials"}
    wrong = await agentidp_client.post(
        "/api/v1/token", form=form, headers=basic(org["client_id"], "not-the-secret")
    )
    unknown = await agentidp_client.post(
        "/api/v1/token", form=form, headers=basic("no-such-client", "whatever")
    )
    assert wrong.status_code == unknown.status_code == 401
    assert await wrong.get_data() == await unknown.get_data()
    assert (await wrong.get_json())["error"] == "invalid_client"
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]


async def test_openapi_describes_management_and_oauth(agentidp_client, agentidp_idp):
    response = await agentidp_client.get("/openapi.json")
    assert response.status_code == 200
    document = await response.get_json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for path in (
        "/api/v1/agents",
        "/api/v1/agents/{agent_id}",
        "/api/v1/agents/{agent_id}/credentials",
        "/api/v1/token",
        "/api/v1/token/introspect",
        "/api/v1/token/revoke",
    ):
        assert path in paths, path
    create = paths["/api/v1/agents"]["post"]["requestBody"]["content"]["application/json"]
    assert "schema" in create
    token_body = paths["/api/v1/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in token_body
    assert (await agentidp_client.get("/docs")).status_code == 200


async def test_agent_body_is_validated_from_the_model(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    response = await agentidp_client.post(
        "/api/v1/agents",
        json={"name": "x", "deployment_env": "prod", "scopes": ["bad scope"], "extra": 1},
        headers=headers,
    )
    body = await response.get_json()
    assert response.status_code == 400
    assert body["code"] == "VALIDATION_ERROR"
    assert "scopes" in body["message"]
    assert "extra" in body["message"]


async def test_reactivating_a_suspended_agent_does_not_revive_old_tokens(
    agentidp_client, agentidp_idp
):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, credential = await make_agent(agentidp_client, headers)
    old = await token(agentidp_client, credential["client_id"], credential["client_secret"])
    url = f"/api/v1/agents/{agent['agent_id']}"
    assert (
        await agentidp_client.patch(url, json={"status": "suspended"}, headers=headers)
    ).status_code == 200
    assert (
        await agentidp_client.patch(url, json={"status": "active"}, headers=headers)
    ).status_code == 200
    new = await token(agentidp_client, credential["client_id"], credential["client_secret"])

    async def active(value: str) -> bool:
        response = await agentidp_client.post(
            "/api/v1/token/introspect",
            form={"token": value},
            headers=basic(org["client_id"], org["client_secret"]),
        )
        return bool((await response.get_json())["active"])

    assert await active(old["access_token"]) is False
    assert await active(new["access_token"]) is True


async def test_a_token_issued_in_the_second_of_a_reactivation_is_active(
    agentidp_client, agentidp_idp, clock
):
    """Suspend at t, reactivate at t+0.3 s, token at t+0.5 s: active; a token issued
    before the suspension in that same second stays inactive (issue 25 item 7)."""
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, credential = await make_agent(agentidp_client, headers)
    url = f"/api/v1/agents/{agent['agent_id']}"
    cid, secret = credential["client_id"], credential["client_secret"]

    async def active(value: str) -> bool:
        response = await agentidp_client.post(
            "/api/v1/token/introspect",
            form={"token": value},
            headers=basic(org["client_id"], org["client_secret"]),
        )
        return bool((await response.get_json())["active"])

    def iat(value: str) -> int:
        return int(json.loads(base64.urlsafe_b64decode(value.split(".")[1] + "=="))["iat"])

    # All four steps in one second, 10 ms after it begins.
    clock.advance(ms=1000 - clock.now_ms() % 1000 + 10)
    old = (await token(agentidp_client, cid, secret))["access_token"]
    for status in ("suspended", "active"):
        clock.advance(0.1 if status == "suspended" else 0.2)
        response = await agentidp_client.patch(url, json={"status": status}, headers=headers)
        assert response.status_code == 200, await response.get_json()
    clock.advance(0.2)
    new = (await token(agentidp_client, cid, secret))["access_token"]
    assert iat(old) == iat(new)
    assert await active(old) is False
    assert await active(new) is True


async def test_a_cutoff_in_seconds_from_an_older_worker_still_suspends(
    agentidp_client, agentidp_idp
):
    """A worker from before migration 0007, still running in a rolling upgrade, writes
    tokens_valid_after in seconds: read as ms (1970) it would lift the suspension."""
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, credential = await make_agent(agentidp_client, headers)
    issued = (await token(agentidp_client, credential["client_id"], credential["client_secret"]))[
        "access_token"
    ]
    await agentidp_idp.db.execute(
        "UPDATE agents SET tokens_valid_after = $1 WHERE agent_id = $2",
        int(time.time()) + 1,
        agent["agent_id"],
    )
    response = await agentidp_client.post(
        "/api/v1/token/introspect",
        form={"token": issued},
        headers=basic(org["client_id"], org["client_secret"]),
    )
    assert (await response.get_json())["active"] is False
