"""`agentidp orgs list|create|set-tier`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import click

from agentidp_server.cli import open_idp
from agentidp_server.directory import agents, credentials, tenants
from agentidp_server.directory.tenants import change_tier


@click.group()
def orgs() -> None:
    """Organisations (tenants)."""


@orgs.command("list")
def list_() -> None:
    """Every organisation: a header line, then one tab-separated row each, oldest first."""

    async def main() -> list[dict[str, object]]:
        async with open_idp() as idp:
            return await idp.db.fetch(
                "SELECT o.org_id, o.name, t.tier, o.created_at FROM organizations o "
                "LEFT JOIN tenant_tiers t ON t.org_id = o.org_id "
                "ORDER BY o.created_at, o.org_id"
            )

    rows = asyncio.run(main())
    click.echo("ORG_ID\tNAME\tTIER\tCREATED")
    for row in rows:
        created = datetime.fromtimestamp(int(str(row["created_at"])) / 1000, UTC)
        click.echo(
            f"{row['org_id']}\t{row['name']}\t{row['tier'] or '-'}\t"
            f"{created.isoformat(timespec='seconds')}"
        )


@orgs.command("create")
@click.argument("name")
@click.option("--tier", type=click.Choice(tenants.TIERS), default="free", show_default=True)
def create(name: str, tier: str) -> None:
    """Create an organisation and print its admin client as JSON (the secret is shown once)."""

    async def main() -> dict[str, str]:
        async with open_idp() as idp, idp.db.transaction() as conn:
            org = await tenants.create_org(conn, name, tier)
            admin = await agents.create_agent(
                conn,
                org["org_id"],
                {
                    "name": f"{name} admin",
                    "description": "organisation admin client (management API)",
                    "deployment_env": "admin",
                    "scopes": list(agents.ADMIN_SCOPES),
                },
                kind="admin",
            )
            secret = await credentials.create_secret(
                conn, admin, idp.settings.CREDENTIAL_PEPPER, None
            )
            await idp.audit.append(
                conn,
                org_id=org["org_id"],
                action="organization.created",
                target_type="organization",
                target_id=org["org_id"],
                details={"name": org["name"], "tier": tier, "admin_client_id": admin["client_id"]},
            )
        return {
            "org_id": org["org_id"],
            "name": org["name"],
            "tier": org["tier"],
            "client_id": secret["client_id"],
            "client_secret": secret["client_secret"],
        }

    try:
        result = asyncio.run(main())
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(result))


@orgs.command("set-tier")
@click.argument("org_id")
@click.argument("tier", type=click.Choice(tenants.TIERS))
def set_tier(org_id: str, tier: str) -> None:
    """Move an organisation to another tier (applies to its next request)."""

    async def main() -> bool:
        async with open_idp() as idp, idp.db.transaction() as conn:
            return await change_tier(idp, conn, org_id, tier, "cli")

    if not asyncio.run(main()):
        raise click.ClickException(f"no organisation {org_id}")
    click.echo(json.dumps({"org_id": org_id, "tier": tier}))
