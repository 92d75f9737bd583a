"""The kernel's settings, registered through the plugin hooks."""

from __future__ import annotations

from agentidp_server.hookspecs import hookimpl
from agentidp_server.settings import KERNEL_SETTINGS, Setting


@hookimpl
def register_settings() -> list[Setting]:
    return list(KERNEL_SETTINGS)
