"""AgentIdP kernel. Plugins import only what this module exports."""

from agentidp_server.background import BackgroundTask
from agentidp_server.health import HealthCheck
from agentidp_server.hookspecs import hookimpl
from agentidp_server.idp import IdP, current_idp
from agentidp_server.migrations import MigrationSet
from agentidp_server.settings import Setting

__version__ = "0.1.0"

__all__ = [
    "BackgroundTask",
    "HealthCheck",
    "IdP",
    "MigrationSet",
    "Setting",
    "__version__",
    "current_idp",
    "hookimpl",
]
