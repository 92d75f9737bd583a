"""Rate limits, tier limits and usage counters (agentidp_server/quotas/limits.py)
against the runbook.

The runbook's requirements: the 429 bodies (`RATE_LIMIT_EXCEEDED`, `tier_limit_exceeded`)
and X-RateLimit-* / Retry-After headers, and the Redis keys an operator inspects with
`redis-cli GET` (`rate:<client_id>:<window>`, `monthly:<client_id>:<year>:<month>`,
`rate:tier:calls:<org_id>`, `rate:tier:tokens:<org_id>`) with their expiries.
Both kv adapters unless a test says otherwise; Redis keys are read with a raw client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from agentidp_server.app import create_app
from agentidp_server.settings import load_settings
from agentidp_server.storage.redis_kv import BREAKER_COOLDOWN
from agentidp_server.testing import Services
from agentidp_server.testkit import admin_headers, basic, make_org, token
from agentidp_server.util.clock import TestClock, now_ms
from tests.faultproxy import FaultProxy

TOKEN = "/api/v1/token"
INTROSPECT = "/api/v1/token/introspect"
REVOKE = "/api/v1/token/revoke"
AGENTS = "/api/v1/agents"
CC = {"grant_type": "client_credentials"}
OPERATOR = "operator-secret-for-tests"

# Unless a test says otherwise: a long window and a limit no test reaches by accident.
BASE = {"RATE_LIMIT_WINDOW_MS": 60000, "RATE_LIMIT_MAX": 1000, "ACCESS_LOG": False}
SHORT = 2000  # ms: the window of the tests that wait for the next one


@pytest.fixture
def agentidp_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """BASE plus the test's own settings (`parametrize(..., indirect=True)`)."""
    return {**BASE, **dict(getattr(request, "param", {}))}


def settings_for(**overrides: Any) -> Any:
    return pytest.mark.parametrize("agentidp_overrides", [overrides], indirect=True)


only_postgres = pytest.mark.parametrize("agentidp_backend", ["postgres"])
only_sqlite = pytest.mark.parametrize("agentidp_backend", ["sqlite"])


async def fresh_window(window_ms: int, room_ms: int) -> int:
    """Wait (at most `room_ms`) until at least `room_ms` of a window are left; its number.

    For the tests the kernel's clock cannot serve: Redis's own TTLs, other processes."""
    left = window_ms - now_ms() % window_ms
    if left < room_ms:
        await asyncio.sleep(left / 1000 + 0.03)
    return now_ms() // window_ms


def next_window(clock: TestClock, window_ms: int) -> int:
    """Move the (stopped) clock to the start of the next window; its number."""
    clock.advance(ms=window_ms - now_ms() % window_ms)
    return now_ms() // window_ms


def next_midnight_ms() -> int:
    today = datetime.now(UTC).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)
    return int(midnight.timestamp() * 1000)


