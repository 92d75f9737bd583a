"""The OpenAPI 3.1 document (`/openapi.json`) and docs page (`/docs`), via quart-schema."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from quart import Quart, Response, jsonify
from quart_schema import QuartSchema, RequestSchemaValidationError

from agentidp_server import __version__
from agentidp_server.http import error_body


def _describe(error: Any) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()
        )
    return "request body must be a JSON object"


def install(app: Quart) -> None:
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={"title": "AgentIdP", "version": __version__},
        security_schemes={"bearer": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}},
        conversion_preference="pydantic",
    )

    @app.errorhandler(RequestSchemaValidationError)
    async def invalid_body(error: RequestSchemaValidationError) -> tuple[Response, int]:
        return jsonify(error_body("VALIDATION_ERROR", _describe(error.validation_error))), 400
