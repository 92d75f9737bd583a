"""RFC 6749 §5.2 error responses."""

from __future__ import annotations

import json

from quart import Response


class OAuthError(Exception):
    """An OAuth error answer: `error`, `error_description`, status and headers."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}

    def response(self) -> Response:
        body = json.dumps({"error": self.error, "error_description": self.description})
        response = Response(body, status=self.status, content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        for name, value in self.headers.items():
            response.headers[name] = value
        return response


def invalid_client(used_basic: bool) -> OAuthError:
    """One answer for every authentication failure: unknown client, wrong secret,
    bad assertion, suspended agent — so none can be told from another."""
    headers = {"WWW-Authenticate": 'Basic realm="agentidp"'} if used_basic else {}
    return OAuthError("invalid_client", "client authentication failed", 401, headers)
