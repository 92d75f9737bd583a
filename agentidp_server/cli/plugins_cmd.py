"""`agentidp plugins`."""

from __future__ import annotations

import click

from agentidp_server.cli import cli
from agentidp_server.plugins import load_plugins
from agentidp_server.settings import load_settings


@cli.command("plugins")
def plugins() -> None:
    """List discovered plugins, enabled or not, with versions."""
    hooks = load_plugins(load_settings())
    if not hooks.plugins:
        click.echo("no plugins installed")
    for info in hooks.plugins:
        state = "enabled" if info.enabled else "disabled"
        click.echo(f"{info.name}\t{info.distribution or '-'}\t{info.version or '-'}\t{state}")
