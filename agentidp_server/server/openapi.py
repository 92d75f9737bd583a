"""The OpenAPI 3.1 document (`/openapi.json`) and docs page (`/docs`), via quart-schema.

The docs page's JavaScript and CSS are served from the swagger-ui-py package, so
`/docs` works with no internet access (quart-schema points at a CDN by default).
Every operation's error responses come from how it is reached: a management-API
route behind `require_scope` answers `{code, message, request_id}`, an OAuth
endpoint answers RFC 6749 §5.2 `{error, error_description}`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from importlib.resources import files
from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from quart import Quart, Response, abort, jsonify
from quart_schema import QuartSchema, RequestSchemaValidationError, hide
from quart_schema.openapi import OpenAPIProvider
from werkzeug.routing.rules import Rule

from agentidp_server.server.http import error_body

F = TypeVar("F", bound=Callable[..., Any])

DOCS_ASSETS_PATH = "/docs/assets"
# Only what the page loads: the package also ships the Swagger editor (20 MB) we do not serve.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
}

# Set on a view function: {status: shape or (content type, schema, description)}.
RESPONSES_ATTRIBUTE = "_agentidp_openapi_responses"
ErrorShape = Literal["api", "oauth"]
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "ApiError": {
        "title": "ApiError",
        "description": "The management API's error (DESIGN.md, HTTP conventions).",
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Stable UPPER_SNAKE code"},
            "message": {"type": "string"},
            "request_id": {"type": ["string", "null"]},
        },
        "required": ["code", "message", "request_id"],
    },
    "OAuthError": {
        "title": "OAuthError",
        "description": "RFC 6749 §5.2 error response.",
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "error_description": {"type": "string"},
        },
        "required": ["error"],
    },
}
_SHAPE_SCHEMA = {"api": "ApiError", "oauth": "OAuthError"}
ERROR_DESCRIPTIONS = {
    400: "Invalid request",
    401: "Missing or invalid credentials",
    403: "Not allowed",
    404: "Not found",
    409: "Conflicts with the object's state",
    410: "Gone",
    413: "Request body too large",
    415: "Unsupported media type",
    429: "Rate or tier limit exceeded",
    503: "A dependency is not answering; retry later",
}
# Every route behind require_scope can answer these (auth.py, quotas, storage outages).
BEARER_ERRORS = (400, 401, 403, 429, 503)
# What any route can answer when its storage is down or its caller is over a rate limit.
COMMON_ERRORS = (429, 503)

# A tag per capability, named after the blueprint that serves it; a third-party
# plugin's blueprint gets its own name as its tag.
TAGS: dict[str, tuple[str, str]] = {
    "oauth": ("OAuth 2.0", "Tokens, introspection, revocation, metadata and keys"),
    "agents": ("Agents", "Register, list, change and decommission agents"),
    "credentials": ("Credentials", "Client secrets and public keys of agents"),
    "audit": ("Audit", "The organisation's hash-chained audit log"),
    "operator": ("Operator", "Changes only the server's operator may make"),
    "health": ("Health", "Liveness and readiness"),
    "metrics": ("Metrics", "Prometheus metrics"),
    "did": ("DID", "did:web documents (plugin agentidp-did)"),
    "oidc": ("OpenID Connect", "OpenID Provider metadata and userinfo (plugin agentidp-oidc)"),
    "delegation": ("Delegation", "Delegations between agents (plugin agentidp-delegation)"),
}


def document_errors(*statuses: int, shape: ErrorShape = "api") -> Callable[[F], F]:
    """Document error statuses a view answers, in the API's or OAuth's error shape."""

    def decorate(view: F) -> F:
        table = dict(getattr(view, RESPONSES_ATTRIBUTE, {}))
        table.update({status: shape for status in statuses})
        setattr(view, RESPONSES_ATTRIBUTE, table)
        return view

    return decorate


def _documented(status: int, entry: tuple[Any, Any, str]) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        table = dict(getattr(view, RESPONSES_ATTRIBUTE, {}))
        table[status] = entry
        setattr(view, RESPONSES_ATTRIBUTE, table)
        return view

    return decorate


def document_raw_response(
    status: int, content_type: str, schema: dict[str, Any], description: str
) -> Callable[[F], F]:
    """Document a response that is not application/json (DID documents, metrics text)."""
    return _documented(status, (content_type, schema, description))


def document_empty(status: int, description: str) -> Callable[[F], F]:
    """Document a response with no body (204)."""
    return _documented(status, (None, None, description))


def _error_response(status: int, shape: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{_SHAPE_SCHEMA[shape]}"}
    return {
        "description": ERROR_DESCRIPTIONS.get(status, "Error"),
        "content": {"application/json": {"schema": ref}},
    }


class AgentIdPOpenAPIProvider(OpenAPIProvider):
    """quart-schema's provider, completed with what its decorators cannot say."""

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        document["components"]["schemas"].update(ERROR_SCHEMAS)
        used = {
            tag for ops in document["paths"].values() for o in ops.values() for tag in o["tags"]
        }
        names = {name: description for name, description in TAGS.values()}
        document["tags"] = [
            {"name": tag, **({"description": names[tag]} if tag in names else {})}
            for tag in sorted(used)
        ]
        return document

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        blueprint, _, name = rule.endpoint.rpartition(".")
        extra: dict[int, Any] = getattr(func, RESPONSES_ATTRIBUTE, {})
        for operations in paths.values():
            for method, operation in operations.items():
                # Each method gets its own dicts: quart-schema shares them between methods.
                operation["responses"] = dict(operation["responses"])
                operation["operationId"] = f"{method}_{blueprint or 'app'}_{name.strip('_')}"
                if not operation.get("tags"):
                    operation["tags"] = [TAGS.get(blueprint, (blueprint or "app", ""))[0]]
                if "requestBody" in operation:
                    # quart-schema never marks the body required (PITFALLS.md); ours always are.
                    operation["requestBody"] = {**operation["requestBody"], "required": True}
                security = operation.get("security") or []
                defaults: dict[int, Any] = {s: "api" for s in COMMON_ERRORS}
                if security:
                    defaults.update({s: "api" for s in BEARER_ERRORS})
                    if rule.arguments:
                        defaults[404] = "api"
                elif "requestBody" in operation:
                    defaults[400] = "api"
                for status, how in {**defaults, **extra}.items():
                    if isinstance(how, tuple):
                        content_type, schema, description = how
                        response = {"description": description}
                        if content_type is not None:
                            response["content"] = {content_type: {"schema": schema}}
                    else:
                        response = _error_response(status, how)
                    operation["responses"].setdefault(str(status), response)
                operation["responses"] = {
                    str(k): v for k, v in sorted(operation["responses"].items(), key=_status_key)
                }
        return paths, components


