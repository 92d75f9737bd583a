"""What a grant handler receives from the token endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentidp_server.idp import IdP
    from agentidp_server.oauth.client_auth import Client


@dataclass(frozen=True)
class TokenRequest:
    """An authenticated token request: the client, its parameters and the kernel."""

    idp: IdP
    client: Client
    params: dict[str, str]
