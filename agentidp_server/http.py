"""Request ids, access lines, CORS and JSON error bodies for every response."""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from quart import Quart, Response, g, jsonify, request
from quart_cors import cors
from werkzeug.exceptions import HTTPException

from agentidp_server.logs import request_id_var
from agentidp_server.quotas import RateLimited
from agentidp_server.storage.errors import StorageUnavailable

access_log = logging.getLogger("agentidp.access")
log = logging.getLogger("agentidp")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
RETRY_AFTER_SECONDS = 5


def error_body(code: str, message: str) -> dict[str, Any]:
    """The management API's error shape (DESIGN.md "HTTP conventions")."""
    return {"code": code, "message": message, "request_id": g.get("request_id")}


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
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _VALID_REQUEST_ID.match(incoming) else str(uuid.uuid4())
        g.started = time.perf_counter()
        request_id_var.set(g.request_id)

    @app.after_request
    async def finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id") or str(uuid.uuid4())
        for name, value in (g.get("rate_headers") or {}).items():
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
        # The runbook's 429 body, on OAuth and management endpoints alike.
        response = jsonify(error_body(error.code, error.message))
        response.status_code = 429
        for name, value in error.headers.items():
            response.headers[name] = value
        return response

    @app.errorhandler(UnicodeDecodeError)
    async def bad_encoding(_: UnicodeDecodeError) -> tuple[Response, int]:
        # Quart decodes bodies strictly and would otherwise answer 500 (PITFALLS.md).
        return jsonify(error_body("BAD_REQUEST", "request body is not valid UTF-8")), 400

    @app.errorhandler(StorageUnavailable)
    async def unavailable(error: StorageUnavailable) -> Response:
        log_outage(error)
        response = jsonify(
            error_body(
                "SERVICE_UNAVAILABLE", f"the {error.component} is not answering; retry later"
            )
        )
        response.status_code = 503
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return jsonify(error_body("INTERNAL_ERROR", "internal server error")), 500

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
    """Combined log format, as the runbook's development logs show."""
    remote = request.remote_addr or "-"
    stamp = datetime.now(UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    target = request.path
    size = response.content_length if response.content_length is not None else "-"
    referrer = request.headers.get("Referer", "-")
    agent = request.headers.get("User-Agent", "-")
    line = (
        f'{remote} - - [{stamp}] "{request.method} {target} HTTP/{request.http_version}" '
        f'{response.status_code} {size} "{referrer}" "{agent}"'
    )
    if structured:
        access_log.info(
            line,
            extra={
                "access": {
                    "method": request.method,
                    "path": target,
                    "status": response.status_code,
                    "duration_ms": round((time.perf_counter() - g.get("started", 0)) * 1000, 3),
                    "remote": remote,
                }
            },
        )
    else:
        access_log.info(line)
