"""The `agentidp` command line: serve, db, plugins, and plugins' own commands."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import click

from agentidp_server.app import build_idp
from agentidp_server.idp import IdP
from agentidp_server.plugins import PluginError, load_plugins
from agentidp_server.runtime import runtime
from agentidp_server.settings import SettingsError, load_settings

FAILED = "Failed to start server: Error: "


def fail(problems: list[str]) -> None:
    for problem in problems:
        click.echo(FAILED + problem, err=True)
    sys.exit(1)


def load_idp(overrides: dict[str, Any] | None = None) -> IdP:
    """Settings + plugins, or the runbook's error lines and exit code 1."""
    try:
        return build_idp(load_settings(overrides=overrides))
    except SettingsError as error:
        fail(error.problems)
    except PluginError as error:
        fail([str(error)])
    raise AssertionError("unreachable")


@asynccontextmanager
async def open_idp(
    overrides: dict[str, Any] | None = None, *, managed: bool = True
) -> AsyncIterator[IdP]:
    """The facade with storage open, for commands that read or write state.

    A store that cannot be reached or lacks its tables ends the command with one
    line naming the fix and exit 1, never a traceback (issue 15). `managed=False`
    (the `db` commands) neither migrates nor words the failure: the caller does.
    """
    from agentidp_server.server.startup import describe
    from agentidp_server.storage.migrations import migrate

    idp = load_idp(overrides)
    if not managed:
        await runtime(idp).open_storage()
        try:
            yield idp
        finally:
            await runtime(idp).close_storage()
        return
    try:
        await runtime(idp).open_storage()
        try:
            if idp.settings.MIGRATE_ON_START:
                # As `serve` does (on in development): `orgs create` works on a fresh clone.
                await migrate(idp.db, runtime(idp).migration_sets())
            yield idp
        finally:
            await runtime(idp).close_storage()
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as error:
        click.echo("Error: " + describe(error, idp.settings), err=True)
        sys.exit(1)


class HelpGroup(click.Group):
    """A group that prints its help and exits 0 when called without a command.

    click 8.2+ exits 2 there (`NoArgsIsHelpError`); `agentidp` alone is a request
    for help, not a usage error (issue 15). Caught here for nested groups too,
    whoever created them (plugins' groups are plain `click.Group`s).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.ctx.get_help() if error.ctx is not None else ctx.get_help())
            ctx.exit(0)


# `-h` as well as `--help`, inherited by every subcommand's context.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group(cls=HelpGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="agentidp-server")
def cli() -> None:
    """AgentIdP: an identity provider for AI agents."""


def main() -> None:
    from agentidp_server.cli import (  # noqa: F401  (they register commands)
        db,
        plugins_cmd,
        serve,
    )

    try:
        load_plugins(load_settings()).commands(cli)
    except PluginError as error:
        fail([str(error)])
    cli(prog_name="agentidp")
