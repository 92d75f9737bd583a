"""The client credentials grant (RFC 6749 §4.4), with RFC 8707 resource indicators."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from agentidp_server.oauth.client_auth import DEFAULT_METHODS
from agentidp_server.oauth.errors import OAuthError
from agentidp_server.oauth.token_request import TokenRequest
from agentidp_server.util.ids import SCOPE_TOKEN


def requested_scopes(raw: str | None, allowed: list[str]) -> list[str]:
    """RFC 6749 §3.3: a subset of the client's scopes; all of them by default."""
    if raw is None:
        return sorted(allowed)
    scopes = raw.split(" ")
    if not raw or any(not SCOPE_TOKEN.match(s) for s in scopes):
        raise OAuthError("invalid_scope", "scope must be space-separated scope tokens")
    unknown = sorted(set(scopes) - set(allowed))
    if unknown:
        raise OAuthError("invalid_scope", f"scope not allowed for this client: {' '.join(unknown)}")
    return sorted(set(scopes))


def resource_uri(raw: str) -> str:
    """RFC 8707 §2: a `resource` is an absolute URI without a fragment (else invalid_target)."""
    try:
        parts = urlsplit(raw)
    except ValueError:  # e.g. "http://[::1": an unbalanced IPv6 literal
        parts = None
    if parts is None or not parts.scheme or not (parts.netloc or parts.path) or "#" in raw:
        raise OAuthError("invalid_target", "resource must be an absolute URI without a fragment")
    return raw


def resource_audience(raw: str | None, default: str) -> str:
    """The `aud` of a token: the requested resource, else the default."""
    return default if raw is None else resource_uri(raw)


class ClientCredentialsGrant:
    grant_type = "client_credentials"
    # RFC 6749 §4.4: only a confidential client may use this grant.
    TOKEN_ENDPOINT_AUTH_METHODS = DEFAULT_METHODS

    def check(self, request: TokenRequest) -> tuple[list[str], str]:
        """Every refusal of this grant (no I/O): the scopes and audience to issue."""
        client = request.authenticated_client
        # An admin also holds every enabled plugin's admin scopes (collected once per app).
        allowed = request.idp._hooks.scopes(request.idp).allowed(client.agent)
        scopes = requested_scopes(request.params.get("scope"), allowed)
        audience = resource_audience(
            request.params.get("resource"), request.idp.tokens.default_audience()
        )
        return scopes, audience

    async def issue(self, request: TokenRequest) -> dict[str, Any]:
        client = request.authenticated_client
        scopes, audience = self.check(request)
        token, claims = await request.idp.tokens.mint(
            agent=client.agent,
            credential_id=client.credential_id,
            client_id=client.client_id,
            scopes=scopes,
            audience=audience,
            grant_type=self.grant_type,
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": claims["exp"] - claims["iat"],
            "scope": claims["scope"],
        }
