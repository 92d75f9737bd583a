"""Logs: JSON lines in production, the runbook's access lines in development, none in
test, request ids on every line, and secrets masked whatever carries them."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from quart import jsonify, request

from agentidp_server.app import create_app
from agentidp_server.server.logs import redact
from agentidp_server.testkit import embedded_settings

# The runbook's Morgan "combined" line:
# ::1 - - [28/Mar/2026:09:01:00 +0000] "POST /api/v1/token HTTP/1.1" 200 312 "-" "curl/7.88.1"
ACCESS_LINE = re.compile(
    r"^(?P<ip>\S+) - - \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000)\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.1" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?P<referrer>[^"]*)" "(?P<agent>[^"]*)"$'
)
JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0"
    ".eyJzdWIiOiJhZ2VudC0xIiwiaXNzIjoiaHR0cDovL2xvY2FsaG9zdDozMDAwIn0"
    ".MEUCIQDx3Zt0bq1c2b8mN4p5yX8o7v1rW9kQ2sT6uV3wY0aZbAIgQ9r"
)
SECRET = "s3cr3t-Value_42"


def _make_app(env: str, tmp_path: Any, **overrides: Any) -> tuple[Any, io.StringIO]:
    """An app whose log handler writes to a buffer (configure_logging targets sys.stdout)."""
    settings = embedded_settings(
        tmp_path,
        env,
        **{
            # a fresh database: production does not migrate on start by itself
            "MIGRATE_ON_START": True,
            # secrets production may require; long enough for any length check
            "KEY_STORE_SECRET": "k" * 64,
            "CREDENTIAL_PEPPER": "p" * 64,
            **overrides,
        },
    )
    app = create_app(settings)
    stream = io.StringIO()
    handler = logging.getLogger("agentidp").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    log = logging.getLogger("agentidp.test")

    @app.get("/_test/log")
    async def say() -> Any:
        log.info("hello from %s", request.path)
        return jsonify(ok=True)

    @app.post("/_test/leaky")
    async def leaky() -> Any:
        form = await request.get_data(as_text=True)
        log.warning("token request body: %s", form)
        log.info("headers: Authorization: %s", request.headers.get("Authorization"))
        log.info("connecting to postgresql://agentidp:%s@db:5432/agentidp", SECRET)
        return jsonify(ok=True)

    @app.get("/_test/boom")
    async def boom() -> Any:
        raise RuntimeError(f"failed with client_secret={SECRET} and token {JWT}")

    return app, stream


@pytest.fixture
def make_client(tmp_path: Any) -> Callable[..., Any]:
    """make_client(env, **overrides) -> async context giving (client, log buffer)."""

    def make(env: str, **overrides: Any) -> Any:
        app, stream = _make_app(env, tmp_path, **overrides)

        class _Ctx:
            async def __aenter__(self) -> tuple[Any, io.StringIO]:
                self.test_app = app.test_app()
                started = await self.test_app.__aenter__()
                stream.seek(0)
                stream.truncate()  # drop startup lines (migrations)
                return started.test_client(), stream

            async def __aexit__(self, *exc: object) -> None:
                await self.test_app.__aexit__(*exc)

        return _Ctx()

    return make


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide loggers; put them back after each test."""
    names = ("agentidp", "hypercorn.error", "quart.app")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names}
    yield
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers = handlers
        logger.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    records = []
    for line in _lines(stream):
        record = json.loads(line)  # every line is one JSON object
        assert isinstance(record, dict)
        records.append(record)
    return records


# --- production: JSON ---------------------------------------------------------------------


async def test_production_lines_are_json_with_request_id(make_client: Any) -> None:
    async with make_client("production") as (client, stream):
        response = await client.get("/_test/log", headers={"X-Request-Id": "req-json-1"})
        assert response.status_code == 200
        other = await client.get("/_test/log")
    records = _records(stream)
    assert records
    for record in records:
        assert {"timestamp", "level", "message", "request_id"} <= set(record)
        assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$", record["timestamp"])
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}
    hello = [r for r in records if r["message"] == "hello from /_test/log"]
    assert [r["request_id"] for r in hello] == ["req-json-1", other.headers["X-Request-Id"]]
    assert hello[0]["level"] == "info"


async def test_production_access_lines_are_json(make_client: Any) -> None:
    async with make_client("production") as (client, stream):
        response = await client.get(
            "/health", headers={"X-Request-Id": "req-access", "User-Agent": "curl/8.5.0"}
        )
        assert response.status_code == 200
    access = [r for r in _records(stream) if "access" in r]
    assert len(access) == 1
    record = access[0]
    assert record["request_id"] == "req-access"
    assert record["access"]["method"] == "GET"
    assert record["access"]["path"] == "/health"
    assert record["access"]["status"] == 200
    assert isinstance(record["access"]["duration_ms"], (int, float))
    # the message itself is still the runbook's line
    assert ACCESS_LINE.match(record["message"]), record["message"]


