"""The kernel's own settings and migrations, registered through the plugin hooks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agentidp_server.hookspecs import hookimpl
from agentidp_server.migrations import MigrationSet
from agentidp_server.settings import KERNEL_SETTINGS, Setting

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


def _migrations_dir() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "migrations" / "core"
    return packaged if packaged.is_dir() else here.parent / "migrations" / "core"


@hookimpl
def register_settings() -> list[Setting]:
    return list(KERNEL_SETTINGS)


@hookimpl
def register_migrations(idp: IdP) -> list[MigrationSet]:
    return [MigrationSet("core", _migrations_dir())]
