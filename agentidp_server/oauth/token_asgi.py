"""POST /api/v1/token as a bare ASGI handler in front of Quart.

The token endpoint is the hot path, and Quart's per-request machinery (request
and context objects, routing, before/after hooks, response conversion) costs
about as much CPU as issuing the token itself. This handler serves exactly
that route with the same answers, headers, request ids, metrics, access log
and audit events, through the same functions as the Quart view. Anything it
does not cover goes to Quart unchanged: other methods (CORS preflight, 405),
cross-origin requests when CORS is on, the metrics port, and every request
when a plugin has hooked all requests (`before_app_request` and the like).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from quart import Quart

from agentidp_server.oauth.endpoints import TOKEN_PATH, issue
from agentidp_server.oauth.errors import OAuthError
from agentidp_server.oauth.params import MAX_BODY, parse_params
from agentidp_server.quotas.limits import RateLimited
from agentidp_server.server import request_scope
from agentidp_server.server.http import (
    Answer,
    access_line,
    rate_limited_answer,
    unavailable_answer,
    unexpected_answer,
)
from agentidp_server.server.metrics import metrics_port, observe
from agentidp_server.storage.errors import StorageUnavailable
from agentidp_server.util import json_codec

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]  # Quart's own, more precise types

log = logging.getLogger("agentidp")
# Modules whose app-wide request hooks this handler reproduces (or that add none here).
_KERNEL_MODULES = ("agentidp_server.", "quart_cors", "quart_schema")


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


def kernel_hooks_only(app: Quart) -> bool:
    """Whether every app-wide before/after/teardown request function is the kernel's."""
    tables = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    functions = [f for table in tables for key in (None, "oauth") for f in table.get(key, [])]
    return all(getattr(f, "__module__", "").startswith(_KERNEL_MODULES) for f in functions)


class TokenEndpoint:
    """Wraps the app's ASGI callable; decides per request whether to serve it here."""

    def __init__(self, app: Quart, idp: IdP, downstream: ASGIApp) -> None:
        settings = idp.settings
        self._app = app
        self._idp = idp
        self.downstream = downstream
        self._access_log = bool(settings.ACCESS_LOG)
        self._structured = settings.LOG_FORMAT == "json"
        self._cors = bool(str(settings.CORS_ORIGIN).strip(" ,"))
        self._metrics_port = metrics_port(settings)
        self._enabled: bool | None = None  # decided on first use: plugins are mounted by then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == TOKEN_PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and self._serves(scope)
        ):
            await self._serve(scope, receive, send)
        else:
            await self.downstream(scope, receive, send)

    def _serves(self, scope: Scope) -> bool:
        if self._enabled is None:
            self._enabled = kernel_hooks_only(self._app)
            if not self._enabled:
                log.info("A plugin hooks every request: the token endpoint is served by Quart")
        if not self._enabled:
            return False
        if self._metrics_port:
            server = scope.get("server") or (None, None)
            if server[1] == self._metrics_port:
                return False  # Quart answers 404 there, as for any other route
        if self._cors:
            return not any(name == b"origin" for name, _ in scope["headers"])
        return True

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            # The first of repeated headers wins, as werkzeug's Headers.get does.
            headers.setdefault(raw_name.decode("latin-1").lower(), raw_value.decode("latin-1"))
        client = scope.get("client")
        current = request_scope.begin("POST", TOKEN_PATH, client[0] if client else None, headers)
        try:
            status, extra, payload = await self._answer(receive, headers)
        except _Disconnected:
            return
        content = json_codec.dumps(payload)
        response_headers = {
            "content-type": "application/json",
            "content-length": str(len(content)),
            **{name.lower(): value for name, value in extra.items()},
            "x-request-id": current.request_id,
        }
        for name, value in current.rate_headers.items():
            response_headers.setdefault(name.lower(), value)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in response_headers.items()
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
        observe(self._idp, "POST", TOKEN_PATH, status, current.started)
        if self._access_log:
            access_line(
                remote=current.remote_addr or "-",
                method="POST",
                path=TOKEN_PATH,
                http_version=str(scope.get("http_version", "1.1")),
                status=status,
                size=len(content),
                referrer=headers.get("referer", "-"),
                user_agent=headers.get("user-agent", "-"),
                duration=time.perf_counter() - current.started,
                structured=self._structured,
            )

    async def _answer(self, receive: Receive, headers: dict[str, str]) -> Answer:
        try:
            body = await _read_body(receive, headers)
            params = parse_params(body, _mimetype(headers.get("content-type", "")))
            return 200, _NO_STORE, await issue(self._idp, params)
        except OAuthError as error:
            return error.answer()
        except RateLimited as error:
            return rate_limited_answer(error)
        except StorageUnavailable as error:
            return unavailable_answer(error)
        except _Disconnected:
            raise  # nobody to answer; not an unexpected error
        except Exception:
            return unexpected_answer()


# RFC 6749 §5.1: token responses are never cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _mimetype(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


async def _read_body(receive: Receive, headers: dict[str, str]) -> bytes:
    """The request body; over MAX_BODY it is refused as the Quart view refuses it."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise OAuthError("invalid_request", "request body is too large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise OAuthError("invalid_request", "request body is too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
