"""HTTP conventions every response follows: request ids, JSON errors, encoding, CORS."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import jsonify, request

from agentidp_server.app import create_app
from agentidp_server.testkit import embedded_settings

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PORTAL = "http://localhost:3001"
OTHER_ALLOWED = "https://portal.example"


def _app(tmp_path: Any, **overrides: Any) -> Any:
    app = create_app(embedded_settings(tmp_path, **overrides))

    @app.post("/_test/echo")
    async def echo() -> Any:
        return jsonify(received=await request.get_json())

    @app.get("/_test/boom")
    async def boom() -> Any:
        raise RuntimeError("kaboom")

    return app


async def _client(app: Any) -> AsyncIterator[Any]:
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.fixture
async def client(tmp_path: Any) -> AsyncIterator[Any]:
    async for c in _client(_app(tmp_path)):
        yield c


@pytest.fixture
async def cors_client(tmp_path: Any) -> AsyncIterator[Any]:
    async for c in _client(_app(tmp_path, CORS_ORIGIN=f"{PORTAL}, {OTHER_ALLOWED}")):
        yield c


# --- request ids -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/health"), ("GET", "/health/ready"), ("GET", "/nowhere"), ("POST", "/health")],
)
async def test_every_response_has_a_request_id(client: Any, method: str, path: str) -> None:
    response = await client.open(path, method=method)
    assert UUID.match(response.headers["X-Request-Id"]), response.headers


async def test_request_ids_differ(client: Any) -> None:
    ids = {(await client.get("/health")).headers["X-Request-Id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize(
    "incoming",
    ["abc-123", "req_1.2:3", str(uuid.uuid4()), "A" * 128],
)
async def test_valid_incoming_request_id_is_kept(client: Any, incoming: str) -> None:
    response = await client.get("/health", headers={"X-Request-Id": incoming})
    assert response.headers["X-Request-Id"] == incoming


@pytest.mark.parametrize(
    "incoming",
    ["A" * 129, "has space", "semi;colon", "<script>", "line\tbreak", "ünïcode", "a/b"],
)
async def test_invalid_incoming_request_id_is_replaced(client: Any, incoming: str) -> None:
    response = await client.get("/nowhere", headers={"X-Request-Id": incoming})
    returned = response.headers["X-Request-Id"]
    assert returned != incoming
    assert UUID.match(returned)
    assert (await response.get_json())["request_id"] == returned


# --- JSON errors -------------------------------------------------------------------


async def test_404_is_json_with_request_id(client: Any) -> None:
    response = await client.get("/no/such/route", headers={"X-Request-Id": "trace-404"})
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.get_json()
    assert body["code"] == "NOT_FOUND"
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["request_id"] == "trace-404"
    assert set(body) == {"code", "message", "request_id"}


async def test_405_keeps_allow_header(client: Any) -> None:
    response = await client.post("/health", headers={"X-Request-Id": "trace-405"})
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert "GET" in allowed
    assert "POST" not in allowed
    body = await response.get_json()
    assert body["code"] == "METHOD_NOT_ALLOWED"
    assert body["request_id"] == "trace-405"


async def test_unexpected_error_is_500_json_without_details(client: Any) -> None:
    response = await client.get("/_test/boom", headers={"X-Request-Id": "trace-500"})
    assert response.status_code == 500
    body = await response.get_json()
    assert body == {
        "code": "INTERNAL_ERROR",
        "message": "internal server error",
        "request_id": "trace-500",
    }
    assert "kaboom" not in await response.get_data(as_text=True)


async def test_json_post_round_trips(client: Any) -> None:
    response = await client.post("/_test/echo", json={"name": "agent-ü"})
    assert response.status_code == 200
    assert await response.get_json() == {"received": {"name": "agent-ü"}}


async def test_json_body_not_utf8_is_400(client: Any) -> None:
    response = await client.post(
        "/_test/echo",
        data=b'{"name": "\xff\xfe\xc3("}',
        headers={"Content-Type": "application/json", "X-Request-Id": "trace-enc"},
    )
    assert response.status_code == 400
    body = await response.get_json()
    assert body["code"] == "BAD_REQUEST"
    assert body["request_id"] == "trace-enc"
    assert "X-Request-Id" in response.headers


async def test_malformed_json_is_400(client: Any) -> None:
    response = await client.post(
        "/_test/echo", data=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    body = await response.get_json()
    # Issue 15: the API's own code and a message about JSON, not werkzeug's default text.
    assert body["code"] == "INVALID_JSON"
    assert body["message"].startswith("request body is not valid JSON: ")
    assert body["request_id"] == response.headers["X-Request-Id"]


# --- CORS ---------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [PORTAL, OTHER_ALLOWED])
async def test_cors_simple_request_from_listed_origin(cors_client: Any, origin: str) -> None:
    response = await cors_client.get("/health", headers={"Origin": origin})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    exposed = response.headers.get("Access-Control-Expose-Headers", "").lower()
    assert "x-request-id" in exposed
    assert "origin" in response.headers.get("Vary", "").lower()


@pytest.mark.parametrize("origin", [PORTAL, OTHER_ALLOWED])
async def test_cors_preflight_from_listed_origin(cors_client: Any, origin: str) -> None:
    response = await cors_client.options(
        "/health",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "GET" in response.headers["Access-Control-Allow-Methods"]
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers
    assert "content-type" in allowed_headers


async def test_cors_on_error_responses(cors_client: Any) -> None:
    response = await cors_client.get("/nowhere", headers={"Origin": PORTAL})
    assert response.status_code == 404
    assert response.headers["Access-Control-Allow-Origin"] == PORTAL


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://localhost:3000", "https://portal.example.evil", "null"],
)
async def test_cors_unlisted_origin_gets_nothing(cors_client: Any, origin: str) -> None:
    simple = await cors_client.get("/health", headers={"Origin": origin})
    assert simple.status_code == 200
    assert "Access-Control-Allow-Origin" not in simple.headers
    preflight = await cors_client.options(
        "/health", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers


async def test_no_cors_when_origin_setting_empty(client: Any) -> None:
    simple = await client.get("/health", headers={"Origin": PORTAL})
    assert simple.status_code == 200
    preflight = await client.options(
        "/health", headers={"Origin": PORTAL, "Access-Control-Request-Method": "GET"}
    )
    for response in (simple, preflight):
        cors_headers = [
            h for h, _ in response.headers.items() if h.lower().startswith("access-control-")
        ]
        assert cors_headers == []
