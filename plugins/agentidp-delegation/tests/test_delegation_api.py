"""`/api/v1/delegations`: who may grant what, validation, tenancy, listing, revocation,
the audit trail and the chain view."""

from __future__ import annotations

import time
from typing import Any

import pytest
from delegation_helpers import (
    ENABLED,
    bearer,
    exchange,
    grant,
    make_world,
    own_token,
)


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return dict(ENABLED)


async def _post(client: Any, headers: dict[str, str], body: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post("/api/v1/delegations", json=body, headers=headers)
    return response.status_code, await response.get_json()


async def _events(idp: Any, org_id: str, action: str) -> list[dict[str, Any]]:
    return [e for e in await idp.audit.read(org_id, 0, 500) if e["action"] == action]


async def test_admin_grants_and_the_grant_is_audited(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    body = await grant(
        agentidp_client,
        w.admin,
        a,
        b,
        ["write", "read"],
        audience="https://api.example.com",
        expires_at=expires,
        max_depth=1,
    )
    assert body["delegator"] == a.id
    assert body["delegatee"] == b.id
    assert body["scopes"] == ["read", "write"]
    assert body["audience"] == "https://api.example.com"
    assert body["expires_at"] == expires
    assert body["max_depth"] == 1
    assert body["status"] == "active"
    assert body["org_id"] == w.org["org_id"]
    (event,) = await _events(agentidp_idp, w.org["org_id"], "delegation.created")
    assert event["target_id"] == body["delegation_id"]
    assert event["details"]["delegatee"] == b.id
    assert event["details"]["scopes"] == ["read", "write"]


async def test_the_delegator_grants_with_its_own_token(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    headers = bearer(await own_token(agentidp_client, a, scope="read"))
    status, body = await _post(
        agentidp_client, headers, {"delegator": a.id, "delegatee": b.id, "scopes": ["read"]}
    )
    assert status == 201, body
    assert body["created_by"] == a.id
    # No more than the token it grants with carries.
    status, body = await _post(
        agentidp_client, headers, {"delegator": a.id, "delegatee": b.id, "scopes": ["write"]}
    )
    assert (status, body["code"]) == (400, "VALIDATION_ERROR")
    # Another agent's authority is not the caller's to give.
    status, body = await _post(
        agentidp_client, headers, {"delegator": c.id, "delegatee": b.id, "scopes": ["read"]}
    )
    assert (status, body["code"]) == (403, "FORBIDDEN")


async def test_a_grant_gives_only_what_the_delegator_holds(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB", scopes=["read"])
    a, b = w.agents["A"], w.agents["B"]
    status, body = await _post(
        agentidp_client, w.admin, {"delegator": a.id, "delegatee": b.id, "scopes": ["write"]}
    )
    assert (status, body["code"]) == (400, "VALIDATION_ERROR")
    assert "not held by the delegator: write" in body["message"]


async def test_a_delegated_token_manages_no_delegations(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    await grant(agentidp_client, w.admin, a, b, ["read", "write"])
    delegated = (await exchange(agentidp_client, b, await own_token(agentidp_client, a)))[
        "access_token"
    ]
    # Its `sub` is A, but B must not re-grant A's authority through it.
    status, body = await _post(
        agentidp_client,
        bearer(delegated),
        {"delegator": a.id, "delegatee": c.id, "scopes": ["read"]},
    )
    assert (status, body["code"]) == (403, "FORBIDDEN")
    response = await agentidp_client.get("/api/v1/delegations", headers=bearer(delegated))
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"delegator": "x", "delegatee": "y", "scopes": ["read"], "extra": 1}, "unknown field"),
        ({"delegatee": "y", "scopes": ["read"]}, "delegator must be"),
        ({"delegator": "x", "delegatee": "x", "scopes": ["read"]}, "itself"),
        ({"delegator": "x", "delegatee": "y", "scopes": []}, "scopes must be"),
        ({"delegator": "x", "delegatee": "y", "scopes": ["bad scope"]}, "scopes must be"),
        ({"delegator": "x", "delegatee": "y", "scopes": "read"}, "scopes must be"),
        ({"delegator": "x", "delegatee": "y", "scopes": ["read"], "audience": ""}, "audience"),
        ({"delegator": "x", "delegatee": "y", "scopes": ["r"], "max_depth": -1}, "max_depth"),
        ({"delegator": "x", "delegatee": "y", "scopes": ["r"], "max_depth": True}, "max_depth"),
        ({"delegator": "x", "delegatee": "y", "scopes": ["r"], "max_depth": "1"}, "max_depth"),
        ({"delegator": "x", "delegatee": "y", "scopes": ["r"], "expires_at": 5}, "expires_at"),
        ({"delegator": "x", "delegatee": "y", "scopes": ["r"], "expires_at": "soon"}, "expires_at"),
        (
            {"delegator": "x", "delegatee": "y", "scopes": ["r"], "expires_at": "2030-01-01T00:00"},
            "UTC offset",
        ),
        (
            {
                "delegator": "x",
                "delegatee": "y",
                "scopes": ["r"],
                "expires_at": "2001-01-01T00:00Z",
            },
            "future",
        ),
    ],
)
async def test_bad_input_is_400_with_a_clear_message(agentidp_client, agentidp_idp, body, message):
    w = await make_world(agentidp_client, agentidp_idp, "")
    status, answer = await _post(agentidp_client, w.admin, body)
    assert status == 400, answer
    assert answer["code"] == "VALIDATION_ERROR"
    assert message in answer["message"]
    assert "request_id" in answer


async def test_a_body_that_is_not_json_is_400(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "")
    response = await agentidp_client.post(
        "/api/v1/delegations",
        data=b"\xff\xfe not json",
        headers={**w.admin, "Content-Type": "application/json"},
    )
    assert response.status_code == 400


async def test_unknown_and_foreign_agents_are_404_and_suspended_409(agentidp_client, agentidp_idp):
    here = await make_world(agentidp_client, agentidp_idp, "AB")
    there = await make_world(agentidp_client, agentidp_idp, "A")
    a, b = here.agents["A"], here.agents["B"]
    for delegatee in (there.agents["A"].id, "no-such-agent"):
        status, body = await _post(
            agentidp_client,
            here.admin,
            {"delegator": a.id, "delegatee": delegatee, "scopes": ["read"]},
        )
        assert (status, body["code"]) == (404, "NOT_FOUND")
    await agentidp_client.patch(
        f"/api/v1/agents/{b.id}", json={"status": "suspended"}, headers=here.admin
    )
    status, body = await _post(
        agentidp_client, here.admin, {"delegator": a.id, "delegatee": b.id, "scopes": ["read"]}
    )
    assert (status, body["code"]) == (409, "CONFLICT")


async def test_the_api_needs_a_token(agentidp_client, agentidp_idp):
    assert (await agentidp_client.get("/api/v1/delegations")).status_code == 401
    response = await agentidp_client.post("/api/v1/delegations", json={})
    assert response.status_code == 401


async def test_listing_is_paginated_and_scoped(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABCD")
    a, b, c, d = (w.agents[n] for n in "ABCD")
    made = [
        await grant(agentidp_client, w.admin, a, b, ["read"]),
        await grant(agentidp_client, w.admin, a, c, ["read"]),
        await grant(agentidp_client, w.admin, b, c, ["read"]),
        await grant(agentidp_client, w.admin, c, d, ["read"]),
        await grant(agentidp_client, w.admin, a, d, ["write"]),
    ]
    other = await make_world(agentidp_client, agentidp_idp, "AB")
    await grant(agentidp_client, other.admin, other.agents["A"], other.agents["B"], ["read"])
    seen: list[str] = []
    url = "/api/v1/delegations?limit=2"
    while True:
        response = await agentidp_client.get(url, headers=w.admin)
        page = await response.get_json()
        assert response.status_code == 200, page
        assert len(page["data"]) <= 2
        seen += [g["delegation_id"] for g in page["data"]]
        if page["next_cursor"] is None:
            break
        url = f"/api/v1/delegations?limit=2&cursor={page['next_cursor']}"
    # The organisation's own only, each once, in creation order.
    assert seen == [g["delegation_id"] for g in made]
    # An agent sees the grants it is a party to.
    response = await agentidp_client.get(
        "/api/v1/delegations", headers=bearer(await own_token(agentidp_client, b))
    )
    mine = {g["delegation_id"] for g in (await response.get_json())["data"]}
    assert mine == {made[0]["delegation_id"], made[2]["delegation_id"]}
    response = await agentidp_client.get(f"/api/v1/delegations?delegatee={d.id}", headers=w.admin)
    assert [g["delegation_id"] for g in (await response.get_json())["data"]] == [
        made[3]["delegation_id"],
        made[4]["delegation_id"],
    ]
    for query in ("limit=0", "limit=x", "cursor=!!!", "status=maybe"):
        response = await agentidp_client.get(f"/api/v1/delegations?{query}", headers=w.admin)
        assert response.status_code == 400, query
        assert (await response.get_json())["code"] == "VALIDATION_ERROR"


async def test_another_organisations_grant_is_404(agentidp_client, agentidp_idp):
    here = await make_world(agentidp_client, agentidp_idp, "ACD")
    there = await make_world(agentidp_client, agentidp_idp, "AB")
    theirs = await grant(
        agentidp_client, there.admin, there.agents["A"], there.agents["B"], ["read"]
    )
    path = f"/api/v1/delegations/{theirs['delegation_id']}"
    for method in ("GET", "DELETE"):
        response = await agentidp_client.open(path, method=method, headers=here.admin)
        assert response.status_code == 404
        assert (await response.get_json())["code"] == "NOT_FOUND"
    response = await agentidp_client.get(path + "/chain", headers=here.admin)
    assert response.status_code == 404
    # Same organisation, not a party: as good as absent.
    ours = await grant(agentidp_client, here.admin, here.agents["A"], here.agents["C"], ["read"])
    outsider = bearer(await own_token(agentidp_client, here.agents["D"]))
    response = await agentidp_client.get(
        f"/api/v1/delegations/{ours['delegation_id']}", headers=outsider
    )
    assert response.status_code == 404


async def test_a_party_reads_and_revokes(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    g = await grant(agentidp_client, w.admin, a, b, ["read"])
    path = f"/api/v1/delegations/{g['delegation_id']}"
    response = await agentidp_client.get(path, headers=bearer(await own_token(agentidp_client, b)))
    assert (await response.get_json())["delegation_id"] == g["delegation_id"]
    response = await agentidp_client.delete(
        path, headers=bearer(await own_token(agentidp_client, c))
    )
    assert response.status_code == 404
    response = await agentidp_client.delete(
        path, headers=bearer(await own_token(agentidp_client, a))
    )
    body = await response.get_json()
    assert response.status_code == 200
    assert body["status"] == "revoked"
    assert body["revoked_at"] is not None
    response = await agentidp_client.delete(path, headers=w.admin)
    assert (response.status_code, (await response.get_json())["code"]) == (409, "CONFLICT")
    (event,) = await _events(agentidp_idp, w.org["org_id"], "delegation.revoked")
    assert event["target_id"] == g["delegation_id"]
    assert event["actor_agent_id"] == a.id
    response = await agentidp_client.get("/api/v1/delegations?status=revoked", headers=w.admin)
    assert [x["delegation_id"] for x in (await response.get_json())["data"]] == [g["delegation_id"]]


async def test_chain_view_shows_every_hop(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    g1 = await grant(agentidp_client, w.admin, a, b, ["read", "write"], max_depth=1)
    g2 = await grant(agentidp_client, w.admin, b, c, ["read"])
    path = f"/api/v1/delegations/{g1['delegation_id']}/chain"
    response = await agentidp_client.get(path, headers=w.admin)
    assert (await response.get_json())["chains"] == []
    t1 = (await exchange(agentidp_client, b, await own_token(agentidp_client, a)))["access_token"]
    await exchange(agentidp_client, c, t1)
    await exchange(agentidp_client, c, t1)  # the same chain again: recorded once
    response = await agentidp_client.get(path, headers=w.admin)
    body = await response.get_json()
    assert response.status_code == 200
    assert body["delegation"]["delegation_id"] == g1["delegation_id"]
    chains = sorted(body["chains"], key=lambda ch: ch["depth"])
    assert [ch["depth"] for ch in chains] == [1, 2]
    deep = chains[1]
    assert deep["subject"] == a.id
    assert deep["active"] is True
    assert [(h["delegator"], h["delegatee"]) for h in deep["links"]] == [
        (a.id, b.id),
        (b.id, c.id),
    ]
    assert [h["delegation_id"] for h in deep["links"]] == [g1["delegation_id"], g2["delegation_id"]]
    # The delegatee at the end of the chain sees it from its own grant.
    response = await agentidp_client.get(
        f"/api/v1/delegations/{g2['delegation_id']}/chain",
        headers=bearer(await own_token(agentidp_client, c)),
    )
    (only,) = (await response.get_json())["chains"]
    assert only["chain_id"] == deep["chain_id"]
    await agentidp_client.delete(f"/api/v1/delegations/{g2['delegation_id']}", headers=w.admin)
    body = await (await agentidp_client.get(path, headers=w.admin)).get_json()
    by_depth = {ch["depth"]: ch for ch in body["chains"]}
    assert by_depth[1]["active"] is True
    assert by_depth[2]["active"] is False
    assert by_depth[2]["links"][1]["status"] == "revoked"
