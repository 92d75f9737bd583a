"""`agentidp audit verify`."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from agentidp_server.cli import open_idp


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@click.option("--org", "org_id", help="Verify one organisation's chain (default: all).")
def verify(org_id: str | None) -> None:
    """Recompute hash chains; exit 1 naming the first broken event when one is broken."""

    async def main() -> list[dict[str, object]]:
        async with open_idp() as idp:
            await idp.keys.load(idp.db)
            reports = [await idp.audit.verify(org_id)] if org_id else await idp.audit.verify_all()
            return [r.as_dict() for r in reports]

    reports = asyncio.run(main())
    for report in reports:
        click.echo(json.dumps(report))
    if any(not r["intact"] for r in reports):
        sys.exit(1)
