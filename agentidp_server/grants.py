"""Grant types: the token endpoint dispatches on `grant_type` to one of these."""

from __future__ import annotations

from typing import Any, Protocol


class GrantType(Protocol):
    """One OAuth grant (after Authlib's shape: one class per grant).

    `grant_type` is the registered value of the request's `grant_type`
    parameter (RFC 6749 §4.4.2, RFC 8693 §2.1, ...).
    """

    grant_type: str

    async def issue(self, request: Any) -> Any:
        """Check the request and return the token response fields."""
        ...


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