async def test_production_error_is_one_json_line_with_request_id(make_client: Any) -> None:
    async with make_client("production") as (client, stream):
        response = await client.get("/_test/boom", headers={"X-Request-Id": "req-boom"})
        assert response.status_code == 500
    errors = [r for r in _records(stream) if r["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "req-boom"
    assert "RuntimeError" in errors[0]["exception"]
    text = stream.getvalue()
    assert SECRET not in text
    assert JWT not in text


async def test_json_lines_outside_requests_have_null_request_id(make_client: Any) -> None:
    async with make_client("production") as (_client, stream):
        logging.getLogger("agentidp").info("background work")
    (record,) = [r for r in _records(stream) if r["message"] == "background work"]
    assert record["request_id"] is None


# --- development: the runbook's access lines ------------------------------------------------


async def test_development_access_line_per_request(make_client: Any) -> None:
    async with make_client("development") as (client, stream):
        ok = await client.get("/health", headers={"User-Agent": "curl/7.88.1"})
        missing = await client.post(
            "/nowhere",
            headers={"User-Agent": "pytest", "Referer": "http://localhost:3001/agents"},
        )
    lines = [m for line in _lines(stream) if (m := ACCESS_LINE.match(line))]
    assert len(lines) == 2, _lines(stream)
    first, second = lines
    assert (first["method"], first["path"], first["status"]) == ("GET", "/health", "200")
    assert first["bytes"] == str(len(await ok.get_data()))
    assert (first["referrer"], first["agent"]) == ("-", "curl/7.88.1")
    assert (second["method"], second["path"], second["status"]) == ("POST", "/nowhere", "404")
    assert second["bytes"] == str(len(await missing.get_data()))
    assert (second["referrer"], second["agent"]) == ("http://localhost:3001/agents", "pytest")


async def test_access_line_has_no_query_string(make_client: Any) -> None:
    async with make_client("development") as (client, stream):
        await client.get(f"/health?client_secret={SECRET}&x=1")
    (line,) = [m for line in _lines(stream) if (m := ACCESS_LINE.match(line))]
    assert line["path"] == "/health"
    assert SECRET not in stream.getvalue()


async def test_access_line_cannot_be_split_by_the_request(make_client: Any) -> None:
    async with make_client("development") as (client, stream):
        await client.get("/nowhere%0A1.2.3.4-forged", headers={"User-Agent": 'a"b'})
    lines = [line for line in _lines(stream) if "nowhere" in line or "forged" in line]
    assert len(lines) == 1, lines
    (match,) = [m for line in lines if (m := ACCESS_LINE.match(line))]
    assert match["path"] == "/nowhere\\x0a1.2.3.4-forged"


async def test_development_lines_are_plain_text(make_client: Any) -> None:
    async with make_client("development") as (client, stream):
        await client.get("/_test/log")
    assert "hello from /_test/log" in _lines(stream)


# --- test: no access lines --------------------------------------------------------------------


async def test_no_access_lines_in_test_env(make_client: Any) -> None:
    async with make_client("test") as (client, stream):
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
        await client.get("/_test/log")
    lines = _lines(stream)
    assert not [line for line in lines if ACCESS_LINE.match(line)], lines
    assert "hello from /_test/log" in lines  # other logging still works


async def test_access_log_setting_overrides_environment(make_client: Any) -> None:
    async with make_client("development", ACCESS_LOG=False) as (client, stream):
        await client.get("/health")
    assert not [line for line in _lines(stream) if ACCESS_LINE.match(line)]


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"grant_type=client_credentials&client_id=a1&client_secret={SECRET}", SECRET),
        (f'{{"client_secret": "{SECRET}", "scope": "agents:read"}}', SECRET),
        (f"{{'client_secret': '{SECRET} with space'}}", "with space"),
        (f"password={SECRET}", SECRET),
        (f"refresh_token={SECRET}&x=1", SECRET),
        (f"Authorization: Bearer {SECRET}", SECRET),
        (f"authorization: bearer {SECRET}", SECRET),
        ("Authorization: Basic YWdlbnQ6c2VjcmV0LXZhbHVl", "YWdlbnQ6c2VjcmV0LXZhbHVl"),
        (f"sending Bearer {SECRET} upstream", SECRET),
        (f"issued {JWT} to agent-1", JWT),
        (f"issued {JWT} to agent-1", JWT.split(".")[1]),
        (f"postgresql://agentidp:{SECRET}@db:5432/agentidp", SECRET),
        (f"redis://:{SECRET}@cache:6379/0", SECRET),
        (f"rediss://default:{SECRET}@cache:6380", SECRET),
        (f"client_assertion={JWT}", JWT.split(".")[2]),
    ],
)
def test_redact_masks_secrets(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked, masked
    assert "redacted" in masked


@pytest.mark.parametrize(
    "text",
    [
        "AgentIdP listening on port 3000",
        "Shutting down gracefully...",
        "the token expired",
        "GET /health 200",
        "postgresql://agentidp@db:5432/agentidp",
        "Applied migration core/0001_tenants",
    ],
)
def test_redact_leaves_ordinary_text(text: str) -> None:
    assert redact(text) == text


def test_redacted_url_keeps_host() -> None:
    assert redact(f"postgresql://agentidp:{SECRET}@db:5432/x") == (
        "postgresql://agentidp:[redacted]@db:5432/x"
    )


@pytest.mark.parametrize("env", ["production", "development"])
async def test_secrets_never_reach_logs(make_client: Any, env: str) -> None:
    async with make_client(env) as (client, stream):
        response = await client.post(
            "/_test/leaky",
            data=f"grant_type=client_credentials&client_id=a1&client_secret={SECRET}",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": f"Bearer {JWT}",
            },
        )
        assert response.status_code == 200
        await client.get("/_test/boom")
    text = stream.getvalue()
    assert "token request body" in text
    assert SECRET not in text
    for part in JWT.split("."):
        assert part not in text
