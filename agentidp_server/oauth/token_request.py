"""What a grant handler receives from the token endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentidp_server.oauth.errors import OAuthError

if TYPE_CHECKING:
    from agentidp_server.idp import IdP
    from agentidp_server.oauth.client_auth import Client


@dataclass(frozen=True)
class TokenRequest:
    """A token request: the kernel, the authenticated client and the parameters.

    `client` is None only for a grant whose TOKEN_ENDPOINT_AUTH_METHODS include
    "none" and a request that authenticated no client; `unauthenticated_client_id`
    is then the request's `client_id` parameter (if any), which nothing vouches for.
    """

    idp: IdP
    client: Client | None
    params: dict[str, str]
    unauthenticated_client_id: str | None = None

    @property
    def authenticated_client(self) -> Client:
        """The client, for a grant that accepts no "none": the endpoint always set it."""
        if self.client is None:
            raise OAuthError("invalid_client", "client authentication is required", 401)
        return self.client
