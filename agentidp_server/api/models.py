"""Request models: the OpenAPI document and request validation come from the same classes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# RFC 6749 §3.3 scope-token
ScopeToken = Annotated[str, StringConstraints(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+$")]
Text = Annotated[str, StringConstraints(max_length=1000)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"\S")]


class AgentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    description: Text = ""
    owner: Text = Field("", description="Owner contact (e-mail or team)")
    deployment_env: Name = Field(description="e.g. production, staging")
    scopes: list[ScopeToken] = Field(
        default_factory=list, description="Scopes the agent may ask for"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)


class AgentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Text | None = None
    owner: Text | None = None
    deployment_env: Name | None = None
    scopes: list[ScopeToken] | None = None
    metadata: dict[str, Any] | None = None
    status: Literal["active", "suspended"] | None = Field(
        None, description="DELETE decommissions; suspended agents' tokens are inactive"
    )


class CredentialCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["client_secret", "private_key_jwt"]
    jwk: dict[str, Any] | None = Field(None, description="Public JWK, for private_key_jwt")
    expires_at: AwareDatetime | None = None


# Response and query models: documentation only (the views build their bodies), so
# they list what a client may rely on and leave room for fields added later.


class AgentListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None
    status: Literal["active", "suspended", "decommissioned"] | None = None
    deployment_env: str | None = None


class Agent(BaseModel):
    """The agent."""

    agent_id: str
    org_id: str
    client_id: str
    name: str
    description: str
    owner: str
    deployment_env: str
    scopes: list[str]
    metadata: dict[str, Any]
    status: Literal["active", "suspended", "decommissioned"]
    created_at: str
    updated_at: str


class AgentPage(BaseModel):
    """A page of agents; pass `next_cursor` as `cursor` for the next one."""

    data: list[Agent]
    next_cursor: str | None


class Credential(BaseModel):
    """The credential (never its secret's hash)."""

    credential_id: str
    type: Literal["client_secret", "private_key_jwt"]
    status: str
    expires_at: str | None
    created_at: str | None
    revoked_at: str | None = None
    jwk: dict[str, Any] | None = None


class CreatedCredential(BaseModel):
    """The new credential; a client secret is shown here once and never again."""

    credential_id: str
    type: Literal["client_secret", "private_key_jwt"]
    client_id: str | None = None
    client_secret: str | None = None


class CredentialList(BaseModel):
    """The agent's credentials, oldest first."""

    data: list[Credential]


class AuditQuery(BaseModel):
    limit: int = Field(100, ge=1, le=500)
    # A seq is a PostgreSQL BIGINT: larger cursors are refused with a 400.
    cursor: int | None = Field(
        None, ge=0, le=2**63 - 1, description="The last `seq` of the previous page"
    )
    action: str | None = None
    agent_id: str | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


class AuditEvent(BaseModel):
    seq: int
    org_id: str
    action: str
    occurred_at: str
    details: Any = None


class AuditPage(BaseModel):
    """A page of audit events in chain order."""

    data: list[AuditEvent]
    next_cursor: str | None


class ChainReport(BaseModel):
    """Whether the organisation's chain is intact, and where it breaks."""

    org_id: str
    events: int
    intact: bool
    first_broken_seq: int | None
    reason: str | None


class TierChanged(BaseModel):
    """The organisation's new tier."""

    org_id: str
    tier: Literal["free", "pro", "enterprise"]