def _status_key(item: tuple[Any, Any]) -> str:
    return str(item[0])


def _describe(error: Any) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()
        )
    return "request body must be a JSON object"


@hide
async def docs_asset(name: str) -> Response:
    """Swagger UI's script and stylesheet, from the swagger-ui-py package."""
    if name not in DOCS_ASSETS:
        abort(404)
    body = (files("swagger_ui") / "static" / name).read_bytes()
    response = Response(body, content_type=DOCS_ASSETS[name])
    # The files change only with the installed package: let browsers keep them a day.
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


def install(app: Quart) -> None:
    app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js"
    app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = f"{DOCS_ASSETS_PATH}/swagger-ui.css"
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={"title": "AgentIdP", "version": version("agentidp-server")},
        security_schemes={
            "bearer": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"},
            # The server's OPERATOR_TOKEN (api/operator.py).
            "operator": {"type": "http", "scheme": "bearer"},
        },
        conversion_preference="pydantic",
        openapi_provider_class=AgentIdPOpenAPIProvider,
    )
    app.add_url_rule(f"{DOCS_ASSETS_PATH}/<name>", "docs_asset", docs_asset, methods=["GET"])

    @app.errorhandler(RequestSchemaValidationError)
    async def invalid_body(error: RequestSchemaValidationError) -> tuple[Response, int]:
        return jsonify(error_body("VALIDATION_ERROR", _describe(error.validation_error))), 400
