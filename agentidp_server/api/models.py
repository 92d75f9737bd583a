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


class TokenForm(BaseModel):
    """RFC 6749 §4.4.2 (client credentials), RFC 7523 §2.2, RFC 8707."""

    grant_type: str
    scope: str | None = None
    resource: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    client_assertion_type: str | None = None
    client_assertion: str | None = None


class TokenForm7662(BaseModel):
    """RFC 7662 §2.1 / RFC 7009 §2.1 (client authentication as at the token endpoint)."""

    token: str
    token_type_hint: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    client_assertion_type: str | None = None
    client_assertion: str | None = None
