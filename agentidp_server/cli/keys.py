"""`agentidp keys list|rotate|revoke`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import click

from agentidp_server.cli import open_idp
from agentidp_server.keys import KeyError_


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@click.group()
def keys() -> None:
    """Token signing keys."""


@keys.command("list")
def list_() -> None:
    """Each key's kid, algorithm, state and activation time."""

    async def main() -> None:
        async with open_idp() as idp:
            await idp.keys.load(idp.db)
            for key, state in idp.keys.states():
                click.echo(
                    f"{key.kid}\t{key.alg}\t{state}\t{_when(key.activates_at)}\t{key.source}"
                )

    asyncio.run(main())


@keys.command("rotate")
@click.option(
    "--delay", type=float, help="Seconds before the new key signs (KEY_ACTIVATION_DELAY)."
)
def rotate(delay: float | None) -> None:
    """Add a key: published now, signing after the delay; the old one stays published
    until every token it signed has expired."""

    async def main() -> None:
        async with open_idp() as idp:
            key = await idp.keys.rotate(idp.db, delay, audit=idp.audit)
            if key is not None:
                click.echo(f"{key.kid}\t{key.alg}\tsigns from {_when(key.activates_at)}")

    try:
        asyncio.run(main())
    except KeyError_ as error:
        raise click.ClickException(str(error)) from error


# RFC 7638 thumbprints are base64url and may begin with "-": take that as the kid, not an option.
@keys.command("revoke", context_settings={"ignore_unknown_options": True})
@click.argument("kid")
def revoke(kid: str) -> None:
    """Emergency: unpublish a key at once (tokens it signed stop verifying). If it was
    the signing key, a new key signs immediately."""

    async def main() -> None:
        async with open_idp() as idp:
            await idp.keys.load(idp.db)
            was_signing = any(k.kid == kid and s == "active" for k, s in idp.keys.states())
            if not await idp.keys.revoke(idp.db, kid, audit=idp.audit):
                raise click.ClickException(f"no unrevoked key {kid}")
            click.echo(f"revoked {kid}")
            if was_signing:
                key = await idp.keys.rotate(idp.db, 0, audit=idp.audit)
                if key is not None:
                    click.echo(f"{key.kid}\t{key.alg}\tsigns now")

    try:
        asyncio.run(main())
    except KeyError_ as error:
        raise click.ClickException(str(error)) from error
