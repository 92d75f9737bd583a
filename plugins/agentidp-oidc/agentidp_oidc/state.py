"""The plugin's state on `idp.state["oidc"]`: its metric."""

from __future__ import annotations

from typing import Any

from agentidp_server import IdP

NAME = "oidc"


def state(idp: IdP) -> dict[str, Any]:
    plugin_state: dict[str, Any] = idp.state.setdefault(NAME, {})
    return plugin_state


def count_id_token(idp: IdP) -> None:
    counter = state(idp).get("id_tokens")
    if counter is not None:
        counter.inc()
