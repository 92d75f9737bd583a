"""Bearer-token authentication and scope checks for the management API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from quart import g, request
from quart_schema.openapi import QUART_SCHEMA_SECURITY_ATTRIBUTE

from agentidp_server.audit.log import Actor
from agentidp_server.idp import current_idp
from agentidp_server.oauth.rfc9068 import InvalidToken
from agentidp_server.server.http import ApiError
from agentidp_server.views import Principal

# ApiError is re-exported for the route modules.
__all__ = ["ApiError", "principal", "principal_actor", "principal_org", "require_scope"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _unauthorized(message: str) -> ApiError:
    # RFC 6750 §3: a 401 names the Bearer scheme.
    return ApiError(401, "UNAUTHORIZED", message, {"WWW-Authenticate": 'Bearer realm="agentidp"'})


def require_scope(scope: str | None) -> Callable[[F], F]:
    """Accept a valid access token of this server carrying `scope` (any scope when
    None: the view authorises by who the caller is); sets `g.principal`."""

    def decorate(view: F) -> F:
        @wraps(view)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            if header[:7].lower() != "bearer " or not header[7:].strip():
                raise _unauthorized("Authorization header with a Bearer token is required")
            idp = current_idp()
            try:
                claims = await idp.tokens.verify(header[7:].strip())
            except InvalidToken as error:
                raise _unauthorized(str(error)) from None
            # RFC 9068 §4: a token issued for another resource (RFC 8707) is not for us.
            aud = claims.get("aud")
            audiences = {a for a in (aud if isinstance(aud, list) else [aud]) if isinstance(a, str)}
            if not audiences & {idp.issuer, idp.tokens.default_audience()}:
                raise _unauthorized("Token audience is not this server")
            if scope is not None and scope not in str(claims.get("scope", "")).split():
                raise ApiError(
                    403,
                    "FORBIDDEN",
                    f"the token lacks the {scope} scope",
                    {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
                )
            await idp.quotas.admit(str(claims["client_id"]), str(claims["org_id"]))
            # verify() found the subject active, so its kind is known (None only in a race).
            kind = await idp.agents.kind(str(claims["sub"])) or "agent"
            g.principal = Principal.from_claims(claims, kind)
            return await view(*args, **kwargs)

        # The OpenAPI document names the bearer scheme and, as OpenAPI 3.1 allows, the scope.
        setattr(wrapper, QUART_SCHEMA_SECURITY_ATTRIBUTE, [{"bearer": [scope] if scope else []}])
        return wrapper  # type: ignore[return-value]

    return decorate


def principal() -> Principal:
    """The authenticated caller of the current request (inside `require_scope`)."""
    caller: Principal = g.principal
    return caller


def principal_org() -> str:
    """The caller's organisation: every object the request touches belongs to it."""
    return principal().org_id


def principal_actor() -> Actor:
    """The authenticated caller, as an audit actor."""
    caller = principal()
    return Actor(client_id=caller.client_id, agent_id=caller.agent_id)
