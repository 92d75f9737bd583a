"""The programs in examples/ run against a live `agentidp serve`, as a reader runs them,
so that they cannot rot."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwk

pytestmark = pytest.mark.slow

PYTHON = sys.executable
AGENTIDP = Path(sys.executable).with_name("agentidp")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTIDP_", "HELLO_", "PLUGINS__"))
        and k not in ("DATABASE_URL", "REDIS_URL", "PORT", "HOST", "ISSUER", "CLIENT_ID")
        and k not in ("CLIENT_SECRET", "KEY_FILE")
    }
    env.update(AGENTIDP_ENV="development", AGENTIDP_DATA_DIR=str(tmp_path), **extra)
    return env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(AGENTIDP), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=_env(tmp_path, PYTHONUNBUFFERED="1"),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while f"AgentIdP listening on port {port}" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        yield f"http://localhost:{port}"
    finally:
        process.kill()
        process.wait(timeout=10)


def _run(tmp_path: Path, script: str, *args: str, **env: str) -> dict[str, Any]:
    result = subprocess.run(
        [PYTHON, str(EXAMPLES / script), *args],
        env=_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_examples_against_a_live_server(tmp_path: Path, server: str) -> None:
    created = subprocess.run(
        [str(AGENTIDP), "orgs", "create", "Acme"],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    org = json.loads(created.stdout)
    admin = (org["client_id"], org["client_secret"])
    with httpx.Client(base_url=server, timeout=10) as http:
        grant = {"grant_type": "client_credentials"}
        admin_token = http.post("/api/v1/token", data=grant, auth=admin).json()["access_token"]
        headers = {"Authorization": f"Bearer {admin_token}"}
        agent = http.post(
            "/api/v1/agents",
            json={"name": "worker", "deployment_env": "production", "scopes": ["read", "pay"]},
            headers=headers,
        ).json()
        credentials = f"/api/v1/agents/{agent['agent_id']}/credentials"
        secret = http.post(credentials, json={"type": "client_secret"}, headers=headers).json()
        key = jwk.ECKey.generate_key("P-256", private=True)
        response = http.post(
            credentials,
            json={"type": "private_key_jwt", "jwk": dict(key.as_dict(private=False))},
            headers=headers,
        )
        assert response.status_code == 201, response.text
    key_file = tmp_path / "agent-key.json"
    key_file.write_text(json.dumps(key.as_dict(private=True)))

    # The agent: one token fetched, the second call served from its cache.
    for credential in ({"KEY_FILE": str(key_file)}, {"CLIENT_SECRET": secret["client_secret"]}):
        out = _run(
            tmp_path,
            "agent_token.py",
            AGENTIDP_URL=server,
            CLIENT_ID=agent["client_id"],
            **credential,
        )
        assert out["cached"] is True
        assert out["fetches"] == 1
        assert out["introspection"]["active"] is True
        assert out["introspection"]["sub"] == agent["agent_id"]

    # The resource server, with the admin client as its introspection credential.
    with httpx.Client(base_url=server, timeout=10) as http:
        agent_auth = (agent["client_id"], secret["client_secret"])
        token = http.post("/api/v1/token", data=grant, auth=agent_auth).json()["access_token"]
        rs_env = {"AGENTIDP_URL": server, "CLIENT_ID": admin[0], "CLIENT_SECRET": admin[1]}
        decision = _run(tmp_path, "resource_server.py", token, "pay", **rs_env)
        assert decision["local"] == {"allowed": True, "agent_id": agent["agent_id"]}
        assert decision["introspected"] == {"allowed": True, "agent_id": agent["agent_id"]}
        refused = _run(tmp_path, "resource_server.py", token, "admin", **rs_env)
        assert refused["local"] == {"allowed": False, "reason": "scope admin is required"}

        revoked = http.post("/api/v1/token/revoke", data={"token": token}, auth=agent_auth)
        assert revoked.status_code == 200
    # The trade-off the example explains: the signature still verifies after revocation,
    # introspection sees the revocation at once.
    decision = _run(tmp_path, "resource_server.py", token, "pay", **rs_env)
    assert decision["local"]["allowed"] is True
    assert decision["introspected"]["allowed"] is False
    assert "not active" in decision["introspected"]["reason"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    decision = _run(tmp_path, "resource_server.py", forged, "pay", **rs_env)
    assert decision["local"]["allowed"] is False


def _quick_start(port: str) -> str:
    """The README's quick-start commands, pointed at `port` instead of 3000."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Quick start") : readme.index("## Tests")]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 5
    return "set -euo pipefail\n" + "\n".join(
        textwrap.dedent(block).replace("localhost:3000", f"localhost:{port}") for block in blocks
    )


def test_readme_quick_start_runs_as_written(tmp_path: Path, server: str) -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"the README's quick start needs {missing}"
    env = _env(tmp_path)
    # As after `. .venv/bin/activate`: agentidp and python are the venv's.
    env["PATH"] = f"{AGENTIDP.parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-c", _quick_start(server.rsplit(":", 1)[1])],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    answers = [json.loads(line) for line in result.stdout.replace("}{", "}\n{").splitlines()]
    tokens = [answer for answer in answers if "access_token" in answer]
    # The client-secret token (scope read) and the private_key_jwt token.
    assert [t["scope"] for t in tokens] == ["read", "read write"], result.stdout
    assert all(t["token_type"] == "Bearer" for t in tokens)
