"""Delegation expiry times out of range: refused before anything is written, and a row
an older server stored out of range never breaks the organisation's views (issue 25 item 4)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from delegation_helpers import (
    ENABLED,
    bearer,
    exchange,
    grant,
    introspect,
    make_world,
    own_token,
)


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return dict(ENABLED)


async def _events(idp: Any, org_id: str, action: str) -> list[dict[str, Any]]:
    return [e for e in await idp.audit.read(org_id, 0, 500) if e["action"] == action]


def _years_ahead(years: int) -> str:
    return time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + years * 366 * 86400)
    ).rjust(20, "0")


@pytest.mark.parametrize(
    "expires_at",
    [
        "9999-12-31T23:59:59-14:00",  # year 10000 in UTC: committed, then a 500, before the fix
        "9999-12-31T23:59:59Z",
        _years_ahead(101),
    ],
)
async def test_a_far_future_expiry_is_refused_before_anything_is_written(
    agentidp_client: Any, agentidp_idp: Any, expires_at: str
) -> None:
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    response = await agentidp_client.post(
        "/api/v1/delegations",
        json={"delegator": a.id, "delegatee": b.id, "scopes": ["read"], "expires_at": expires_at},
        headers=w.admin,
    )
    body = await response.get_json()
    assert response.status_code == 400, body
    assert body["code"] == "VALIDATION_ERROR"
    assert "expires_at" in body["message"], body
    assert "100 years" in body["message"], body
    assert await _events(agentidp_idp, w.org["org_id"], "delegation.created") == []
    listed = await agentidp_client.get("/api/v1/delegations", headers=w.admin)
    assert listed.status_code == 200
    assert (await listed.get_json())["data"] == []


async def test_a_grant_near_the_limit_is_accepted(agentidp_client: Any, agentidp_idp: Any) -> None:
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    expires = _years_ahead(99)
    body = await grant(
        agentidp_client, w.admin, w.agents["A"], w.agents["B"], ["read"], expires_at=expires
    )
    assert body["expires_at"] == expires


@pytest.mark.parametrize("stored", [253_402_351_199_000, 2**62])  # year 10000; int64-ish
async def test_a_stored_out_of_range_expiry_breaks_no_view(
    agentidp_client: Any, agentidp_idp: Any, stored: int
) -> None:
    """As an older server would have left it: list, get, chain and revoke still answer."""
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    created = await grant(agentidp_client, w.admin, a, b, ["read"])
    delegation_id = created["delegation_id"]
    await exchange(agentidp_client, b, await own_token(agentidp_client, a, scope="read"))
    await agentidp_idp.db.execute(
        "UPDATE delegation_grants SET expires_at = $1 WHERE delegation_id = $2",
        stored,
        delegation_id,
    )
    clamped = "9999-12-31T23:59:59Z"
    path = f"/api/v1/delegations/{delegation_id}"
    for caller in (w.admin, bearer(await own_token(agentidp_client, b))):
        listed = await agentidp_client.get("/api/v1/delegations", headers=caller)
        assert listed.status_code == 200, await listed.get_json()
        (shown,) = (await listed.get_json())["data"]
        assert (shown["expires_at"], shown["status"]) == (clamped, "active")
        read = await agentidp_client.get(path, headers=caller)
        assert read.status_code == 200, await read.get_json()
        assert (await read.get_json())["expires_at"] == clamped
        chain = await agentidp_client.get(f"{path}/chain", headers=caller)
        body = await chain.get_json()
        assert chain.status_code == 200, body
        assert body["delegation"]["expires_at"] == clamped
        assert [c["active"] for c in body["chains"]] == [True]
    revoked = await agentidp_client.delete(path, headers=w.admin)
    body = await revoked.get_json()
    assert revoked.status_code == 200, body
    assert (body["status"], body["expires_at"]) == ("revoked", clamped)
    after = await agentidp_client.get(path, headers=w.admin)
    assert after.status_code == 200
    assert (await after.get_json())["status"] == "revoked"


async def test_an_actor_reactivated_in_the_same_second_acts_again(
    agentidp_client: Any, agentidp_idp: Any, agentidp_clock: Any
) -> None:
    """The actor's suspension is compared in ms too: a delegated token issued after its
    reactivation, in the same second, is active; one from before stays inactive."""
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    await grant(agentidp_client, w.admin, a, b, ["read"])
    subject = await own_token(agentidp_client, a, scope="read")
    url = f"/api/v1/agents/{b.id}"

    def iat(value: str) -> int:
        return int(json.loads(base64.urlsafe_b64decode(value.split(".")[1] + "=="))["iat"])

    # All four steps in one second, 10 ms after it begins, 100-200 ms apart.
    agentidp_clock.advance(ms=1000 - agentidp_clock.now_ms() % 1000 + 10)
    old = (await exchange(agentidp_client, b, subject))["access_token"]
    for status in ("suspended", "active"):
        agentidp_clock.advance(0.1 if status == "suspended" else 0.2)
        response = await agentidp_client.patch(url, json={"status": status}, headers=w.admin)
        assert response.status_code == 200, await response.get_json()
    agentidp_clock.advance(0.2)
    new = (await exchange(agentidp_client, b, subject))["access_token"]
    assert iat(old) == iat(new)
    assert (await introspect(agentidp_client, w.admin_client, old))["active"] is False
    assert (await introspect(agentidp_client, w.admin_client, new))["active"] is True
