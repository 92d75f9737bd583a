"""The token endpoint's ASGI fast path answers exactly as the Quart view would."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agentidp_server.app import create_app
from agentidp_server.oauth.token_asgi import TokenEndpoint
from agentidp_server.testkit import basic, embedded_settings, make_org

TOKEN = "/api/v1/token"
# Differ between any two answers, whichever path serves them.
VOLATILE = {"x-request-id", "date", "x-ratelimit-remaining", "x-ratelimit-reset", "content-length"}


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    # An hour-long window: no rollover between the two runs of the same cases.
    return {"RATE_LIMIT_MAX": 6, "RATE_LIMIT_WINDOW_MS": 3_600_000}


class Spy:
    """Counts the requests Quart serves (everything the fast path hands on)."""

    def __init__(self, downstream: Any) -> None:
        self.downstream = downstream
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(f"{scope['method']} {scope['path']}")
        await self.downstream(scope, receive, send)


def endpoint_of(app: Any) -> TokenEndpoint:
    endpoint = app.asgi_app
    assert isinstance(endpoint, TokenEndpoint)
    return endpoint


@contextmanager
def quart_only(app: Any) -> Iterator[None]:
    """Serve every request through Quart, as before the fast path existed."""
    endpoint = endpoint_of(app)
    app.asgi_app = endpoint.downstream
    try:
        yield
    finally:
        app.asgi_app = endpoint


async def answer(client: Any, **request: Any) -> tuple[int, dict[str, str], Any]:
    response = await client.post(TOKEN, **request)
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() not in VOLATILE}
    if "retry-after" in headers:
        # Seconds left in the window: two runs a second apart differ, its form must not.
        assert int(headers["retry-after"]) > 0
        headers["retry-after"] = "<seconds>"
    body = json.loads(await response.get_data())
    if "access_token" in body:
        # Fresh tokens differ; their claims' names and the response fields must not.
        payload = body.pop("access_token").split(".")[1]
        body["claims"] = sorted(json.loads(base64.urlsafe_b64decode(payload + "==")))
    if isinstance(body.get("request_id"), str):
        body["request_id"] = "<id>"
    return response.status_code, headers, body


def cases(org: dict[str, Any]) -> list[dict[str, Any]]:
    good = basic(org["client_id"], org["client_secret"])
    as_form = {**good, "Content-Type": "application/x-www-form-urlencoded"}
    form = {"grant_type": "client_credentials"}
    return [
        {"form": form, "headers": good},
        {"form": {**form, "scope": "agents:read"}, "headers": good},
        {"form": {**form, "resource": "https://api.example/"}, "headers": good},
        {"json": {**form, "client_id": org["client_id"], "client_secret": org["client_secret"]}},
        {"form": form, "headers": basic(org["client_id"], "wrong")},
        {"form": form, "headers": basic("nobody", "wrong")},
        {"form": form},
        {"form": {}, "headers": good},
        {"form": {"grant_type": "password"}, "headers": good},
        {"form": {**form, "scope": "no-such-scope"}, "headers": good},
        {"form": {**form, "resource": "relative#frag"}, "headers": good},
        {"form": {**form, "resource": "http://[::1"}, "headers": good},
        {"json": {"grant_type": "\ud800"}, "headers": good},
        {"data": b"grant_type=a&grant_type=b", "headers": as_form},
        {"data": b"\xff\xfe", "headers": as_form},
        {"data": b"{not json", "headers": {**good, "Content-Type": "application/json"}},
        {"data": b"<xml/>", "headers": {**good, "Content-Type": "text/xml"}},
        {"data": b"a=" + b"x" * 70_000, "headers": as_form},
        {"form": form, "headers": {"Authorization": "Basic !!!not-base64"}},
        {"form": form, "headers": {**good, "X-Request-Id": "caller-chosen-id-1"}},
    ]  # fmt: skip


async def test_fast_path_and_quart_give_the_same_answers(
    agentidp_app: Any, agentidp_idp: Any
) -> None:
    app, client = agentidp_app.app, agentidp_app.test_client()
    spy = Spy(endpoint_of(app).downstream)
    endpoint_of(app).downstream = spy
    # Separate organisations, so each path has its own rate window to spend.
    fast_org, quart_org = await make_org(agentidp_idp), await make_org(agentidp_idp)
    fast = [await answer(client, **case) for case in cases(fast_org)]
    assert spy.paths == []  # every one of them was served by the fast path
    with quart_only(app):
        slow = [await answer(client, **case) for case in cases(quart_org)]
    for index, (ours, quarts) in enumerate(zip(fast, slow, strict=True)):
        assert ours == quarts, (index, ours, quarts)
    statuses = [status for status, _, _ in fast]
    assert statuses[:4] == [200, 200, 200, 200]
    assert 429 in statuses  # RATE_LIMIT_MAX reached: the runbook's body and headers compared too


async def test_caller_request_id_is_echoed_and_audited(
    agentidp_app: Any, agentidp_idp: Any
) -> None:
    org = await make_org(agentidp_idp)
    client = agentidp_app.test_client()
    headers = {**basic(org["client_id"], org["client_secret"]), "X-Request-Id": "trace-42"}
    response = await client.post(TOKEN, form={"grant_type": "client_credentials"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "trace-42"
    assert response.headers["Cache-Control"] == "no-store"
    assert int(response.headers["X-RateLimit-Limit"]) == 6
    events = await agentidp_idp.audit.read(org["org_id"])
    issued = [e for e in events if e["action"] == "token.issued"]
    assert issued[-1]["request_id"] == "trace-42"


def _app(tmp_path: Any, **overrides: Any) -> Any:
    return create_app(embedded_settings(tmp_path, **overrides))


async def _served_by_quart(app: Any, **request: Any) -> tuple[list[str], int]:
    spy = Spy(endpoint_of(app).downstream)
    endpoint_of(app).downstream = spy
    async with app.test_app() as test_app:
        idp = app.extensions["agentidp"]
        org = await make_org(idp)
        headers = {**basic(org["client_id"], org["client_secret"]), **request.pop("headers", {})}
        response = await test_app.test_client().post(
            TOKEN, form={"grant_type": "client_credentials"}, headers=headers
        )
        assert response.status_code == 200
    return spy.paths, response


async def test_a_plugin_hooking_every_request_gets_quart(tmp_path: Any) -> None:
    app = _app(tmp_path)
    seen: list[str] = []

    @app.before_request
    async def watch() -> None:  # what a plugin's before_app_request amounts to
        seen.append("token")

    paths, _ = await _served_by_quart(app)
    assert paths == [f"POST {TOKEN}"]
    assert seen == ["token"]


async def test_cross_origin_requests_get_quart_when_cors_is_on(tmp_path: Any) -> None:
    app = _app(tmp_path, CORS_ORIGIN="https://portal.example")
    paths, response = await _served_by_quart(app, headers={"Origin": "https://portal.example"})
    assert paths == [f"POST {TOKEN}"]
    assert response.headers["Access-Control-Allow-Origin"] == "https://portal.example"


async def test_other_methods_and_paths_go_to_quart(tmp_path: Any) -> None:
    app = _app(tmp_path)
    spy = Spy(endpoint_of(app).downstream)
    endpoint_of(app).downstream = spy
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.get(TOKEN)
        assert response.status_code == 405
        assert "POST" in response.headers["Allow"]
        assert (await client.post(TOKEN + "/introspect", form={})).status_code == 401
    assert spy.paths == [f"GET {TOKEN}", f"POST {TOKEN}/introspect"]


async def test_a_client_gone_before_its_body_is_not_answered(tmp_path: Any) -> None:
    """The fast path sends nothing, counts nothing and mints nothing for a client that
    disconnected before its body arrived (ASGI `http.disconnect`)."""
    app = _app(tmp_path)
    async with app.test_app():
        idp = app.extensions["agentidp"]
        org = await make_org(idp)
        headers = basic(org["client_id"], org["client_secret"])
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": TOKEN,
            "raw_path": TOKEN.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"authorization", headers["Authorization"].encode()),
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-length", b"29"),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 3000),
        }
        messages = iter([{"type": "http.request", "body": b"grant_type", "more_body": True}])

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "http.disconnect"})

        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        await endpoint_of(app)(scope, receive, send)
        assert sent == []
        issued = await idp.db.fetchval(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'token.issued'"
        )
        assert issued == 0
        assert await idp.kv.get(f"rate:tier:calls:{org['org_id']}") is None
