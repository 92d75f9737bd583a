"""`/docs` renders with no internet access (issue 15): a real `agentidp serve` process,
headless Debian Chromium, and every request off 127.0.0.1 refused and recorded.

Slow: starts a server process and a browser.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentidp_server.testing import services_required

pytestmark = pytest.mark.slow

AGENTIDP = Path(sys.executable).with_name("agentidp")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT = 30.0
RENDER_TIMEOUT_MS = 30_000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTIDP_") and k not in ("DATABASE_URL", "REDIS_URL", "PORT")
    }
    env.update(
        AGENTIDP_ENV="development",
        AGENTIDP_DATA_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path}/agentidp.db",
        REDIS_URL="memory://",
        DID_ENABLED="true",
        OIDC_ENABLED="true",
        DELEGATION_ENABLED="true",
    )
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(AGENTIDP), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_docs_page_renders_every_operation_offline(server: str, chromium: Any) -> None:
    operations = sum(
        1
        for item in httpx.get(f"{server}/openapi.json").json()["paths"].values()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    )
    refused: list[str] = []
    page = chromium.new_page()

    def offline(route: Any) -> None:
        # As on a machine with no internet access: only the server itself answers.
        if route.request.url.startswith(server):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", offline)
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock", timeout=RENDER_TIMEOUT_MS)
    assert refused == [], f"the page reached outside the server: {refused}"
    assert page.locator(".opblock").count() == operations
    token = page.locator(".opblock-post", has=page.locator('[data-path="/api/v1/token"]'))
    assert token.count() == 1
    assert page.locator(".opblock-tag", has_text="Delegation").count() == 1  # a plugin's tag
    page.close()
