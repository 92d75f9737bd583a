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


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        (253_402_351_199_000, "9999-12-31T23:59:59Z"),  # 9999-12-31T23:59:59-14:00
        (-(2**62), "0001-01-01T00:00:00Z"),
    ],
)
async def test_a_stored_out_of_range_credential_expiry_renders(
    agentidp_client: Any, agentidp_idp: Any, stored: int, shown: str
) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, credential = await make_agent(agentidp_client, headers)
    await agentidp_idp.db.execute(
        "UPDATE credentials SET expires_at = $1 WHERE credential_id = $2",
        stored,  # as an older server could have stored it
        credential["credential_id"],
    )
    response = await agentidp_client.get(
        f"{AGENTS}/{agent['agent_id']}/credentials", headers=headers
    )
    body = await response.get_json()
    assert response.status_code == 200, body
    assert [c["expires_at"] for c in body["data"]] == [shown]


# --- agent metadata -------------------------------------------------------------------


async def _post_raw(client: Any, headers: dict[str, str], text: str) -> Any:
    return await client.post(
        AGENTS, data=text, headers={**headers, "Content-Type": "application/json"}
    )


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_metadata_with_nan_or_infinity_is_a_400(
    agentidp_client: Any, agentidp_idp: Any, literal: str
) -> None:
    """Python's json reads these non-standard literals; they would come back as invalid JSON."""
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    text = f'{{"name": "n", "deployment_env": "prod", "metadata": {{"a": [1, {literal}]}}}}'
    response = await _post_raw(agentidp_client, headers, text)
    body = await response.get_json()
    assert response.status_code == 400, body
    assert body["code"] == "VALIDATION_ERROR"
    assert "NaN or Infinity" in body["message"], body
    agent, _ = await make_agent(agentidp_client, headers)
    patched = await agentidp_client.patch(
        f"{AGENTS}/{agent['agent_id']}",
        data=f'{{"metadata": {{"x": {literal}}}}}',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert patched.status_code == 400, await patched.get_json()
    assert await _events(agentidp_idp, org["org_id"], "agent.changed") == []
    listed = await agentidp_client.get(AGENTS, headers=headers)
    assert [a["metadata"] for a in (await listed.get_json())["data"]] == [{}]


async def test_metadata_size_is_capped(agentidp_client: Any, agentidp_idp: Any) -> None:
    from agentidp_server.directory.agents import METADATA_MAX_BYTES

    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    # {"k":"<filler>"} is 8 bytes around the filler.
    at_limit = {"k": "é" * ((METADATA_MAX_BYTES - 8) // 2)}
    agent, _ = await make_agent(agentidp_client, headers, metadata=at_limit)
    assert agent["metadata"] == at_limit
    over = {"k": "x" * (METADATA_MAX_BYTES - 7)}
    response = await agentidp_client.post(
        AGENTS, json={"name": "n", "deployment_env": "prod", "metadata": over}, headers=headers
    )
    body = await response.get_json()
    assert response.status_code == 400, body
    assert body["code"] == "VALIDATION_ERROR"
    assert "16 KiB" in body["message"], body
    patched = await agentidp_client.patch(
        f"{AGENTS}/{agent['agent_id']}", json={"metadata": over}, headers=headers
    )
    assert patched.status_code == 400, await patched.get_json()
    read = await agentidp_client.get(f"{AGENTS}/{agent['agent_id']}", headers=headers)
    assert (await read.get_json())["metadata"] == at_limit


async def test_metadata_depth_is_capped(agentidp_client: Any, agentidp_idp: Any) -> None:
    from agentidp_server.directory.agents import METADATA_MAX_DEPTH

    def nested(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, _ = await make_agent(agentidp_client, headers, metadata=nested(METADATA_MAX_DEPTH))
    assert agent["metadata"] == nested(METADATA_MAX_DEPTH)
    response = await agentidp_client.post(
        AGENTS,
        json={"name": "n", "deployment_env": "p", "metadata": nested(METADATA_MAX_DEPTH + 1)},
        headers=headers,
    )
    body = await response.get_json()
    assert response.status_code == 400, body
    assert f"deeper than {METADATA_MAX_DEPTH}" in body["message"], body


# --- tokens_valid_after in milliseconds -------------------------------------------------


async def test_migration_0007_moves_tokens_valid_after_to_milliseconds(
    agentidp_db: Any, tmp_path: Any
) -> None:
    """A stored second S becomes S's last millisecond: tokens issued in or before S stay
    inactive, as they were; a NULL stays NULL."""
    import shutil
    from pathlib import Path

    from agentidp_server.directory import agents, tenants
    from agentidp_server.storage.migrations import MigrationSet, migrate

    core = Path(__file__).resolve().parent.parent / "migrations" / "core"
    staged = tmp_path / "core"
    staged.mkdir()
    for path in sorted(core.glob("*.sql")):
        if path.name < "0007":
            shutil.copy(path, staged / path.name)
    await migrate(agentidp_db, [MigrationSet("core", staged)])
    async with agentidp_db.transaction() as conn:
        org = await tenants.create_org(conn, "Acme", "free")
        suspended = await agents.create_agent(
            conn, org["org_id"], {"name": "s", "deployment_env": "p"}
        )
        never = await agents.create_agent(conn, org["org_id"], {"name": "n", "deployment_env": "p"})
    await agentidp_db.execute(
        "UPDATE agents SET tokens_valid_after = 1700000000 WHERE agent_id = $1",
        suspended["agent_id"],
    )
    for path in sorted(core.glob("0007_*.sql")):
        shutil.copy(path, staged / path.name)
    applied = await migrate(agentidp_db, [MigrationSet("core", staged)])
    assert [m.name for m in applied] == ["0007_tokens_valid_after_ms"]
    values = {
        r["agent_id"]: r["tokens_valid_after"]
        for r in await agentidp_db.fetch("SELECT agent_id, tokens_valid_after FROM agents")
    }
    assert values[suspended["agent_id"]] == 1_700_000_000_999
    assert values[never["agent_id"]] is None
