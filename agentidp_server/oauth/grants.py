"""Grant types: the token endpoint dispatches on `grant_type` to one of these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from agentidp_server.hookspecs import PluginError
from agentidp_server.oauth.client_auth import DEFAULT_METHODS, NONE
from agentidp_server.oauth.token_request import TokenRequest


class GrantType(Protocol):
    """One OAuth grant (after Authlib's shape: one class per grant).

    `grant_type` is the registered value of the request's `grant_type`
    parameter (RFC 6749 §4.4.2, RFC 8693 §2.1, ...). TOKEN_ENDPOINT_AUTH_METHODS
    (Authlib's name) lists the client authentication methods the grant accepts,
    by registered name; "none" lets a request without client authentication
    through with `request.client` None (a public client, RFC 7523 §2.1). A grant
    without the attribute accepts the kernel's three methods (DEFAULT_METHODS).
    """

    grant_type: str

    @property
    def TOKEN_ENDPOINT_AUTH_METHODS(self) -> Sequence[str]:
        """Read-only here, so a plain class attribute satisfies it."""
        ...

    async def issue(self, request: TokenRequest) -> dict[str, Any]:
        """Check the request and return the token response fields."""
        ...


def auth_methods(grant: Any) -> tuple[str, ...]:
    """The grant's accepted client authentication methods (read once, at startup)."""
    methods = getattr(grant, "TOKEN_ENDPOINT_AUTH_METHODS", DEFAULT_METHODS)
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise TypeError("TOKEN_ENDPOINT_AUTH_METHODS must be a sequence of method names")
    return tuple(methods)


def grant_auth_methods(
    grants: Mapping[str, Any], registered: Mapping[str, Any]
) -> dict[str, frozenset[str]]:
    """Each grant's accepted methods, checked against the registered ones at startup."""
    accepted: dict[str, frozenset[str]] = {}
    for name, grant in grants.items():
        try:
            methods = auth_methods(grant)
        except TypeError as error:
            raise PluginError(f"grant type {name!r}: {error}") from None
        unknown = sorted(m for m in methods if m != NONE and m not in registered)
        if unknown or not methods:
            raise PluginError(
                f"grant type {name!r} accepts unregistered client auth methods: {unknown}"
                if unknown
                else f"grant type {name!r} accepts no client auth method"
            )
        accepted[name] = frozenset(methods)
    return accepted


def mints_without_io(grant: Any, request: Any) -> bool:
    """Whether the grant's optional `check(request)` (every refusal that needs no I/O)
    passes: its `issue` then mints. The token endpoint then counts the token in the
    same kv step as the request; a grant without `check` is counted when it mints."""
    check = getattr(grant, "check", None)  # None for an unknown grant_type too
    if check is None:
        return False
    try:
        check(request)
    except Exception:  # an OAuthError, or a bug: `issue` meets it after the request is counted
        return False
    return True