def month_and_end_ms() -> tuple[str, int]:
    now = datetime.now(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    end = datetime(year, month, 1, tzinfo=UTC)
    return f"{now.year}:{now.month}", int(end.timestamp() * 1000)


class RawKeys:
    """The kv as an operator sees it: redis-cli on the prefixed key, or the memory adapter."""

    def __init__(self, idp: Any) -> None:
        self.idp = idp
        url = str(idp.settings.REDIS_URL)
        self.memory = url.startswith("memory://")
        self.prefix = "" if self.memory else str(idp.settings.REDIS_KEY_PREFIX)
        self.client = None if self.memory else redis.Redis.from_url(url, decode_responses=True)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def get(self, key: str) -> str | None:
        if self.client is None:
            value: str | None = await self.idp.kv.get(key)
            return value
        raw: str | None = await self.client.get(self.prefix + key)
        return raw

    async def pttl(self, key: str) -> int | None:
        if self.client is None:
            left: int | None = await self.idp.kv.pttl(key)
            return left
        value = int(await self.client.pttl(self.prefix + key))
        return value if value >= 0 else None

    async def keys(self, start: str) -> list[str]:
        if self.client is None:
            values = self.idp.kv._values  # the memory adapter has no SCAN
            return sorted(
                [k for k in list(values) if k.startswith(start) and await self.idp.kv.exists(k)]
            )
        found = [k async for k in self.client.scan_iter(match=f"{self.prefix}{start}*", count=500)]
        return sorted(k[len(self.prefix) :] for k in found)


@pytest.fixture
async def raw(agentidp_idp: Any) -> AsyncIterator[RawKeys]:
    keys = RawKeys(agentidp_idp)
    yield keys
    await keys.close()


def sample(idp: Any, name: str, labels: dict[str, str] | None = None) -> float:
    value = idp.registry.get_sample_value(name, labels or {})
    return float(value or 0.0)


def client_buckets(keys: list[str]) -> list[str]:
    """`rate:<client_id>:<window>` keys, not the auth-failure or tier counters."""
    return [k for k in keys if not k.startswith(("rate:auth:", "rate:tier:"))]


async def token_request(client: Any, client_id: str, secret: str) -> Any:
    return await client.post(TOKEN, form=CC, headers=basic(client_id, secret))


async def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = await response.get_json()
    assert response.status_code == status, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    return body


# --- the per-client window: 429, headers, next window ------------------------------------


@settings_for(RATE_LIMIT_WINDOW_MS=SHORT, RATE_LIMIT_MAX=3)
async def test_token_endpoint_window(
    agentidp_client: Any, agentidp_idp: Any, clock: TestClock
) -> None:
    org = await make_org(agentidp_idp)
    cid, secret = org["client_id"], org["client_secret"]
    window = next_window(clock, SHORT)
    end_ms = (window + 1) * SHORT
    for remaining in (2, 1, 0):
        response = await token_request(agentidp_client, cid, secret)
        assert response.status_code == 200, await response.get_json()
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert response.headers["X-RateLimit-Remaining"] == str(remaining)
        assert response.headers["X-RateLimit-Reset"] == str(end_ms // 1000)
    clock.advance(ms=SHORT - 1001)  # the window's last second
    response = await token_request(agentidp_client, cid, secret)
    await error_of(response, 429, "RATE_LIMIT_EXCEEDED")
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert response.headers["X-RateLimit-Reset"] == str(end_ms // 1000)
    assert response.headers["Retry-After"] == "2"  # 1001 ms, rounded up
    assert sample(agentidp_idp, "agentidp_rate_limit_hits_total", {"client_id": cid}) == 1
    # The window's last millisecond still refuses; the next window admits again.
    clock.advance(ms=1000)
    response = await token_request(agentidp_client, cid, secret)
    await error_of(response, 429, "RATE_LIMIT_EXCEEDED")
    assert response.headers["Retry-After"] == "1"
    assert now_ms() // SHORT == window
    clock.advance(ms=1)
    response = await token_request(agentidp_client, cid, secret)
    assert response.status_code == 200, await response.get_json()
    assert response.headers["X-RateLimit-Remaining"] == "2"
    assert response.headers["X-RateLimit-Reset"] == str(end_ms // 1000 + SHORT // 1000)


@settings_for(RATE_LIMIT_WINDOW_MS=SHORT, RATE_LIMIT_MAX=3)
async def test_management_api_window(
    agentidp_client: Any, agentidp_idp: Any, clock: TestClock
) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)  # counted in an earlier window
    window = next_window(clock, SHORT)
    end_ms = (window + 1) * SHORT
    for remaining in (2, 1, 0):
        response = await agentidp_client.get(AGENTS, headers=headers)
        assert response.status_code == 200, await response.get_json()
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert response.headers["X-RateLimit-Remaining"] == str(remaining)
        assert response.headers["X-RateLimit-Reset"] == str(end_ms // 1000)
    response = await agentidp_client.get(AGENTS, headers=headers)
    await error_of(response, 429, "RATE_LIMIT_EXCEEDED")
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert response.headers["X-RateLimit-Reset"] == str(end_ms // 1000)
    assert response.headers["Retry-After"] == "2"  # at the window's start
    hits = {"client_id": org["client_id"]}
    assert sample(agentidp_idp, "agentidp_rate_limit_hits_total", hits) == 1
    assert now_ms() // SHORT == window
    clock.advance(ms=end_ms - now_ms())
    response = await agentidp_client.get(AGENTS, headers=headers)
    assert response.status_code == 200, await response.get_json()
    assert response.headers["X-RateLimit-Remaining"] == "2"


# --- the runbook's keys ---------------------------------------------------------------


async def test_runbook_keys_and_expiries(
    agentidp_client: Any, agentidp_idp: Any, raw: RawKeys
) -> None:
    window_ms = BASE["RATE_LIMIT_WINDOW_MS"]
    org = await make_org(agentidp_idp)
    cid, org_id = org["client_id"], org["org_id"]
    window = await fresh_window(window_ms, room_ms=5000)
    issued = await token(agentidp_client, cid, org["client_secret"])
    headers = {"Authorization": f"Bearer {issued['access_token']}"}
    response = await agentidp_client.get(AGENTS, headers=headers)
    assert response.status_code == 200
    assert now_ms() // window_ms == window

    # redis-cli GET "rate:<client_id>:<floor(unix_ms / RATE_LIMIT_WINDOW_MS)>"
    rate_key = f"rate:{cid}:{window}"
    assert await raw.get(rate_key) == "2"  # the token request and the API call
    assert client_buckets(await raw.keys("rate:")) == [rate_key]
    left = await raw.pttl(rate_key)
    assert left is not None
    assert 0 < left <= window_ms

    # monthly:<client_id>:<year>:<month> counts issued tokens and ends with the month.
    month, month_end = month_and_end_ms()
    assert ":0" not in month  # the month without a leading zero
    monthly = f"monthly:{cid}:{month}"
    assert await raw.get(monthly) == "1"
    left = await raw.pttl(monthly)
    assert left is not None
    assert abs(now_ms() + left - month_end) < 5000, left

    # The daily tier counters end at the next midnight UTC.
    midnight = next_midnight_ms()
    assert await raw.get(f"rate:tier:calls:{org_id}") == "2"
    assert await raw.get(f"rate:tier:tokens:{org_id}") == "1"
    for key in (f"rate:tier:calls:{org_id}", f"rate:tier:tokens:{org_id}"):
        left = await raw.pttl(key)
        assert left is not None, key
        assert abs(now_ms() + left - midnight) < 5000, (key, left)

    # A second token: the monthly and token counters move, the calls counter too.
    await token(agentidp_client, cid, org["client_secret"])
    assert await raw.get(monthly) == "2"
    assert await raw.get(f"rate:tier:tokens:{org_id}") == "2"
    assert await raw.get(f"rate:tier:calls:{org_id}") == "3"


async def test_a_token_is_counted_in_its_requests_kv_step(
    agentidp_client: Any, agentidp_idp: Any, raw: RawKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """client_credentials: the rate window, daily calls, daily tokens and the monthly
    counter move in one kv step; a request refused before minting counts no token."""
    org = await make_org(agentidp_idp)
    cid, org_id, secret = org["client_id"], org["org_id"], org["client_secret"]
    steps: list[list[str]] = []
    incr_many = agentidp_idp.kv.incr_many

    async def spy(counters: Any, guard: Any = None) -> Any:
        steps.append([c.key for c in counters])
        return await incr_many(counters, guard)

    monkeypatch.setattr(agentidp_idp.kv, "incr_many", spy)
    await token(agentidp_client, cid, secret)
    month, _ = month_and_end_ms()
    assert len(steps) == 1, steps
    assert steps[0][1:] == [
        f"rate:tier:calls:{org_id}",
        f"rate:tier:tokens:{org_id}",
        f"monthly:{cid}:{month}",
    ]
    refused = [
        ({**CC, "scope": "no-such-scope"}, "invalid_scope"),
        ({**CC, "resource": "relative/path"}, "invalid_target"),
        ({**CC, "resource": "http://[::1"}, "invalid_target"),  # urlsplit raises
        ({"grant_type": "urn:example:unknown"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
    ]
    for form, error in refused:
        response = await agentidp_client.post(TOKEN, form=form, headers=basic(cid, secret))
        assert response.status_code == 400, await response.get_json()
        assert (await response.get_json())["error"] == error
    assert await raw.get(f"rate:tier:calls:{org_id}") == str(1 + len(refused))
    assert await raw.get(f"rate:tier:tokens:{org_id}") == "1"
    assert await raw.get(f"monthly:{cid}:{month}") == "1"


@settings_for(AUTH_FAILURE_LIMIT=20)
async def test_client_id_variants_share_no_second_bucket(
    agentidp_client: Any, agentidp_idp: Any, raw: RawKeys, clock: TestClock
) -> None:
    window_ms = BASE["RATE_LIMIT_WINDOW_MS"]
    org = await make_org(agentidp_idp)
    cid, secret = org["client_id"], org["client_secret"]
    assert cid == cid.lower()  # lower-case hex with letters
    assert cid != cid.upper()
    window = next_window(clock, window_ms)
    variants = [cid.upper(), f" {cid}", f"{cid} ", f" {cid.upper()} "]
    for variant in variants:
        for response in (
            await token_request(agentidp_client, variant, secret),
            await agentidp_client.post(
                TOKEN, form={**CC, "client_id": variant, "client_secret": secret}
            ),
        ):
            body = await response.get_json()
            assert response.status_code == 401, (variant, body)
            assert body["error"] == "invalid_client"
    assert client_buckets(await raw.keys("rate:")) == []
    # They count as failed authentications, under the canonical spelling.
    failures = await raw.keys(f"rate:auth:{cid}:")
    assert len(failures) == 1, await raw.keys("rate:")
    assert await raw.get(failures[0]) == str(2 * len(variants))
    assert await raw.keys(f"rate:auth:{cid.upper()}") == []

    response = await token_request(agentidp_client, cid, secret)
    assert response.status_code == 200
    assert now_ms() // window_ms == window
    assert client_buckets(await raw.keys("rate:")) == [f"rate:{cid}:{window}"]
    assert await raw.get(f"rate:{cid}:{window}") == "1"


@settings_for(RATE_LIMIT_WINDOW_MS=SHORT, AUTH_FAILURE_LIMIT=3)
async def test_failed_authentication_is_limited(
    agentidp_client: Any, agentidp_idp: Any, clock: TestClock
) -> None:
    org = await make_org(agentidp_idp)
    other = await make_org(agentidp_idp, "Other")
    cid, secret = org["client_id"], org["client_secret"]
    window = next_window(clock, SHORT)
    end_ms = (window + 1) * SHORT
    for _ in range(3):
        response = await token_request(agentidp_client, cid, "wrong-secret")
        assert response.status_code == 401
    # Even the right secret is refused now, before any secret is checked.
    response = await token_request(agentidp_client, cid, secret)
    await error_of(response, 429, "RATE_LIMIT_EXCEEDED")
    assert response.headers["Retry-After"] == "2"  # at the window's start
    response = await agentidp_client.post(
        TOKEN, form={**CC, "client_id": cid, "client_secret": secret}
    )
    await error_of(response, 429, "RATE_LIMIT_EXCEEDED")
    # Another client from the same address is not affected.
    response = await token_request(agentidp_client, other["client_id"], other["client_secret"])
    assert response.status_code == 200
    clock.advance(ms=end_ms - 1 - now_ms())  # the window's last millisecond still refuses
    response = await token_request(agentidp_client, cid, secret)
    await error_of(response, 429, "RATE_LIMIT_EXCEEDED")
    assert now_ms() // SHORT == window
    clock.advance(ms=1)
    response = await token_request(agentidp_client, cid, secret)
    assert response.status_code == 200, await response.get_json()


# --- several processes share one counter (Redis) --------------------------------------

WORKER = r"""
import asyncio, base64, json, sys

from agentidp_server.app import create_app
from agentidp_server.settings import load_settings


async def main() -> None:
    config = json.loads(sys.argv[1])
    app = create_app(load_settings(env="test", overrides=config["settings"], environ={}))
    raw = f"{config['client_id']}:{config['secret']}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    async with app.test_app() as test_app:
        client = test_app.test_client()
        print("@@ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def one() -> int:
            form = {"grant_type": "client_credentials"}
            response = await client.post("/api/v1/token", form=form, headers=headers)
            return response.status_code

        codes = await asyncio.gather(*(one() for _ in range(config["requests"])))
    print("@@codes " + json.dumps(codes), flush=True)


asyncio.run(main())
"""
PROCESSES = 4
PER_PROCESS = 50
HOUR_MS = 3_600_000


async def _line(process: asyncio.subprocess.Process, marker: str, timeout: float) -> str:
    """The next stdout line starting with `marker` (other output skipped), bounded."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    for _ in range(10_000):
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker} line in {timeout} s"
        line = (await asyncio.wait_for(process.stdout.readline(), left)).decode()
        assert line, f"the worker exited without a {marker} line"
        if line.startswith(marker):
            return line[len(marker) :].strip()
    raise AssertionError(f"no {marker} line")


@only_postgres
@settings_for(
    RATE_LIMIT_WINDOW_MS=HOUR_MS,
    RATE_LIMIT_MAX=100,
    TIER_FREE_DAILY_CALLS=0,
    TIER_FREE_DAILY_TOKENS=0,
    DB_POOL_MAX_SIZE=5,
)
async def test_four_processes_admit_exactly_the_limit(
    agentidp_idp: Any,
    agentidp_storage: dict[str, Any],
    agentidp_overrides: dict[str, Any],
    tmp_path: Path,
    raw: RawKeys,
) -> None:
    org = await make_org(agentidp_idp)
    config = {
        "settings": {"DATA_DIR": str(tmp_path), **agentidp_storage, **agentidp_overrides},
        "client_id": org["client_id"],
        "secret": org["client_secret"],
        "requests": PER_PROCESS,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTIDP_")}
    window = await fresh_window(HOUR_MS, room_ms=45_000)
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for process in processes:
            await _line(process, "@@ready", 30)
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        codes: list[int] = []
        for process in processes:
            codes += json.loads(await _line(process, "@@codes", 30))
        for process in processes:
            assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert now_ms() // HOUR_MS == window
    assert len(codes) == PROCESSES * PER_PROCESS
    assert codes.count(200) == 100, sorted(set(codes))
    assert codes.count(429) == 100, sorted(set(codes))
    assert await raw.get(f"rate:{org['client_id']}:{window}") == "200"


# --- tier limits and their metrics ----------------------------------------------------


async def preset(idp: Any, kind: str, org_id: str, value: int) -> None:
    """As if the organisation had made `value` calls (or got `value` tokens) today."""
    ttl = next_midnight_ms() - now_ms()
    await idp.kv.set(f"rate:tier:{kind}:{org_id}", str(value), ttl_ms=ttl)


async def test_free_tier_daily_calls(agentidp_client: Any, agentidp_idp: Any) -> None:
    assert agentidp_idp.settings.TIER_FREE_DAILY_CALLS == 1000  # the runbook's default
    org = await make_org(agentidp_idp)
    org_id = org["org_id"]
    headers = await admin_headers(agentidp_client, org)
    calls = {"org_id": org_id, "tier": "free"}
    assert sample(agentidp_idp, "agentidp_tenant_api_calls_total", calls) == 1
    await preset(agentidp_idp, "calls", org_id, 1000)
    response = await agentidp_client.get(AGENTS, headers=headers)  # the 1,001st today
    await error_of(response, 429, "tier_limit_exceeded")
    retry = int(response.headers["Retry-After"])
    assert abs(now_ms() + retry * 1000 - next_midnight_ms()) < 5000
    assert sample(agentidp_idp, "agentidp_tenant_api_calls_total", calls) == 2
    rejected = {"org_id": org_id, "limit_type": "calls"}
    assert sample(agentidp_idp, "agentidp_billing_limit_rejections_total", rejected) == 1
    # The token endpoint is an API call too.
    response = await token_request(agentidp_client, org["client_id"], org["client_secret"])
    await error_of(response, 429, "tier_limit_exceeded")
    assert sample(agentidp_idp, "agentidp_billing_limit_rejections_total", rejected) == 2
    # Another organisation is not affected.
    other = await make_org(agentidp_idp, "Other")
    await admin_headers(agentidp_client, other)


async def test_free_tier_daily_tokens(agentidp_client: Any, agentidp_idp: Any) -> None:
    assert agentidp_idp.settings.TIER_FREE_DAILY_TOKENS == 1000
    org = await make_org(agentidp_idp)
    org_id = org["org_id"]
    await preset(agentidp_idp, "tokens", org_id, 999)
    await token(agentidp_client, org["client_id"], org["client_secret"])  # the 1,000th
    response = await token_request(agentidp_client, org["client_id"], org["client_secret"])
    await error_of(response, 429, "tier_limit_exceeded")
    assert "Retry-After" in response.headers
    rejected = {"org_id": org_id, "limit_type": "tokens"}
    assert sample(agentidp_idp, "agentidp_billing_limit_rejections_total", rejected) == 1
    calls = {"org_id": org_id, "tier": "free"}
    assert sample(agentidp_idp, "agentidp_tenant_api_calls_total", calls) == 2


async def test_requests_refused_at_the_daily_token_limit_count_no_token(
    agentidp_client: Any, agentidp_idp: Any, raw: RawKeys
) -> None:
    """`rate:tier:tokens:<org_id>` counts issued tokens only: it stays at the limit
    however many requests are refused there (issue 15)."""
    org = await make_org(agentidp_idp)
    cid, org_id, secret = org["client_id"], org["org_id"], org["client_secret"]
    await preset(agentidp_idp, "tokens", org_id, 999)
    await token(agentidp_client, cid, secret)  # the 1,000th
    for _ in range(3):
        response = await token_request(agentidp_client, cid, secret)
        await error_of(response, 429, "tier_limit_exceeded")
    month, _ = month_and_end_ms()
    assert await raw.get(f"rate:tier:tokens:{org_id}") == "1000"
    assert await raw.get(f"monthly:{cid}:{month}") == "1"
    assert await raw.get(f"rate:tier:calls:{org_id}") == "4"  # refused calls are still calls
    left = await raw.pttl(f"rate:tier:tokens:{org_id}")
    assert left is not None, "giving back must keep the counter's expiry"


class RefusingGrant:
    """A grant whose no-I/O check passes and whose `issue` then refuses (after I/O)."""

    grant_type = "urn:example:refuses-after-check"

    def check(self, request: Any) -> None:
        return None

    async def issue(self, request: Any) -> dict[str, Any]:
        from agentidp_server import OAuthError

        raise OAuthError("invalid_grant", "refused after looking something up")


async def test_a_grant_refusing_after_its_check_counts_no_token(
    agentidp_client: Any, agentidp_idp: Any, raw: RawKeys
) -> None:
    org = await make_org(agentidp_idp)
    cid, org_id, secret = org["client_id"], org["org_id"], org["client_secret"]
    await token(agentidp_client, cid, secret)
    grants = agentidp_idp.state["core"]["grant_types"]
    grants[RefusingGrant.grant_type] = RefusingGrant()
    try:
        for _ in range(2):
            response = await agentidp_client.post(
                TOKEN, form={"grant_type": RefusingGrant.grant_type}, headers=basic(cid, secret)
            )
            body = await response.get_json()
            assert response.status_code == 400, body
            assert body["error"] == "invalid_grant"
    finally:
        del grants[RefusingGrant.grant_type]
    month, _ = month_and_end_ms()
    assert await raw.get(f"rate:tier:tokens:{org_id}") == "1"
    assert await raw.get(f"monthly:{cid}:{month}") == "1"
    assert await raw.get(f"rate:tier:calls:{org_id}") == "3"
    await token(agentidp_client, cid, secret)  # nothing left over for the next request
    assert await raw.get(f"rate:tier:tokens:{org_id}") == "2"


@settings_for(HELLO_ENABLED=True)
async def test_a_mint_that_fails_after_counting_counts_no_token(
    agentidp_client: Any, agentidp_idp: Any, raw: RawKeys
) -> None:
    """The fixture plugin's token_claims breaks the contract, so minting fails after
    the token was counted with the request: the count is given back."""
    from agentidp_hello import state

    org = await make_org(agentidp_idp)
    cid, org_id, secret = org["client_id"], org["org_id"], org["client_secret"]
    await token(agentidp_client, cid, secret)
    state(agentidp_idp)["extra_claims"] = {"iss": "forged"}
    response = await token_request(agentidp_client, cid, secret)
    assert response.status_code == 500, await response.get_json()
    state(agentidp_idp)["extra_claims"] = {}
    month, _ = month_and_end_ms()
    assert await raw.get(f"rate:tier:tokens:{org_id}") == "1"
    assert await raw.get(f"monthly:{cid}:{month}") == "1"


@settings_for(METRICS_PER_ID_LABELS=False, RATE_LIMIT_MAX=2)
async def test_metrics_without_id_labels(
    agentidp_client: Any, agentidp_idp: Any, clock: TestClock
) -> None:
    window_ms = BASE["RATE_LIMIT_WINDOW_MS"]
    org = await make_org(agentidp_idp)
    window = next_window(clock, window_ms)
    headers = await admin_headers(agentidp_client, org)  # request 1 of 2
    await preset(agentidp_idp, "calls", org["org_id"], 1000)
    response = await agentidp_client.get(AGENTS, headers=headers)  # 2 of 2, over the tier
    await error_of(response, 429, "tier_limit_exceeded")
    response = await agentidp_client.get(AGENTS, headers=headers)  # 3 of 2
    await error_of(response, 429, "RATE_LIMIT_EXCEEDED")
    assert now_ms() // window_ms == window
    idp = agentidp_idp
    assert sample(idp, "agentidp_rate_limit_hits_total", {"client_id": ""}) == 1
    assert sample(idp, "agentidp_tenant_api_calls_total", {"org_id": "", "tier": "free"}) == 2
    rejected = {"org_id": "", "limit_type": "calls"}
    assert sample(idp, "agentidp_billing_limit_rejections_total", rejected) == 1
    exposition = (await (await agentidp_client.get("/metrics")).get_data()).decode()
    assert org["org_id"] not in exposition
    assert org["client_id"] not in exposition


# --- tier changes apply to the next request -------------------------------------------


@settings_for(OPERATOR_TOKEN=OPERATOR)
async def test_operator_api_changes_the_tier(agentidp_client: Any, agentidp_idp: Any) -> None:
    org = await make_org(agentidp_idp)
    org_id = org["org_id"]
    headers = await admin_headers(agentidp_client, org)
    await preset(agentidp_idp, "calls", org_id, 1000)
    response = await agentidp_client.get(AGENTS, headers=headers)
    await error_of(response, 429, "tier_limit_exceeded")

    path = f"/api/v1/operator/orgs/{org_id}/tier"
    for auth in ({}, {"Authorization": "Bearer wrong"}, headers, {"Authorization": OPERATOR}):
        response = await agentidp_client.put(path, json={"tier": "pro"}, headers=auth)
        await error_of(response, 401, "UNAUTHORIZED")
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    response = await agentidp_client.put(path, json={"tier": "gold"}, headers=operator)
    assert response.status_code == 400
    response = await agentidp_client.put(
        "/api/v1/operator/orgs/no-such-org/tier", json={"tier": "pro"}, headers=operator
    )
    assert response.status_code == 404
    response = await agentidp_client.put(path, json={"tier": "pro"}, headers=operator)
    assert response.status_code == 200
    assert await response.get_json() == {"org_id": org_id, "tier": "pro"}

    response = await agentidp_client.get(AGENTS, headers=headers)  # the very next request
    assert response.status_code == 200, await response.get_json()
    pro = {"org_id": org_id, "tier": "pro"}
    assert sample(agentidp_idp, "agentidp_tenant_api_calls_total", pro) == 1

    # And back: the free tier's limit applies again at once.
    response = await agentidp_client.put(path, json={"tier": "free"}, headers=operator)
    assert response.status_code == 200
    response = await agentidp_client.get(AGENTS, headers=headers)
    await error_of(response, 429, "tier_limit_exceeded")


async def test_operator_api_absent_without_a_token(agentidp_client: Any, agentidp_idp: Any) -> None:
    assert not agentidp_idp.settings.OPERATOR_TOKEN
    org = await make_org(agentidp_idp)
    path = f"/api/v1/operator/orgs/{org['org_id']}/tier"
    for auth in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
        response = await agentidp_client.put(path, json={"tier": "pro"}, headers=auth)
        assert response.status_code == 404


def _cli(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTIDP_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        AGENTIDP_ENV="test",
        DATABASE_URL=database_url,
        REDIS_URL="memory://",
        DATA_DIR=str(tmp_path),
    )
    return subprocess.run(
        [str(Path(sys.executable).with_name("agentidp")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@only_sqlite
async def test_cli_set_tier(agentidp_client: Any, agentidp_idp: Any, tmp_path: Path) -> None:
    org = await make_org(agentidp_idp)
    org_id = org["org_id"]
    headers = await admin_headers(agentidp_client, org)
    await preset(agentidp_idp, "calls", org_id, 1000)
    response = await agentidp_client.get(AGENTS, headers=headers)
    await error_of(response, 429, "tier_limit_exceeded")

    database_url = str(agentidp_idp.settings.DATABASE_URL)

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # In a thread: the app's event loop keeps running (and finishing its writes).
        return await asyncio.to_thread(_cli, tmp_path, database_url, *args)

    result = await cli("orgs", "set-tier", org_id, "pro")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"org_id": org_id, "tier": "pro"}
    response = await agentidp_client.get(AGENTS, headers=headers)
    assert response.status_code == 200, await response.get_json()
    pro = {"org_id": org_id, "tier": "pro"}
    assert sample(agentidp_idp, "agentidp_tenant_api_calls_total", pro) == 1

    result = await cli("orgs", "set-tier", "no-such-org", "pro")
    assert result.returncode != 0
    assert "no organisation no-such-org" in result.stderr
    result = await cli("orgs", "set-tier", org_id, "gold")
    assert result.returncode != 0


# --- Redis down: fail open, logged once, revocations from the database -----------------


@pytest.fixture
async def proxied(
    agentidp_storage: dict[str, Any], agentidp_services: Services, tmp_path: Path
) -> AsyncIterator[tuple[Any, Any, FaultProxy]]:
    """The app on PostgreSQL and on Redis through a proxy the test can cut."""
    async with FaultProxy.for_url(agentidp_services.redis_url) as proxy:
        overrides = {
            **BASE,
            "DATA_DIR": str(tmp_path),
            **agentidp_storage,
            "REDIS_URL": proxy.url(agentidp_services.redis_url),
            "REDIS_TIMEOUT": 1.0,
        }
        app = create_app(load_settings(env="test", overrides=overrides, environ={}))
        async with app.test_app() as test_app:
            yield test_app.test_client(), test_app.app.extensions["agentidp"], proxy


@only_postgres
async def test_redis_down_fails_open(
    proxied: tuple[Any, Any, FaultProxy], caplog: pytest.LogCaptureFixture
) -> None:
    client, idp, proxy = proxied
    org = await make_org(idp)
    cid, secret = org["client_id"], org["client_secret"]
    revoked = (await token(client, cid, secret))["access_token"]
    response = await client.post(REVOKE, form={"token": revoked}, headers=basic(cid, secret))
    assert response.status_code == 200

    async def introspect(access_token: str) -> dict[str, Any]:
        response = await client.post(
            INTROSPECT, form={"token": access_token}, headers=basic(cid, secret)
        )
        body: dict[str, Any] = await response.get_json()
        assert response.status_code == 200, body
        return body

    assert await introspect(revoked) == {"active": False}
    before = sample(idp, "agentidp_rate_limit_fail_open_total")

    logger = logging.getLogger("agentidp")
    logger.addHandler(caplog.handler)  # configure_logging stops propagation to root
    try:
        await proxy.down()
        issued = []
        for _ in range(5):
            started = time.monotonic()
            issued.append((await token(client, cid, secret))["access_token"])
            assert time.monotonic() - started < 5
        assert await introspect(revoked) == {"active": False}  # from the database
        assert (await introspect(issued[0]))["active"] is True
        opened = sample(idp, "agentidp_rate_limit_fail_open_total") - before
        assert opened >= 5, opened
        outage = [r for r in caplog.records if "fail open" in r.getMessage()]
        assert len(outage) == 1, [r.getMessage() for r in caplog.records]
        assert outage[0].levelno == logging.ERROR

        await proxy.up()
        # The client reconnects once the adapter's breaker lets a probe through.
        deadline = time.monotonic() + BREAKER_COOLDOWN + 3
        while True:
            response = await token_request(client, cid, secret)
            assert response.status_code == 200
            if "X-RateLimit-Remaining" in response.headers or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert "X-RateLimit-Remaining" in response.headers
        assert any("available again" in r.getMessage() for r in caplog.records)
    finally:
        logger.removeHandler(caplog.handler)
