"""Subject kinds: whom an access token is about (an agent, a person, a partner's subject).

The kernel serves one kind itself, `agent` (a local agent and its credential).
A plugin serves another through `register_subject_kinds`: a `SubjectKind` names
the kind and says, on every verification, whether a token of that kind is still
valid (its person suspended, its partner mapping deleted...). Tokens of any kind
but `agent` carry the kind in the `SUBJECT_KIND_CLAIM` claim; agent tokens carry
none, so tokens minted before kinds existed verify as they always did.

This module imports nothing of the kernel: every capability may import it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

AGENT = "agent"
# A private claim (RFC 7519 §4.3), prefixed with the product's name so that no
# registered claim, OIDC claim or other issuer's private claim collides with it.
SUBJECT_KIND_CLAIM = "agentidp_subject_kind"
# Lower-case words: the kind is a claim value, an audit detail and part of a client label.
_KIND_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")

# `(idp, claims) -> reason or None`: why a signed, unexpired, unrevoked token of the
# kind is no longer valid (a message safe to show), or None while it is.
StatusCheck = Callable[["IdP", Mapping[str, Any]], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom a token is minted for: `sub` is `subject_id`, `org_id` its organisation
    (the tier and quotas counted, the tenant that may introspect or revoke it)."""

    kind: str
    subject_id: str
    org_id: str

    def __post_init__(self) -> None:
        for name in ("kind", "subject_id", "org_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Subject.{name} must be a non-empty string")

    def client_label(self) -> str:
        """The `client_id` of a token minted with no OAuth client (a first-party
        session): `<kind>:<subject_id>`. Client ids are 32 hex digits, so a label
        never names a real client: no client may revoke the token as its own."""
        return f"{self.kind}:{self.subject_id}"


@dataclass(frozen=True, slots=True)
class SubjectKind:
    """A kind of token subject and its status check (`register_subject_kinds`)."""

    name: str
    status: StatusCheck
    description: str = ""


def check_kind(kind: object) -> SubjectKind:
    """`kind` if it is a well-formed SubjectKind, else ValueError saying why."""
    if not isinstance(kind, SubjectKind):
        raise ValueError("register_subject_kinds must return SubjectKind objects")
    if not isinstance(kind.name, str) or not _KIND_NAME.fullmatch(kind.name):
        raise ValueError(
            f"subject kind name {kind.name!r} must be 1-32 lower-case letters, digits, "
            "'_' or '-', starting with a letter"
        )
    if not callable(kind.status):
        raise ValueError(f"subject kind {kind.name!r} has no callable status check")
    return kind


def subject_kind(claims: Mapping[str, Any]) -> str:
    """The kind of a verified token's subject: `agent` for a token without the claim.

    Code that reads `sub` as an agent id must check this first: a person's id is
    not an agent's."""
    kind = claims.get(SUBJECT_KIND_CLAIM)
    return AGENT if kind is None else str(kind)
