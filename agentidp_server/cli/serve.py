"""`agentidp serve`."""

from __future__ import annotations

import sys
from typing import Any

import click

from agentidp_server.cli import cli, load_idp


@cli.command()
@click.option("--port", type=int, help="Overrides PORT.")
@click.option("--host", help="Overrides HOST.")
@click.option("--workers", type=int, help="Overrides WORKERS (worker processes).")
def serve(port: int | None, host: str | None, workers: int | None) -> None:
    """Run the server until SIGTERM/SIGINT, then drain and exit 0."""
    from agentidp_server.runner import run

    overrides: dict[str, Any] = {}
    if port is not None:
        overrides["PORT"] = port
    if host is not None:
        overrides["HOST"] = host
    if workers is not None:
        overrides["WORKERS"] = workers
    idp = load_idp(overrides)  # validates before binding anything
    sys.exit(run(idp.settings, overrides))
