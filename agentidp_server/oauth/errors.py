"""RFC 6749 §5.2 error responses."""

from __future__ import annotations

import json
from typing import Any

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

    def answer(self) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Status, headers and body, whichever pipeline sends them."""
        # RFC 6749 §5.2 errors are token responses too: never cached (§5.1).
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache", **self.headers}
        return self.status, headers, {"error": self.error, "error_description": self.description}

    def response(self) -> Response:
        status, headers, body = self.answer()
        response = Response(json.dumps(body), status=status, content_type="application/json")
        for name, value in headers.items():
            response.headers[name] = value
        return response


def invalid_client(used_basic: bool) -> OAuthError:
    """One answer for every authentication failure: unknown client, wrong secret,
    bad assertion, suspended agent — so none can be told from another."""
    headers = {"WWW-Authenticate": 'Basic realm="agentidp"'} if used_basic else {}
    return OAuthError("invalid_client", "client authentication failed", 401, headers)
