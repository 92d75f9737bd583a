"""`/openapi.json` is valid OpenAPI 3.1 and documents every operation fully (issue 15),
the plugins' routes included."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

PLUGINS = {"DID_ENABLED": True, "OIDC_ENABLED": True, "DELEGATION_ENABLED": True}
# Form-encoded, RFC 6749 §5.2 errors (DESIGN.md, HTTP conventions).
OAUTH_ENDPOINTS = {"/api/v1/token", "/api/v1/token/introspect", "/api/v1/token/revoke"}
# Public by design: discovery, keys, DID documents, health and metrics.
PUBLIC_PREFIXES = ("/.well-known/", "/agents/", "/health", "/metrics")
JSON = "application/json"
PLUGIN_PATHS = {"/api/v1/delegations", "/api/v1/oidc/userinfo", "/.well-known/did.json"}


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {**PLUGINS, "OPERATOR_TOKEN": "x" * 40}


@pytest.fixture
def agentidp_backend() -> str:
    return "sqlite"  # the document does not depend on storage


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/components/schemas/")
        node = document["components"]["schemas"][name]
    return node


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    methods = {"get", "put", "post", "delete", "patch"}
    return [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in methods
    ]


async def test_openapi_document_is_complete(agentidp_client: Any) -> None:
    response = await agentidp_client.get("/openapi.json")
    assert response.status_code == 200
    document = await response.get_json()
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)  # raises on an invalid document

    assert set(document["paths"]) >= PLUGIN_PATHS, "plugins' routes are documented"
    assert not any(p.startswith("/docs") for p in document["paths"])
    declared_tags = {t["name"] for t in document["tags"]}
    schemes = document["components"]["securitySchemes"]
    seen_ids: set[str] = set()
    for path, method, op in operations(document):
        where = f"{method.upper()} {path}"
        assert op.get("summary"), f"{where}: no summary"
        assert op.get("operationId"), where
        assert op["operationId"] not in seen_ids, where
        seen_ids.add(op["operationId"])
        assert op.get("tags"), f"{where}: tags"
        assert set(op["tags"]) <= declared_tags, f"{where}: tags"

        responses = op["responses"]
        assert any(s.startswith("2") for s in responses), f"{where}: no success response"
        for status, answer in responses.items():
            assert answer.get("description") is not None, f"{where} {status}"

        if method in ("post", "put", "patch") and path not in {"/api/v1/oidc/userinfo"}:
            body = op.get("requestBody")
            assert body, f"{where}: request body"
            assert body.get("required") is True, f"{where}: request body"
            media = "application/x-www-form-urlencoded" if path in OAUTH_ENDPOINTS else JSON
            assert set(body["content"]) == {media}, f"{where}: {set(body['content'])}"
            schema = resolve(document, body["content"][media]["schema"])
            assert schema.get("properties"), f"{where}: request body schema"

        if path in OAUTH_ENDPOINTS:
            assert "security" not in op, f"{where}: clients authenticate in the body or Basic"
            for status in ("400", "401"):
                schema = resolve(
                    document, responses[status]["content"]["application/json"]["schema"]
                )
                assert {"error", "error_description"} <= set(schema["properties"]), where
                assert schema["required"] == ["error"], where
        elif path.startswith("/api/v1/"):
            assert op.get("security"), f"{where}: bearer security"
            for requirement in op["security"]:
                for name in requirement:
                    assert schemes[name]["scheme"] == "bearer", where
            if path != "/api/v1/oidc/userinfo":  # RFC 6750 §3 bodies, checked below
                for status in ("400", "401", "403", "429", "503"):
                    schema = resolve(
                        document, responses[status]["content"]["application/json"]["schema"]
                    )
                    assert set(schema["required"]) == {"code", "message", "request_id"}, where
        else:
            assert path.startswith(PUBLIC_PREFIXES), f"{where}: unexpected public route"
            assert "security" not in op, where

    userinfo = document["paths"]["/api/v1/oidc/userinfo"]["get"]["responses"]["401"]
    assert "error_description" in userinfo["content"]["application/json"]["schema"]["properties"]


async def test_docs_page_uses_no_cdn(agentidp_client: Any) -> None:
    """The page's script and stylesheet are served by us (offline), from the package."""
    page = await (await agentidp_client.get("/docs")).get_data(as_text=True)
    assert "cdn" not in page.lower()
    assert "https://" not in page
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")):
        assert f"/docs/assets/{asset}" in page
        response = await agentidp_client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200
        assert kind in response.content_type
        assert len(await response.get_data()) > 10_000
    assert (await agentidp_client.get("/docs/assets/swagger-editor.js")).status_code == 404
