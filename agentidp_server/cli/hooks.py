"""The kernel's `agentidp` subcommands, registered through the plugin hooks."""

from __future__ import annotations

import click

from agentidp_server.cli import audit, keys, orgs
from agentidp_server.hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(audit.audit)
    cli.add_command(orgs.orgs)
    cli.add_command(keys.keys)
