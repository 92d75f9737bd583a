"""`agentidp db migrate|status`."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

import click

from agentidp_server.cli import cli, open_idp
from agentidp_server.runtime import runtime
from agentidp_server.server.startup import MIGRATION_FAILED, describe
from agentidp_server.settings import load_settings
from agentidp_server.storage.migrations import migrate, status


@cli.group()
def db() -> None:
    """Database migrations."""


def _run(coro_factory: object) -> None:
    try:
        asyncio.run(coro_factory())  # type: ignore[operator]
    except Exception as error:  # any cause: one line, never a traceback
        # The runbook's line, once, naming host and port (not click's "Error: ..." prefix).
        click.echo(MIGRATION_FAILED + describe(error, load_settings()), err=True)
        sys.exit(1)


@db.command("migrate")
def migrate_cmd() -> None:
    """Apply the kernel's and every enabled plugin's pending migrations."""

    async def main() -> None:
        async with open_idp(managed=False) as idp:
            applied = await migrate(idp.db, runtime(idp).migration_sets())
        for m in applied:
            click.echo(f"applied {m.migration_set}/{m.name}")
        click.echo(f"{len(applied)} migration(s) applied")

    _run(main)


@db.command("status")
def status_cmd() -> None:
    """List applied and pending migrations."""

    async def main() -> None:
        async with open_idp(managed=False) as idp:
            rows = await status(idp.db, runtime(idp).migration_sets())
        for row in rows:
            when = (
                datetime.fromtimestamp(row.applied_at / 1000, UTC).isoformat(timespec="seconds")
                if row.applied_at is not None
                else "pending"
            )
            click.echo(f"{row.migration_set}/{row.name}\t{when}")

    _run(main)
