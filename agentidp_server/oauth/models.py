"""The OAuth endpoints' request and response models (the OpenAPI document's, and validation)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


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


# Response models: documentation only (the views build their bodies).


class TokenResponse(BaseModel):
    """RFC 6749 §5.1 access token response."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str | None = None


class Introspection(BaseModel):
    """RFC 7662 §2.2: `active` and, for an active token, its claims."""

    active: bool
    model_config = ConfigDict(extra="allow")


class Empty(BaseModel):
    """Done (RFC 7009 §2.2 answers 200 for unknown tokens too)."""


class JsonObject(BaseModel):
    """A JSON object; its members are defined by the specification the route names."""

    model_config = ConfigDict(extra="allow")
