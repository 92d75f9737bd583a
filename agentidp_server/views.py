"""Typed, read-only views of kernel objects: what crosses the boundary to plugins.

Plugins read attributes (`agent.scopes`, `caller.kind`), never row dicts, so a
column added or renamed in the kernel's tables does not reach them. Each view
is built from a stored row (or verified claims) by a classmethod; none holds a
secret (a credential's hash never leaves `directory/credentials.py`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from agentidp_server.util.ids import iso

AgentKind = Literal["agent", "admin"]
T = TypeVar("T")


def _json(value: Any) -> Any:
    """A JSON column: text on both adapters as stored, already decoded once `_row` ran."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def _frozen(value: Any) -> Mapping[str, Any]:
    """A private, read-only copy: a view must not let a plugin change the kernel's data."""
    return MappingProxyType(copy.deepcopy(dict(value or {})))


def _thawed(value: Any) -> Any:
    """A plain JSON-serialisable copy of a frozen mapping (mappingproxy is not JSON)."""
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thawed(v) for v in value]
    return value


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class Organisation:
    """A tenant: its id, name and tier."""

    org_id: str
    name: str
    tier: str
    created_at: int | None = None  # unix ms

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Organisation:
        return cls(
            org_id=str(row["org_id"]),
            name=str(row["name"]),
            tier=str(row.get("tier") or "free"),
            created_at=_int_or_none(row.get("created_at")),
        )


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent, or an organisation's admin client (`kind == "admin"`), whatever its status."""

    agent_id: str
    org_id: str
    client_id: str
    kind: AgentKind
    name: str
    description: str
    owner: str
    deployment_env: str
    scopes: tuple[str, ...]
    metadata: Mapping[str, Any]
    status: str  # active | suspended | decommissioned
    created_at: int  # unix ms
    updated_at: int  # unix ms
    # Tokens issued at or before this instant (unix ms) are inactive: set by a suspension.
    tokens_valid_after: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Agent:
        """From a row of `agents` (JSON columns as stored or decoded)."""
        kind = str(row.get("kind") or "agent")
        return cls(
            agent_id=str(row["agent_id"]),
            org_id=str(row["org_id"]),
            client_id=str(row["client_id"]),
            kind="admin" if kind == "admin" else "agent",
            name=str(row["name"]),
            description=str(row.get("description") or ""),
            owner=str(row.get("owner") or ""),
            deployment_env=str(row["deployment_env"]),
            scopes=tuple(_json(row["scopes"]) or ()),
            metadata=_frozen(_json(row.get("metadata"))),
            status=str(row["status"]),
            created_at=int(row["created_at"]),
            updated_at=int(row["updated_at"]),
            tokens_valid_after=_int_or_none(row.get("tokens_valid_after")),
        )

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def is_active(self) -> bool:
        return self.status == "active"

    def as_row(self) -> dict[str, Any]:
        """The agent as a plain dict, for kernel calls that still take one
        (`idp.tokens.mint(agent=...)`)."""
        return {
            "agent_id": self.agent_id,
            "org_id": self.org_id,
            "client_id": self.client_id,
            "kind": self.kind,
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "deployment_env": self.deployment_env,
            "scopes": list(self.scopes),
            "metadata": _thawed(self.metadata),
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "tokens_valid_after": self.tokens_valid_after,
        }

    def public(self) -> dict[str, Any]:
        """The agent as the management API shows it (JSON, times in RFC 3339)."""
        return {
            "agent_id": self.agent_id,
            "org_id": self.org_id,
            "client_id": self.client_id,
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "deployment_env": self.deployment_env,
            "scopes": list(self.scopes),
            "metadata": _thawed(self.metadata),
            "status": self.status,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class Credential:
    """An agent's credential, never its secret: a `client_secret` shows only that it
    exists; a `private_key_jwt` carries its public JWK."""

    credential_id: str
    agent_id: str
    org_id: str
    type: str  # client_secret | private_key_jwt
    status: str  # active | revoked
    created_at: int  # unix ms
    expires_at: int | None = None
    revoked_at: int | None = None
    jwk: Mapping[str, Any] | None = None  # the public key (private_key_jwt only)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Credential:
        jwk = _json(row.get("jwk"))
        return cls(
            credential_id=str(row["credential_id"]),
            agent_id=str(row["agent_id"]),
            org_id=str(row["org_id"]),
            type=str(row["type"]),
            status=str(row["status"]),
            created_at=int(row["created_at"]),
            expires_at=_int_or_none(row.get("expires_at")),
            revoked_at=_int_or_none(row.get("revoked_at")),
            jwk=_frozen(jwk) if jwk else None,
        )

    @property
    def kid(self) -> str | None:
        kid = self.jwk.get("kid") if self.jwk is not None else None
        return kid if isinstance(kid, str) else None

    def public_jwk(self) -> dict[str, Any]:
        """The JWK as a plain dict (for a JWKS or a DID document); {} for a secret."""
        return dict(_thawed(self.jwk)) if self.jwk is not None else {}


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a management request: who presented the access token.

    `agent_id` is the token's `sub`. For a delegated token (RFC 8693 §4.1) `act` names
    the actor; `kind` is the subject's (an agent or the organisation's admin client).
    """

    kind: AgentKind
    org_id: str
    agent_id: str
    client_id: str
    scopes: frozenset[str]
    credential_id: str | None
    act: Mapping[str, Any] | None
    claims: Mapping[str, Any]  # every verified claim, read-only

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], kind: str) -> Principal:
        """From an access token's verified claims and its subject's kind."""
        act = claims.get("act")
        credential_id = claims.get("credential_id")
        return cls(
            kind="admin" if kind == "admin" else "agent",
            org_id=str(claims["org_id"]),
            agent_id=str(claims["sub"]),
            client_id=str(claims["client_id"]),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            credential_id=credential_id if isinstance(credential_id, str) else None,
            act=_frozen(act) if isinstance(act, Mapping) else None,
            claims=_frozen(claims),
        )

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def delegated(self) -> bool:
        """Whether the token was issued through token exchange to someone acting for `sub`."""
        return self.act is not None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of verifying one organisation's audit hash chain.

    `intact` with `events` checked; else `first_broken_seq` is the first event
    that does not verify (or the first missing one) and `reason` says why.
    """

    org_id: str
    events: int
    intact: bool
    first_broken_seq: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "events": self.events,
            "intact": self.intact,
            "first_broken_seq": self.first_broken_seq,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Usage:
    """An organisation's usage counters, as the runbook's Redis keys hold them now.

    Daily counters reset at midnight UTC (`resets_at`, unix ms); a limit of 0 is
    unlimited. `tokens_this_month` sums the monthly counters of the organisation's
    clients. Counters read 0 when the kv is unavailable (`available` is then False).
    """

    org_id: str
    tier: str
    api_calls_today: int
    api_calls_daily_limit: int
    tokens_today: int
    tokens_daily_limit: int
    tokens_this_month: int
    resets_at: int
    available: bool = True


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paginated listing; pass `next_cursor` back for the next one
    (None: this was the last page)."""

    items: tuple[T, ...]
    next_cursor: str | None
