"""Times and agent metadata out of range (issue 25 items 4 and 7): refused with a 400
before anything is written, and rows an older server stored out of range still render."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agentidp_server.testkit import admin_headers, make_agent, make_org

AGENTS = "/api/v1/agents"


def _years_ahead(years: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + years * 366 * 86400))


async def _events(idp: Any, org_id: str, action: str) -> list[dict[str, Any]]:
    return [e for e in await idp.audit.read(org_id, 0, 500) if e["action"] == action]


# --- credential expiry ---------------------------------------------------------------


@pytest.mark.parametrize(
    "expires_at", ["9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59Z", _years_ahead(101)]
)
async def test_a_far_future_credential_expiry_is_a_400(
    agentidp_client: Any, agentidp_idp: Any, expires_at: str
) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, _ = await make_agent(agentidp_client, headers)
    path = f"{AGENTS}/{agent['agent_id']}/credentials"
    before = await agentidp_client.get(path, headers=headers)
    response = await agentidp_client.post(
        path, json={"type": "client_secret", "expires_at": expires_at}, headers=headers
    )
    body = await response.get_json()
    assert response.status_code == 400, body
    assert body["code"] == "VALIDATION_ERROR"
    assert "expires_at" in body["message"], body
    assert "100 years" in body["message"], body
    after = await agentidp_client.get(path, headers=headers)
    assert (await after.get_json())["data"] == (await before.get_json())["data"]


async def test_a_credential_near_the_limit_is_accepted(
    agentidp_client: Any, agentidp_idp: Any
) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, _ = await make_agent(agentidp_client, headers)
    expires = _years_ahead(99)
    response = await agentidp_client.post(
        f"{AGENTS}/{agent['agent_id']}/credentials",
        json={"type": "client_secret", "expires_at": expires},
        headers=headers,
    )
    body = await response.get_json()
    assert response.status_code == 201, body
    assert body["expires_at"] == expires


async def test_a_stored_out_of_range_credential_expiry_renders(
    agentidp_client: Any, agentidp_idp: Any
) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, credential = await make_agent(agentidp_client, headers)
    await agentidp_idp.db.execute(
        "UPDATE credentials SET expires_at = $1 WHERE credential_id = $2",
        253_402_351_199_000,  # 9999-12-31T23:59:59-14:00, as an older server stored it
        credential["credential_id"],
    )
    response = await agentidp_client.get(
        f"{AGENTS}/{agent['agent_id']}/credentials", headers=headers
    )
    body = await response.get_json()
    assert response.status_code == 200, body
    assert [c["expires_at"] for c in body["data"]] == ["9999-12-31T23:59:59Z"]
