"""Request parameters of the OAuth endpoints: form-encoded, or a JSON object."""

from __future__ import annotations

from urllib.parse import parse_qsl

from quart import request

from agentidp_server.oauth.errors import OAuthError
from agentidp_server.server.http import BadJson, hostile, strict_loads

MAX_BODY = 64 * 1024


async def read_params() -> dict[str, str]:
    """The parameters of the Quart request being served (see `parse_params`)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise OAuthError("invalid_request", "request body is too large")
    raw: bytes = await request.get_data(as_text=False)  # type: ignore[assignment]
    return parse_params(raw, request.mimetype)


def parse_params(raw: bytes, mimetype: str) -> dict[str, str]:
    """RFC 6749 §3.2: form-encoded parameters, none repeated; a JSON body is accepted too."""
    if len(raw) > MAX_BODY:
        raise OAuthError("invalid_request", "request body is too large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise OAuthError("invalid_request", "request body is not valid UTF-8") from error
    if mimetype == "application/json":
        try:
            data = strict_loads(text) if text.strip() else {}
        except BadJson as error:
            raise OAuthError("invalid_request", error.message) from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise OAuthError("invalid_request", "JSON body must be an object of string values")
        return data
    if mimetype not in ("application/x-www-form-urlencoded", ""):
        raise OAuthError(
            "invalid_request", "use application/x-www-form-urlencoded (or application/json)"
        )
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError as error:
        raise OAuthError("invalid_request", "request body is not valid form encoding") from error
    for name, value in pairs:
        if name in params:
            raise OAuthError("invalid_request", f"parameter {name} is repeated")
        if hostile(name) or hostile(value):
            # Refused before any lookup: PostgreSQL fails on NUL in text (issue 25 item 2).
            raise OAuthError("invalid_request", f"parameter {name[:64]!r} contains a NUL character")
        params[name] = value
    return params
