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
async def open_idp(overrides: dict[str, Any] | None = None) -> AsyncIterator[IdP]:
    """The facade with storage open, for commands that read or write state."""
    idp = load_idp(overrides)
    await idp.open_storage()
    try:
        yield idp
    finally:
        await idp.close_storage()


@click.group()
@click.version_option(package_name="agentidp-server")
def cli() -> None:
    """AgentIdP: an identity provider for AI agents."""


def main() -> None:
    from agentidp_server.cli import db, plugins_cmd, serve  # noqa: F401  (they register commands)

    try:
        load_plugins(load_settings()).commands(cli)
    except PluginError as error:
        fail([str(error)])
    cli(prog_name="agentidp")
