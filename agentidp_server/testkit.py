"""Test helpers for the kernel and plugins: settings on the embedded stores, an
organisation, its admin, agents, tokens; which modules building the app imports."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from agentidp_server.directory import agents, credentials, tenants
from agentidp_server.settings import load_settings


def embedded_settings(tmp_path: Any, env: str = "test", **overrides: Any) -> Any:
    """Settings on the embedded SQLite database and in-process kv under `tmp_path`,
    with `overrides` on top; the process environment is not read."""
    defaults = {
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path}/agentidp.db",
        "REDIS_URL": "memory://",
    }
    return load_settings(env=env, overrides={**defaults, **overrides}, environ={})


async def make_org(idp: Any, name: str = "Acme", tier: str = "free") -> dict[str, Any]:
    """What `agentidp orgs create` does, returning the admin client's credentials."""
    async with idp.db.transaction() as conn:
        org = await tenants.create_org(conn, name, tier)
        admin = await agents.create_agent(
            conn,
            org["org_id"],
            {"name": "admin", "deployment_env": "admin", "scopes": list(agents.ADMIN_SCOPES)},
            kind="admin",
        )
        secret = await credentials.create_secret(conn, admin, idp.settings.CREDENTIAL_PEPPER, None)
    return {**org, "client_id": secret["client_id"], "client_secret": secret["client_secret"]}


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def token(client: Any, client_id: str, secret: str, **params: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/token",
        form={"grant_type": "client_credentials", **params},
        headers=basic(client_id, secret),
    )
    body: dict[str, Any] = await response.get_json()
    assert response.status_code == 200, body
    return body


async def admin_headers(client: Any, org: dict[str, Any]) -> dict[str, str]:
    body = await token(client, org["client_id"], org["client_secret"])
    return {"Authorization": f"Bearer {body['access_token']}"}


async def make_agent(
    client: Any, headers: dict[str, str], **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register an agent and give it a client secret; return (agent, credential)."""
    data = {"name": "worker", "deployment_env": "production", "scopes": ["read", "write"], **fields}
    response = await client.post("/api/v1/agents", json=data, headers=headers)
    agent = await response.get_json()
    assert response.status_code == 201, agent
    response = await client.post(
        f"/api/v1/agents/{agent['agent_id']}/credentials",
        json={"type": "client_secret"},
        headers=headers,
    )
    credential = await response.get_json()
    assert response.status_code == 201, credential
    return agent, credential


# Builds the app and reports whether `module` was imported; argv[1] is [module, environ].
_IMPORT_PROBE = """
import json, sys
from agentidp_server.app import create_app
from agentidp_server.settings import load_settings
module, environ = json.loads(sys.argv[1])
create_app(load_settings(environ=environ))
print(json.dumps(module in sys.modules))
"""


def module_imported_by_app(module: str, environ: Mapping[str, str], timeout: float = 60) -> bool:
    """Whether building the app with these settings imports `module` (e.g. a disabled
    plugin's package), checked in a fresh interpreter: an import by an earlier test in
    this process cannot hide a leak. `environ` holds the settings as environment
    variables (`{"DID_ENABLED": "false"}`), and only those: the caller's own are not
    read. The data directory is a temporary one unless `environ` sets AGENTIDP_DATA_DIR.
    """
    with tempfile.TemporaryDirectory() as data_dir:
        settings = {"AGENTIDP_DATA_DIR": data_dir, **environ}
        result = subprocess.run(  # noqa: S603 - this interpreter, fixed code, JSON argument
            [sys.executable, "-c", _IMPORT_PROBE, json.dumps([module, settings])],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    answer = result.stdout.strip().splitlines()[-1:]
    if result.returncode != 0 or answer not in (["true"], ["false"]):
        raise RuntimeError(f"building the app failed:\n{result.stdout}{result.stderr}")
    return answer == ["true"]
