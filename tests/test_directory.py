"""`idp.agents`: the read-only agent lookups the kernel offers plugins."""

from __future__ import annotations

from joserfc.jwk import ECKey

from agentidp_server.testkit import admin_headers, make_agent, make_org


async def test_lookups_are_scoped_and_keys_are_public(agentidp_client, agentidp_idp):
    directory = agentidp_idp.agents
    acme = await make_org(agentidp_idp, "Acme", "pro")
    other = await make_org(agentidp_idp, "Other")
    headers = await admin_headers(agentidp_client, acme)
    agent, secret = await make_agent(agentidp_client, headers)
    agent_id = agent["agent_id"]

    assert (await directory.get(agent_id)).client_id == agent["client_id"]
    assert (await directory.by_client_id(agent["client_id"])).agent_id == agent_id
    assert (await directory.get_in_org(acme["org_id"], agent_id)).name == "worker"
    assert await directory.get_in_org(other["org_id"], agent_id) is None
    assert await directory.get("no-such-agent") is None
    organisation = await directory.organisation(acme["org_id"])
    assert (organisation.org_id, organisation.name, organisation.tier) == (
        acme["org_id"],
        "Acme",
        "pro",
    )
    assert (await directory.get(agent_id)).public() == agent

    # A client secret is not a public key; a registered JWK is, without private parts.
    assert await directory.public_keys(agent_id) == []
    private = ECKey.generate_key("P-256", private=True)
    jwk = private.as_dict(private=False)
    response = await agentidp_client.post(
        f"/api/v1/agents/{agent_id}/credentials",
        json={"type": "private_key_jwt", "jwk": jwk},
        headers=headers,
    )
    assert response.status_code == 201
    (key,) = await directory.public_keys(agent_id)
    assert key.credential_id == (await response.get_json())["credential_id"]
    assert (key.jwk["x"], key.jwk["y"]) == (jwk["x"], jwk["y"])
    assert "d" not in key.jwk
    assert secret["credential_id"] != key.credential_id
