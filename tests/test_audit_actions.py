"""Declared audit actions: a plugin (and the kernel) declare what they record, and
the test suites' strict mode refuses anything else."""

from __future__ import annotations

from typing import Any

import pytest

from agentidp_server import UndeclaredAuditAction
from agentidp_server.app import build_idp
from agentidp_server.runtime import runtime
from agentidp_server.settings import KERNEL_SETTINGS, load_settings
from agentidp_server.storage.migrations import migrate


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"HELLO_ENABLED": True}


async def test_a_declared_action_is_recorded_and_an_undeclared_one_fails(agentidp_idp):
    assert agentidp_idp.settings.AUDIT_STRICT_ACTIONS  # the kernel's pytest plugin turns it on
    event = await agentidp_idp.audit.record(agentidp_idp.db, org_id="org-a", action="hello.greeted")
    assert event["seq"] == 1
    with pytest.raises(UndeclaredAuditAction, match=r"'hello\.greetd' is not declared"):
        await agentidp_idp.audit.record(agentidp_idp.db, org_id="org-a", action="hello.greetd")
    with pytest.raises(UndeclaredAuditAction):
        async with agentidp_idp.db.transaction() as conn:
            await agentidp_idp.audit.append(conn, org_id="org-a", action="agent.updated")
    # Nothing undeclared reached the chain.
    assert [e["action"] for e in await agentidp_idp.audit.read("org-a")] == ["hello.greeted"]


async def test_strict_mode_is_off_by_default(agentidp_storage, tmp_path):
    (spec,) = [s for s in KERNEL_SETTINGS if s.key == "AUDIT_STRICT_ACTIONS"]
    assert spec.default is False
    overrides = {**agentidp_storage, "DATA_DIR": str(tmp_path)}
    idp = build_idp(load_settings(env="test", overrides=overrides, environ={}))
    await runtime(idp).open_storage()
    try:
        await migrate(idp.db, runtime(idp).migration_sets())
        event = await idp.audit.record(idp.db, org_id="org-a", action="custom.thing")
        assert event["action"] == "custom.thing"
    finally:
        await runtime(idp).close_storage()


def test_every_action_the_kernel_declares_has_a_description(agentidp_settings):
    idp = build_idp(agentidp_settings)
    actions = idp.audit.actions
    assert {"token.issued", "agent.created", "hello.greeted"} <= set(actions)
    assert all(a.description for a in actions.values())
