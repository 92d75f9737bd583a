"""Tokens derived through a link die with it: revoked grants and suspended agents,
however deep in the chain (the `token_status` hook, seen at introspection)."""

from __future__ import annotations

from typing import Any

import pytest
from delegation_helpers import (
    Org,
    agentidp_overrides,  # noqa: F401 - the fixture: the plugin on
    bearer,
    exchange,
    grant,
    introspect,
    make_world,
    own_token,
    payload,
    refused,
)


async def _chain(client: Any, idp: Any) -> tuple[Org, list[dict[str, Any]], list[str]]:
    """A→B→C→D: the grants and the tokens t0 (A's own), t1 (B), t2 (C), t3 (D)."""
    w = await make_world(client, idp, "ABCD")
    a, b, c, d = (w.agents[n] for n in "ABCD")
    grants = [
        await grant(client, w.admin, a, b, ["read"], max_depth=2),
        await grant(client, w.admin, b, c, ["read"], max_depth=1),
        await grant(client, w.admin, c, d, ["read"]),
    ]
    tokens = [await own_token(client, a)]
    for actor in (b, c, d):
        tokens.append((await exchange(client, actor, tokens[-1]))["access_token"])
    for t in tokens:
        assert (await introspect(client, a, t))["active"] is True
    return w, grants, tokens


async def _active(client: Any, w: Org, tokens: list[str]) -> list[bool]:
    return [bool((await introspect(client, w.admin_client, t))["active"]) for t in tokens]


async def test_revoking_a_to_b_makes_c_and_d_tokens_inactive(agentidp_client, agentidp_idp):
    w, grants, tokens = await _chain(agentidp_client, agentidp_idp)
    response = await agentidp_client.delete(
        f"/api/v1/delegations/{grants[0]['delegation_id']}", headers=w.admin
    )
    assert response.status_code == 200
    # A's own token lives on; everything derived through A→B is inactive, however deep.
    assert await _active(agentidp_client, w, tokens) == [True, False, False, False]
    # RFC 7662 §2.2: an inactive token is just {"active": false}, no claims.
    assert await introspect(agentidp_client, w.agents["A"], tokens[2]) == {"active": False}


async def test_revoking_a_middle_link_spares_the_tokens_above_it(agentidp_client, agentidp_idp):
    w, grants, tokens = await _chain(agentidp_client, agentidp_idp)
    await agentidp_client.delete(
        f"/api/v1/delegations/{grants[1]['delegation_id']}", headers=w.admin
    )
    assert await _active(agentidp_client, w, tokens) == [True, True, False, False]
    # The dead token cannot be exchanged onward either.
    d = w.agents["D"]
    assert await refused(agentidp_client, d, tokens[2]) == "invalid_grant"


@pytest.mark.parametrize(
    ("suspended", "expected"),
    [
        ("A", [False, False, False, False]),
        ("B", [True, False, False, False]),
        ("C", [True, True, False, False]),
        ("D", [True, True, True, False]),
    ],
)
async def test_suspending_an_agent_in_the_chain(agentidp_client, agentidp_idp, suspended, expected):
    w, _, tokens = await _chain(agentidp_client, agentidp_idp)
    response = await agentidp_client.patch(
        f"/api/v1/agents/{w.agents[suspended].id}", json={"status": "suspended"}, headers=w.admin
    )
    assert response.status_code == 200
    assert await _active(agentidp_client, w, tokens) == expected
    # Reactivation does not revive tokens issued before the suspension (as for `sub`).
    response = await agentidp_client.patch(
        f"/api/v1/agents/{w.agents[suspended].id}", json={"status": "active"}, headers=w.admin
    )
    assert response.status_code == 200
    assert await _active(agentidp_client, w, tokens) == expected


async def test_decommissioned_actor_ends_the_chain(agentidp_client, agentidp_idp):
    w, _, tokens = await _chain(agentidp_client, agentidp_idp)
    response = await agentidp_client.delete(f"/api/v1/agents/{w.agents['C'].id}", headers=w.admin)
    assert response.status_code in (200, 204)
    assert await _active(agentidp_client, w, tokens) == [True, True, False, False]


async def test_a_dead_delegated_token_is_refused_by_the_management_api(
    agentidp_client, agentidp_idp
):
    # Every verification path consults token_status, not only introspection.
    w, grants, tokens = await _chain(agentidp_client, agentidp_idp)
    await agentidp_client.delete(
        f"/api/v1/delegations/{grants[0]['delegation_id']}", headers=w.admin
    )
    response = await agentidp_client.get("/api/v1/delegations", headers=bearer(tokens[1]))
    assert response.status_code == 401
    assert "revoked delegation" in (await response.get_json())["message"]


async def test_forged_chain_claims_are_inactive(agentidp_client, agentidp_idp):
    # A token whose private claim disagrees with its grants is never active.
    w, _, tokens = await _chain(agentidp_client, agentidp_idp)
    a, b = w.agents["A"], w.agents["B"]
    claims = payload(tokens[1])

    async def minted(extra: dict[str, Any]) -> str:
        token, _ = await agentidp_idp.tokens.mint(
            agent=a.agent,
            credential_id=b.credential["credential_id"],
            client_id=b.client_id,
            scopes=["read"],
            audience=agentidp_idp.tokens.default_audience(),
            grant_type="test",
            extra=extra,
        )
        return str(token)

    wrong_actor = await minted({"act": {"sub": w.agents["C"].id}, **_chain_claim(claims)})
    unknown_grant = await minted({"act": claims["act"], "delegation_chain": ["nope"]})
    too_short = await minted(
        {"act": {"sub": b.id, "act": {"sub": w.agents["C"].id}}, **_chain_claim(claims)}
    )
    for token in (wrong_actor, unknown_grant, too_short):
        assert (await introspect(agentidp_client, a, token))["active"] is False


def _chain_claim(claims: dict[str, Any]) -> dict[str, Any]:
    return {"delegation_chain": claims["delegation_chain"]}
