"""The facade of the app serving the current request, for routes in any capability."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import current_app

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


def current_idp() -> IdP:
    """The facade of the app serving the current request."""
    idp: IdP = current_app.extensions["agentidp"]
    return idp
