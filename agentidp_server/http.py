"""Request ids, access lines, CORS and JSON error bodies for every response."""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from quart import Quart, Response, jsonify, request
from quart_cors import cors
from werkzeug.exceptions import HTTPException

from agentidp_server import request_scope
from agentidp_server.quotas import RateLimited
from agentidp_server.storage.errors import StorageUnavailable

access_log = logging.getLogger("agentidp.access")
log = logging.getLogger("agentidp")

RETRY_AFTER_SECONDS = 5


# Status, headers and JSON body of an answer, whichever pipeline sends it.
Answer = tuple[int, dict[str, str], dict[str, Any]]


def error_body(code: str, message: str) -> dict[str, Any]:
    """The management API's error shape (DESIGN.md "HTTP conventions")."""
    current = request_scope.current()
    request_id = current.request_id if current is not None else None
    return {"code": code, "message": message, "request_id": request_id}


def rate_limited_answer(error: RateLimited) -> Answer:
    # The runbook's 429 body, on OAuth and management endpoints alike.
    return 429, dict(error.headers), error_body(error.code, error.message)


def unavailable_answer(error: StorageUnavailable) -> Answer:
    log_outage(error)
    message = f"the {error.component} is not answering; retry later"
    return (
        503,
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
        error_body("SERVICE_UNAVAILABLE", message),
    )


def unexpected_answer() -> Answer:
    """Call from an exception handler: the traceback is logged, the caller learns nothing."""
    log.exception("unhandled error")
    return 500, {}, error_body("INTERNAL_ERROR", "internal server error")


def _respond(answer: Answer) -> Response:
    status, headers, body = answer
    response = jsonify(body)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name] = value
    return response


class ApiError(Exception):
    """A management API error: status, stable code and a message safe to show."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _code(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def install(app: Quart, settings: Any) -> None:
    access_log, structured = bool(settings.ACCESS_LOG), settings.LOG_FORMAT == "json"

    @app.before_request
    async def assign_request_id() -> None:
        request_scope.begin(request.method, request.path, request.remote_addr, request.headers)

    @app.after_request
    async def finish(response: Response) -> Response:
        current = request_scope.current()
        response.headers["X-Request-Id"] = current.request_id if current else str(uuid.uuid4())
        for name, value in (current.rate_headers if current else {}).items():
            response.headers.setdefault(name, value)
        if access_log:
            _access_line(response, structured)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        # Keep the exception's own headers (Allow on 405: PITFALLS.md).
        response = jsonify(error_body(_code(error.name), error.description or error.name))
        response.status_code = error.code or 500
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        response = jsonify(error_body(error.code, error.message))
        response.status_code = error.status
        for name, value in error.headers.items():
            response.headers[name] = value
        return response

    @app.errorhandler(RateLimited)
    async def rate_limited(error: RateLimited) -> Response:
        return _respond(rate_limited_answer(error))

    @app.errorhandler(UnicodeDecodeError)
    async def bad_encoding(_: UnicodeDecodeError) -> tuple[Response, int]:
        # Quart decodes bodies strictly and would otherwise answer 500 (PITFALLS.md).
        return jsonify(error_body("BAD_REQUEST", "request body is not valid UTF-8")), 400

    @app.errorhandler(StorageUnavailable)
    async def unavailable(error: StorageUnavailable) -> Response:
        return _respond(unavailable_answer(error))

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        return _respond(unexpected_answer())

    origins = [o.strip() for o in str(settings.CORS_ORIGIN).split(",") if o.strip()]
    if origins:
        cors(
            app,
            allow_origin=origins,
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"],
            expose_headers=[
                "X-Request-Id",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Retry-After",
            ],
            max_age=600,
        )


# The runbook's lines for a store that drops after startup.
_OUTAGE_LINES = {"database": "Unexpected pg pool error %s", "kv": "Redis client error %s"}
_OUTAGE_LOG_INTERVAL = 10.0
_last_outage_log: dict[str, float] = {}


def log_outage(error: StorageUnavailable) -> None:
    """One line per store per interval, not one per failing request."""
    now = time.monotonic()
    if now - _last_outage_log.get(error.component, -_OUTAGE_LOG_INTERVAL) >= _OUTAGE_LOG_INTERVAL:
        _last_outage_log[error.component] = now
        log.error(_OUTAGE_LINES.get(error.component, "%s"), error)


def _access_line(response: Response, structured: bool) -> None:
    access_line(
        remote=request.remote_addr or "-",
        method=request.method,
        path=request.path,
        http_version=request.http_version,
        status=response.status_code,
        size=response.content_length,
        referrer=request.headers.get("Referer", "-"),
        user_agent=request.headers.get("User-Agent", "-"),
        duration=time.perf_counter() - request_scope.started(),
        structured=structured,
    )


def access_line(
    *,
    remote: str,
    method: str,
    path: str,
    http_version: str,
    status: int,
    size: int | None,
    referrer: str,
    user_agent: str,
    duration: float,
    structured: bool,
) -> None:
    """Combined log format, as the runbook's development logs show."""
    stamp = datetime.now(UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    line = (
        f'{remote} - - [{stamp}] "{method} {path} HTTP/{http_version}" '
        f'{status} {size if size is not None else "-"} "{referrer}" "{user_agent}"'
    )
    if structured:
        access_log.info(
            line,
            extra={
                "access": {
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "remote": remote,
                }
            },
        )
    else:
        access_log.info(line)
