"""The plugin's state on `idp.state["delegation"]`: its metrics."""

from __future__ import annotations

from typing import Any

from agentidp_server import IdP

NAME = "delegation"


def state(idp: IdP) -> dict[str, Any]:
    plugin_state: dict[str, Any] = idp.state.setdefault(NAME, {})
    return plugin_state


def count_chain(idp: IdP) -> None:
    counter = state(idp).get("chains_created")
    if counter is not None:
        counter.inc()
