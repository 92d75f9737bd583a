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
