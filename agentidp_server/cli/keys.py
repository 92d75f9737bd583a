"""`agentidp keys list|rotate|revoke`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import click

from agentidp_server.cli import open_idp
from agentidp_server.keys.keyring import PREVIOUS, KeyError_


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@click.group()
def keys() -> None:
    """Token signing keys."""


HEADER = "KID\tALG\tSTATE\tSIGNS_FROM\tSOURCE"


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """A key error (an undecryptable key, a rotation refused) is one line, not a traceback."""
    try:
        asyncio.run(main())
    except KeyError_ as error:
        raise click.ClickException(str(error)) from error


@keys.command("list")
def list_() -> None:
    """Each key's kid, algorithm, state and activation time (creates none: the server
    creates the first key when it starts)."""

    async def main() -> None:
        async with open_idp() as idp:
            await idp.keys.load(idp.db, create=False)
            click.echo(HEADER)
            for key, state in idp.keys.states():
                signs_from = "-" if key.source == PREVIOUS else _when(key.activates_at)
                click.echo(f"{key.kid}\t{key.alg}\t{state}\t{signs_from}\t{key.source}")

    _run(main)


@keys.command("rotate")
@click.option(
    "--delay", type=float, help="Seconds before the new key signs (KEY_ACTIVATION_DELAY)."
)
def rotate(delay: float | None) -> None:
    """Add a key: published now, signing after the delay; the old one stays published
    until every token it signed has expired."""

    async def main() -> None:
        async with open_idp() as idp:
            refresh = idp.settings.KEYS_REFRESH_INTERVAL
            if delay is not None and delay < refresh:
                # A worker that has not reloaded yet would refuse the new key's tokens.
                raise click.UsageError(
                    f"--delay ({delay:g}) must be at least KEYS_REFRESH_INTERVAL ({refresh:g}) "
                    "so that every worker publishes the key before it signs"
                )
            # The first key has nothing to take over from: it signs at once.
            first = await idp.keys.rotate(idp.db, 0, only_if_empty=True, audit=idp.audit)
            if first is not None:
                click.echo(f"{first.kid}\t{first.alg}\tsigns now")
                return
            key = await idp.keys.rotate(idp.db, delay, audit=idp.audit)
            if key is not None:
                click.echo(f"{key.kid}\t{key.alg}\tsigns from {_when(key.activates_at)}")

    _run(main)


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

    _run(main)


@keys.command("reencrypt")
def reencrypt() -> None:
    """After changing KEY_STORE_SECRET (old value in KEY_STORE_SECRET_PREVIOUS): re-encrypt
    every stored key under the current secret, in one transaction; then drop the old one."""

    async def main() -> None:
        async with open_idp() as idp:
            if not idp.keys.uses_store:
                raise KeyError_("keys come from JWT_PRIVATE_KEY; the key store is not in use")
            count = await idp.keys.reencrypt(idp.db, audit=idp.audit)
            click.echo(f"re-encrypted {count} key(s) under KEY_STORE_SECRET")

    _run(main)
