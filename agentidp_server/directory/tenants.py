"""Organisations (tenants) and their tiers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentidp_server.storage.db import Connection, Database
from agentidp_server.util.ids import new_id, now_ms

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

TIERS = ("free", "pro", "enterprise")


async def create_org(conn: Connection, name: str, tier: str = "free") -> dict[str, Any]:
    """Insert an organisation and its tier (inside the caller's transaction)."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}")
    if not name.strip():
        raise ValueError("name must not be empty")
    org_id = new_id()
    now = now_ms()
    await conn.execute(
        "INSERT INTO organizations (org_id, name, created_at) VALUES ($1, $2, $3)",
        org_id,
        name.strip(),
        now,
    )
    await conn.execute(
        "INSERT INTO tenant_tiers (org_id, tier, updated_at) VALUES ($1, $2, $3)",
        org_id,
        tier,
        now,
    )
    return {"org_id": org_id, "name": name.strip(), "tier": tier}


async def get_org(db: Database, org_id: str) -> dict[str, Any] | None:
    return await db.fetchrow(
        "SELECT o.org_id, o.name, t.tier FROM organizations o "
        "JOIN tenant_tiers t ON t.org_id = o.org_id WHERE o.org_id = $1",
        org_id,
    )


async def get_tier(db: Database, org_id: str) -> str | None:
    tier = await db.fetchval("SELECT tier FROM tenant_tiers WHERE org_id = $1", org_id)
    return str(tier) if tier is not None else None


async def set_tier(db: Connection | Database, org_id: str, tier: str) -> bool:
    """Change an organisation's tier; the next request is counted against it."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}")
    changed = await db.execute(
        "UPDATE tenant_tiers SET tier = $1, updated_at = $2 WHERE org_id = $3",
        tier,
        now_ms(),
        org_id,
    )
    return changed > 0


async def change_tier(idp: IdP, conn: Connection, org_id: str, tier: str, by: str) -> bool:
    """Set the tier and record it in the organisation's audit chain, in one transaction."""
    before = await conn.fetchval("SELECT tier FROM tenant_tiers WHERE org_id = $1", org_id)
    if not await set_tier(conn, org_id, tier):
        return False
    await idp.audit.append(
        conn,
        org_id=org_id,
        action="tier.changed",
        target_type="organization",
        target_id=org_id,
        details={"from": before, "to": tier, "by": by},
    )
    return True
