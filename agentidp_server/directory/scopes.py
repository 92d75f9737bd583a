"""Scopes the kernel and plugins declare (register_scopes), and what org admins hold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentidp_server.util.ids import SCOPE_TOKEN


@dataclass(frozen=True)
class Scope:
    """One scope: its RFC 6749 §3.3 scope-token `name`, a `description` for
    operators and clients, and whether organisation admins hold it (`admin`)."""

    name: str
    description: str
    admin: bool = False


@dataclass(frozen=True)
class ScopeRegistry:
    """Every enabled plugin's declared scopes, built once per app."""

    scopes: tuple[Scope, ...]
    admin: frozenset[str]

    @classmethod
    def of(cls, scopes: Iterable[Scope]) -> ScopeRegistry:
        declared = tuple(scopes)
        return cls(declared, frozenset(s.name for s in declared if s.admin))

    @property
    def supported(self) -> list[str]:
        """The names, in declaration order (RFC 8414 `scopes_supported`)."""
        return [s.name for s in self.scopes]

    def allowed(self, agent: Mapping[str, Any]) -> list[str]:
        """The scopes `agent` may be issued: its own, and for an org admin every
        admin-held scope enabled now (admins created before a plugin get its scopes)."""
        own: list[str] = agent["scopes"]
        if agent["kind"] != "admin":
            return own
        return sorted(self.admin.union(own))


def check_scope(scope: object) -> Scope:
    """A declaration the kernel accepts, or ValueError saying what is wrong."""
    if not isinstance(scope, Scope):
        raise ValueError("register_scopes must return Scope objects")
    if not isinstance(scope.name, str) or not SCOPE_TOKEN.match(scope.name):
        # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        raise ValueError(f"scope {scope.name!r} is not an RFC 6749 §3.3 scope token")
    if not isinstance(scope.description, str) or not scope.description.strip():
        raise ValueError(f"scope {scope.name!r} needs a description")
    return scope
