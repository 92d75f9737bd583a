"""The management API's routes, registered through the plugin hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint

from agentidp_server.api import agents, audit, credentials, operator
from agentidp_server.hookspecs import hookimpl

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


@hookimpl
def register_blueprints(idp: IdP) -> list[Blueprint]:
    return [agents.blueprint, credentials.blueprint, operator.blueprint, audit.blueprint]
