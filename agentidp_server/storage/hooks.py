"""The kernel's migrations, registered through the plugin hooks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agentidp_server.hookspecs import hookimpl
from agentidp_server.storage.migrations import MigrationSet

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


def _migrations_dir() -> Path:
    # In a wheel the migrations sit inside the package; in a checkout, beside it.
    package = Path(__file__).resolve().parent.parent
    packaged = package / "migrations" / "core"
    return packaged if packaged.is_dir() else package.parent / "migrations" / "core"


@hookimpl
def register_migrations(idp: IdP) -> list[MigrationSet]:
    return [MigrationSet("core", _migrations_dir())]
