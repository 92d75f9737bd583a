"""Request ids, access lines, CORS and JSON error bodies for every response."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask.json.provider import JSONProvider
from quart import Quart, Request, Response, current_app, jsonify, request
from quart_cors import cors
from werkzeug.exceptions import HTTPException

from agentidp_server.server import request_scope
from agentidp_server.storage.errors import StorageUnavailable, log_outage

access_log = logging.getLogger("agentidp.access")
log = logging.getLogger("agentidp")

RETRY_AFTER_SECONDS = 5
# app.extensions key: blueprint name -> the error its protocol answers bad input with
# (the OAuth blueprint's is RFC 6749 §5.2 invalid_request); others get the API's 400.
INPUT_ERRORS = "agentidp.input_errors"


# Status, headers and JSON body of an answer, whichever pipeline sends it.
Answer = tuple[int, dict[str, str], dict[str, Any]]


def error_body(code: str, message: str) -> dict[str, Any]:
    """The management API's error shape (DESIGN.md "HTTP conventions")."""
    current = request_scope.current()
    request_id = current.request_id if current is not None else None
    return {"code": code, "message": message, "request_id": request_id}


# Raised by quotas/; defined here with its answer so the HTTP plumbing needs no quotas.
class RateLimited(Exception):
    """Over a limit; `code` is the runbook's (`RATE_LIMIT_EXCEEDED` or `tier_limit_exceeded`)."""

    def __init__(self, code: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers


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


# Deeper than any body the API takes; stops a 30,000-deep body before it recurses.
MAX_JSON_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def hostile(text: str) -> bool:
    """NUL (PostgreSQL text cannot hold it) or a lone surrogate (no UTF-8 encoding)."""
    # Most values are ASCII: one C-speed scan each, the regex only for the rest.
    return "\x00" in text or (not text.isascii() and _SURROGATE.search(text) is not None)


class BadJson(ValueError):
    """A body refused by `strict_loads`; `code` is the management API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in pairs:
        if name in data:
            # As a repeated form parameter is refused (RFC 6749 §3.2): no silent last-wins.
            message = f"request body is not valid JSON: key {name[:64]!r} is repeated"
            raise BadJson("INVALID_JSON", message)
        data[name] = value
    return data


def strict_loads(text: str | bytes) -> Any:
    """JSON with unique keys, at most MAX_JSON_DEPTH deep, without NUL or lone surrogates."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise BadJson("INVALID_JSON", _too_deep()) from None
    except json.JSONDecodeError as error:
        raise BadJson("INVALID_JSON", f"request body is not valid JSON: {error}") from None
    except UnicodeDecodeError:
        raise BadJson("INVALID_JSON", "request body is not valid UTF-8") from None
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if hostile(value):
                raise BadJson("INVALID_INPUT", _HOSTILE_BODY)
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise BadJson("INVALID_JSON", _too_deep())
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for key, item in items:
                if key is not None and hostile(key):
                    raise BadJson("INVALID_INPUT", _HOSTILE_BODY)
                stack.append((item, depth + 1))
    return data


_HOSTILE_BODY = "request body contains a NUL character or a lone surrogate"


def _too_deep() -> str:
    return f"request body is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels"


class _StrictJson(JSONProvider):
    """What `Request.get_json` parses with (quart-schema owns `app.json`, for responses)."""

    def __init__(self) -> None:
        pass  # parsing needs no app

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return strict_loads(s)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return json.dumps(obj, **kwargs)


_STRICT_JSON = _StrictJson()


class StrictRequest(Request):
    def on_json_loading_failed(self, error: Exception) -> Any:
        # The API's error shape and a message about JSON, not werkzeug's default text.
        if isinstance(error, BadJson):
            raise ApiError(400, error.code, error.message)
        raise ApiError(400, "INVALID_JSON", f"request body is not valid JSON: {error}")


def _refuse_hostile_request() -> None:
    """Path and query values with NUL or lone surrogates, refused before any view runs."""
    where = None
    if hostile(request.path):
        where = "the path"
    elif any(hostile(k) or hostile(v) for k, v in request.args.items(multi=True)):
        where = "a query parameter"
    if where is not None:
        message = f"{where} contains a NUL character or a lone surrogate"
        own_error = current_app.extensions.get(INPUT_ERRORS, {}).get(request.blueprint)
        if own_error is not None:
            raise own_error(message)
        raise ApiError(400, "INVALID_INPUT", message)


def _code(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def install(app: Quart, settings: Any) -> None:
    access_log, structured = bool(settings.ACCESS_LOG), settings.LOG_FORMAT == "json"

    app.request_class = StrictRequest

    @app.before_request
    async def assign_request_id() -> None:
        request_scope.begin(request.method, request.path, request.remote_addr, request.headers)

    @app.before_request
    async def refuse_hostile_input() -> None:
        # Quart hands each request app.json (quart-schema's, made for responses).
        request.json_module = _STRICT_JSON
        _refuse_hostile_request()
        if request.is_json and request.blueprint != "oauth" and (await request.get_data()).strip():
            # Parsed (and cached) here, so a bad body is refused before any view runs SQL;
            # the OAuth endpoints read their bodies themselves (oauth/params.py).
            await request.get_json()

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


_CONTROL = re.compile(r'[\x00-\x1f\x7f"\\]')


def _escaped(text: str) -> str:
    """Control characters, quotes and backslashes as \\xNN, so one request is one line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


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
    # The path arrives percent-decoded: a %0A must not start a forged line of its own.
    path, referrer, user_agent = _escaped(path), _escaped(referrer), _escaped(user_agent)
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
