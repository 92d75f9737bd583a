"""`agentidp serve` as operators run it: startup errors, readiness, graceful shutdown.

Slow: each test starts real server processes on free ports on 127.0.0.1, with
the `agentidp-hello` fixture plugin enabled for its `/hello/slow` route.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentidp_server.testing import DEFAULT_REDIS

pytestmark = pytest.mark.slow

AGENTIDP = Path(sys.executable).with_name("agentidp")
SHUTDOWN_LINE = "Shutting down gracefully..."
IN_FLIGHT = 50
SLOW_MS = 1500
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
RUNBOOK_DATABASE_LINE = (
    "Failed to start server: Error: DATABASE_URL environment variable is required"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_env(**extra: str) -> dict[str, str]:
    """The parent's environment without any AgentIdP, plugin or storage setting."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTIDP_", "HELLO_", "PLUGINS__"))
        and k not in ("DATABASE_URL", "REDIS_URL", "PORT", "HOST", "WORKERS")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Server:
    """One `agentidp serve` process, its output collected in a file."""

    def __init__(
        self, tmp_path: Path, workers: int, env: dict[str, str], *, new_session: bool = False
    ) -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self._log = self.log_path.open("wb")
        args = [str(AGENTIDP), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if workers > 1:
            args += ["--workers", str(workers)]
        self.process = subprocess.Popen(
            args,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            # Its own process group, so a test can signal master and workers together.
            start_new_session=new_session,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_until_listening(self) -> None:
        line = f"AgentIdP listening on port {self.port}"
        deadline = time.monotonic() + START_TIMEOUT
        while line not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} within {START_TIMEOUT} s:\n{self.output()}")
            time.sleep(0.05)

    def wait(self) -> int:
        return self.process.wait(timeout=STOP_TIMEOUT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []
    prefixes: list[str] = []

    def start(workers: int = 1, server_kind: str = "hypercorn", **extra: str) -> Server:
        env = base_env(
            **{
                "AGENTIDP_ENV": "development",
                "AGENTIDP_DATA_DIR": str(tmp_path),
                "DATABASE_URL": f"sqlite:///{tmp_path}/agentidp.db",
                "HELLO_ENABLED": "true",
                "SERVER": server_kind,
                **extra,
            }
        )
        if workers > 1:
            # Several workers share state through Redis; our keys stay under our own prefix.
            prefix = f"agentidp-lifecycle:{uuid.uuid4().hex[:12]}:"
            prefixes.append(prefix)
            env.update(
                REDIS_URL=os.environ.get("AGENTIDP_TEST_REDIS_URL", DEFAULT_REDIS),
                AGENTIDP_REDIS_KEY_PREFIX=prefix,
            )
        server = Server(tmp_path, workers, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    if prefixes:
        asyncio.run(_delete_keys(prefixes))


async def _delete_keys(prefixes: list[str]) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(
        os.environ.get("AGENTIDP_TEST_REDIS_URL", DEFAULT_REDIS), socket_timeout=5
    )
    try:
        for prefix in prefixes:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=500)]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


def test_production_without_database_url_fails_with_the_runbook_line(tmp_path):
    env = base_env(AGENTIDP_ENV="production", AGENTIDP_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [str(AGENTIDP), "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert lines[0] == RUNBOOK_DATABASE_LINE
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
@pytest.mark.parametrize("workers", [1, 2])
async def test_listening_line_and_health(serve, workers, server_kind):
    server = serve(workers, server_kind)
    server.wait_until_listening()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        hello = await client.get("/hello")
        assert hello.json() == {"greeting": "hello"}
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() == 0


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_in_flight_requests(serve, workers, server_kind):
    server = serve(workers, server_kind)
    server.wait_until_listening()
    limits = httpx.Limits(max_connections=IN_FLIGHT + 10, max_keepalive_connections=IN_FLIGHT + 10)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
        requests = [
            asyncio.create_task(client.get("/hello/slow", params={"ms": SLOW_MS}))
            for _ in range(IN_FLIGHT)
        ]
        await asyncio.sleep(0.5)  # every request is now being served (or queued to be)
        assert not any(r.done() for r in requests)
        server.process.send_signal(signal.SIGTERM)
        responses = await asyncio.wait_for(asyncio.gather(*requests), timeout=STOP_TIMEOUT)
    assert [r.status_code for r in responses] == [200] * IN_FLIGHT
    assert all(r.json() == {"slept_ms": SLOW_MS} for r in responses)
    code = await asyncio.to_thread(server.wait)
    output = server.output()
    assert SHUTDOWN_LINE in output, output
    assert code == 0, output


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_failed_startup_exits_non_zero(serve, server_kind):
    # A database that refuses connections: storage cannot open, so startup fails.
    server = serve(1, server_kind, DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    code = server.wait()
    assert code != 0, server.output()
    assert f"AgentIdP listening on port {server.port}" not in server.output()


def worker_pids(master: int) -> list[int]:
    """The supervised workers: spawned children (not multiprocessing's resource tracker)."""
    pids = []
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            pids.append(pid)
    return pids


def restarts_metric(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("agentidp_worker_restarts_total "):
            return float(line.split()[1])
    raise AssertionError(f"no agentidp_worker_restarts_total in /metrics:\n{text}")


async def test_a_killed_worker_is_restarted(serve):
    server = serve(2)
    server.wait_until_listening()
    # No keep-alive: a connection the killed worker held would fail with it (unavoidably).
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
        assert restarts_metric((await client.get("/metrics")).text) == 0
        victim, survivor = worker_pids(server.process.pid)
        os.kill(victim, signal.SIGKILL)
        # The survivor serves meanwhile: every request succeeds, before and after the restart.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            response = await client.get("/health")
            assert response.status_code == 200
            pids = worker_pids(server.process.pid)
            if len(pids) == 2 and victim not in pids:
                break
            assert server.process.poll() is None, server.output()
            assert time.monotonic() < deadline, server.output()
            await asyncio.sleep(0.1)
        replacement = next(p for p in pids if p != survivor)
        for _ in range(40):
            assert (await client.get("/health/ready")).status_code == 200
        assert restarts_metric((await client.get("/metrics")).text) == 1
    assert server.process.poll() is None, server.output()
    assert Path(f"/proc/{replacement}").exists()
    assert f"(pid {victim}) exited with -9; restarting" in server.output()
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() == 0, server.output()


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
async def test_new_connections_are_refused_after_sigterm_with_workers(serve, server_kind):
    server = serve(2, server_kind)
    server.wait_until_listening()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        slow = [
            asyncio.create_task(client.get("/hello/slow", params={"ms": 6000})) for _ in range(4)
        ]
        await asyncio.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        # Within the in-flight requests' lifetime, a new connection must be refused.
        refused = False
        while not all(r.done() for r in slow):
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=1) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            except (ConnectionRefusedError, ConnectionResetError):
                refused = True
                break
            await asyncio.sleep(0.1)
        assert refused, server.output()
        assert not all(r.done() for r in slow)  # refused while requests were in flight
        responses = await asyncio.gather(*slow)
    assert [r.status_code for r in responses] == [200] * 4
    assert await asyncio.to_thread(server.wait) == 0, server.output()


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_a_trickled_body_is_cut_off(serve, server_kind):
    server = serve(1, server_kind, AGENTIDP_REQUEST_READ_TIMEOUT="1")
    server.wait_until_listening()
    length = 60
    answer = b""
    sent = 0
    reset = False
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/token HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {length}\r\n\r\n".encode()
        )
        sock.settimeout(0.25)
        # One byte every 0.25 s: the whole body would take 15 s.
        while sent < length:
            try:
                sock.sendall(b"a")
                sent += 1
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                reset = True  # uvicorn may reset: the unread body is still in its buffer
                break
            if not chunk:
                break
            answer += chunk
    assert sent < length, "the server waited for the whole trickled body"
    assert answer.startswith(b"HTTP/1.1 408") or (reset and not answer), answer
    if answer:
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["code"] == "REQUEST_TIMEOUT", body
        assert body["request_id"], body


def test_listening_line_shows_the_bound_address(serve):
    server = serve(1)
    server.wait_until_listening()
    assert (
        f"AgentIdP listening on port {server.port} (http://127.0.0.1:{server.port}, "
        "this address only)" in server.output()
    )
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() == 0


async def test_a_worker_that_keeps_dying_at_start_stops_the_server(serve, agentidp_services):
    # PostgreSQL behind a proxy the test cuts: replacements then cannot start.
    from tests.faultproxy import FaultProxy

    if agentidp_services.error:
        pytest.fail(agentidp_services.error)
    url = agentidp_services.database_url
    async with FaultProxy.for_url(url) as proxy:
        server = serve(2, DATABASE_URL=proxy.url(url))
        await asyncio.to_thread(server.wait_until_listening)
        await proxy.down()  # every replacement now fails at start: cannot connect
        os.kill(worker_pids(server.process.pid)[0], signal.SIGKILL)
        code = await asyncio.to_thread(server.process.wait, 120)
    output = server.output()
    assert code == 1, output
    assert output.count("restarting it in") == 5, output
    assert "died 5 times in a row before it was ready; stopping" in output
    last = output.splitlines()[-1]
    assert last.startswith("Failed to start server: Error: "), output
    assert f"PostgreSQL at 127.0.0.1:{proxy.port} (DATABASE_URL)" in last, output
