"""OAuth 2.0 Token Exchange (RFC 8693): the kernel checks the request and builds the
answer; plugins' handlers, chosen by `subject_token_type` (and issuer), decide and mint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agentidp_server.oauth.client_auth import DEFAULT_METHODS
from agentidp_server.oauth.client_credentials import resource_uri
from agentidp_server.oauth.errors import OAuthError
from agentidp_server.oauth.jws_parts import unverified_part
from agentidp_server.oauth.token_request import TokenRequest

if TYPE_CHECKING:
    from agentidp_server.idp import IdP
    from agentidp_server.oauth.client_auth import Client

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URN
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


@dataclass(frozen=True)
class TokenExchange:
    """One request's RFC 8693 §2.1 parameters, checked for shape by the kernel."""

    request: TokenRequest
    subject_token: str
    subject_token_type: str
    actor_token: str | None
    actor_token_type: str | None
    requested_token_type: str | None
    scope: list[str] | None  # None: not requested
    targets: list[str]  # `audience` then `resource` (RFC 8707 §2), without repeats

    @property
    def idp(self) -> IdP:
        return self.request.idp

    @property
    def client(self) -> Client:
        return self.request.authenticated_client

    @property
    def params(self) -> dict[str, str]:
        return self.request.params


@dataclass(frozen=True)
class ExchangedToken:
    """What a handler issued; the kernel answers it as RFC 8693 §2.2.1 says."""

    access_token: str
    issued_token_type: str
    expires_in: int
    scope: str
    token_type: str = "Bearer"  # noqa: S105 - RFC 6750, not a secret


class TokenExchangeHandler(Protocol):
    """Registered through `register_token_exchange_handlers`."""

    subject_token_types: Sequence[str]
    actor_token_types: Sequence[str]  # empty: actor_token is refused
    issued_token_types: Sequence[str]  # what requested_token_type may name
    issuer: str | None  # only subject tokens whose `iss` is this; None: any

    async def exchange(self, exchange: TokenExchange) -> ExchangedToken:
        """Verify the presented tokens, decide, mint; refuse with an OAuthError."""
        ...


def _param(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not value.strip():
        raise OAuthError("invalid_request", f"{name} must not be empty")
    return value


def _one_of(params: Mapping[str, str], name: str, allowed: Sequence[str]) -> str:
    value = params.get(name)
    if value not in allowed:
        names = " or ".join(allowed) if allowed else "absent"
        raise OAuthError("invalid_request", f"{name} must be {names}")
    return str(value)


def unverified_issuer(token: str) -> str | None:
    """A JWT's `iss` before any check: it only chooses which handler verifies it."""
    iss = (unverified_part(token, 1) or {}).get("iss")
    return iss if isinstance(iss, str) else None


class TokenExchangeGrant:
    """`grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693 §2)."""

    grant_type = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = DEFAULT_METHODS

    def __init__(self, handlers: Mapping[tuple[str, str | None], TokenExchangeHandler]) -> None:
        self.handlers = dict(handlers)
        self.subject_types = list(dict.fromkeys(t for t, _ in handlers))
        self.by_issuer = {t for t, iss in handlers if iss is not None}

    def handler_for(self, subject_token: str, subject_token_type: str) -> TokenExchangeHandler:
        if subject_token_type not in self.subject_types:
            raise OAuthError(
                "invalid_request",
                f"subject_token_type must be {' or '.join(self.subject_types)}",
            )
        handler = None
        if subject_token_type in self.by_issuer:
            issuer = unverified_issuer(subject_token)
            handler = self.handlers.get((subject_token_type, issuer)) if issuer else None
        handler = handler or self.handlers.get((subject_token_type, None))
        if handler is None:
            # RFC 8693 §2.2.2: an unacceptable subject_token is invalid_request.
            raise OAuthError("invalid_request", "subject_token's issuer is not accepted")
        return handler

    def parse(self, request: TokenRequest) -> tuple[TokenExchangeHandler, TokenExchange]:
        """RFC 8693 §2.1: malformed parameters are `invalid_request` (§2.2.2)."""
        params = request.params
        subject_token = _param(params, "subject_token")
        if subject_token is None:
            raise OAuthError("invalid_request", "subject_token is required")
        if "subject_token_type" not in params:
            raise OAuthError("invalid_request", "subject_token_type is required")
        subject_token_type = params["subject_token_type"]
        handler = self.handler_for(subject_token, subject_token_type)
        actor_token = _param(params, "actor_token")
        actor_token_type: str | None = None
        # §2.1: actor_token_type is required with actor_token and must not appear without it.
        if actor_token is not None:
            actor_token_type = _one_of(params, "actor_token_type", handler.actor_token_types)
        elif "actor_token_type" in params:
            raise OAuthError("invalid_request", "actor_token_type is given without actor_token")
        requested: str | None = None
        if "requested_token_type" in params:
            requested = _one_of(params, "requested_token_type", handler.issued_token_types)
        raw_scope = params.get("scope")
        scope: list[str] | None = None
        if raw_scope is not None:
            scope = raw_scope.split(" ")
            if not raw_scope or any(not SCOPE_TOKEN.match(s) for s in scope):
                raise OAuthError("invalid_scope", "scope must be space-separated scope tokens")
        targets: list[str] = []
        audience = _param(params, "audience")
        if audience is not None:
            targets.append(audience)
        resource = params.get("resource")
        if resource is not None:
            targets.append(resource_uri(resource))  # §2.1 / RFC 8707 §2
        return handler, TokenExchange(
            request=request,
            subject_token=subject_token,
            subject_token_type=subject_token_type,
            actor_token=actor_token,
            actor_token_type=actor_token_type,
            requested_token_type=requested,
            scope=scope,
            targets=list(dict.fromkeys(targets)),
        )

    async def issue(self, request: TokenRequest) -> dict[str, Any]:
        handler, exchange = self.parse(request)
        issued = await handler.exchange(exchange)
        # §2.2.1: the response names what it issued.
        return {
            "access_token": issued.access_token,
            "issued_token_type": issued.issued_token_type,
            "token_type": issued.token_type,
            "expires_in": issued.expires_in,
            "scope": issued.scope,
        }
