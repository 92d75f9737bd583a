"""Startup failures and the CLI's first hour, as an operator meets them (issue 15).

Each failure is exactly one line on stderr, the runbook's `Failed to start
server: Error: ...` (or `Migration failed: Error: ...`), and exit code 1. The
server may write ordinary log lines to stdout before it fails (uvicorn's
"Application startup failed", applied migrations); those are not checked here,
only that no traceback and no password appear anywhere.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentidp_server.testing import DEFAULT_REDIS

pytestmark = pytest.mark.slow

AGENTIDP = Path(sys.executable).with_name("agentidp")
FAILED = "Failed to start server: Error: "
PASSWORD = "s3cret-pw-must-not-leak"
STRONG = "x" * 48  # secrets long enough for any production check


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without any AgentIdP, plugin or storage setting."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTIDP_", "HELLO_", "PLUGINS__"))
        and not k.endswith("_ENABLED")
        and k not in ("DATABASE_URL", "REDIS_URL", "PORT", "HOST", "WORKERS", "SERVER")
    }
    env.update(
        PYTHONUNBUFFERED="1",
        AGENTIDP_ENV="development",
        AGENTIDP_DATA_DIR=str(tmp_path),
        REDIS_URL=os.environ.get("AGENTIDP_TEST_REDIS_URL", DEFAULT_REDIS),
        AGENTIDP_REDIS_KEY_PREFIX=f"agentidp-startup:{uuid.uuid4().hex[:12]}:",
    )
    env.update(extra)
    return env


def agentidp(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENTIDP), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )


def serve_args(port: int, workers: int) -> list[str]:
    return ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


def one_failure_line(result: subprocess.CompletedProcess[str], prefix: str = FAILED) -> str:
    everything = result.stdout + result.stderr
    assert result.returncode == 1, everything
    assert "Traceback" not in everything, everything
    assert PASSWORD not in everything
    lines = result.stderr.splitlines()
    assert len(lines) == 1, everything
    assert lines[0].startswith(prefix), everything
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_port_in_use_names_the_port_and_the_setting(tmp_path, busy_port, workers):
    env = env_for(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/a.db")
    line = one_failure_line(agentidp(tmp_path, env, *serve_args(busy_port, workers)))
    assert f"port {busy_port} is already in use" in line
    assert "PORT" in line.split("in use", 1)[1]


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
@pytest.mark.parametrize("workers", [1, 2])
def test_unreachable_database_names_host_and_port(tmp_path, workers, server_kind):
    dead = free_port()
    env = env_for(
        tmp_path,
        DATABASE_URL=f"postgresql://agent:{PASSWORD}@127.0.0.1:{dead}/idp",
        SERVER=server_kind,
    )
    line = one_failure_line(agentidp(tmp_path, env, *serve_args(free_port(), workers)))
    assert f"127.0.0.1:{dead}" in line
    assert "DATABASE_URL" in line


@pytest.mark.parametrize("workers", [1, 2])
def test_missing_tables_say_to_migrate(tmp_path, agentidp_storage, workers):
    # An emptied database (both backends) and no MIGRATE_ON_START: say how to migrate.
    env = env_for(
        tmp_path,
        DATABASE_URL=agentidp_storage["DATABASE_URL"],
        AGENTIDP_MIGRATE_ON_START="false",
    )
    line = one_failure_line(agentidp(tmp_path, env, *serve_args(free_port(), workers)))
    assert "agentidp db migrate" in line
    assert "MIGRATE_ON_START" in line


def test_db_migrate_against_an_unreachable_database(tmp_path):
    dead = free_port()
    env = env_for(tmp_path, DATABASE_URL=f"postgresql://agent:{PASSWORD}@127.0.0.1:{dead}/idp")
    result = agentidp(tmp_path, env, "db", "migrate")
    line = one_failure_line(result, prefix="Migration failed: Error: ")
    assert f"127.0.0.1:{dead}" in line
    assert "Error: Migration failed" not in result.stderr


def test_db_migrate_against_a_database_that_does_not_exist(tmp_path, agentidp_services):
    if agentidp_services.error:
        pytest.skip(agentidp_services.error)
    missing = f"agentidp_missing_{uuid.uuid4().hex[:8]}"
    url = agentidp_services.database_url.rsplit("/", 1)[0] + f"/{missing}"
    result = agentidp(tmp_path, env_for(tmp_path, DATABASE_URL=url), "db", "migrate")
    line = one_failure_line(result, prefix="Migration failed: Error: ")
    assert missing in line
    assert ":5432" in line or "127.0.0.1" in line


def production_env(tmp_path: Path, storage: dict[str, Any], **extra: str) -> dict[str, str]:
    return env_for(
        tmp_path,
        AGENTIDP_ENV="production",
        DATABASE_URL=storage["DATABASE_URL"],
        ISSUER="https://idp.example.com",
        CREDENTIAL_PEPPER=STRONG,
        KEY_STORE_SECRET=STRONG,
        **extra,
    )


def test_enabled_plugin_not_installed_stops_production(tmp_path, agentidp_services):
    if agentidp_services.error:
        pytest.skip(agentidp_services.error)
    env = production_env(
        tmp_path, {"DATABASE_URL": agentidp_services.database_url}, ANALYTICS_ENABLED="true"
    )
    line = one_failure_line(agentidp(tmp_path, env, *serve_args(free_port(), 1)))
    assert "ANALYTICS_ENABLED" in line
    assert "pip install agentidp-analytics" in line


def test_enabled_plugin_not_installed_warns_in_development(tmp_path):
    env = env_for(
        tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/a.db", AGENTIDP_ANALYTICS_ENABLED="true"
    )
    # Any command builds the same settings: `orgs list` starts and finishes.
    assert agentidp(tmp_path, env, "db", "migrate").returncode == 0
    result = agentidp(tmp_path, env, "orgs", "list")
    assert result.returncode == 0, result.stderr
    assert "AGENTIDP_ANALYTICS_ENABLED" in result.stdout + result.stderr
    assert "pip install agentidp-analytics" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-h"],
        ["--help"],
        ["db"],
        ["db", "-h"],
        ["db", "migrate", "-h"],
        ["keys", "-h"],
        ["keys", "list", "-h"],
        ["orgs"],
        ["orgs", "list", "-h"],
        ["serve", "-h"],
        ["audit", "verify", "-h"],
        ["plugins", "-h"],
    ],
)
def test_help_everywhere(tmp_path, args):
    result = agentidp(tmp_path, env_for(tmp_path), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Usage: agentidp"), result.stdout
    assert "-h, --help" in result.stdout


def test_orgs_list(tmp_path, agentidp_storage):
    env = env_for(tmp_path, DATABASE_URL=agentidp_storage["DATABASE_URL"])
    assert agentidp(tmp_path, env, "db", "migrate").returncode == 0
    empty = agentidp(tmp_path, env, "orgs", "list")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.splitlines() == ["ORG_ID\tNAME\tTIER\tCREATED"]
    for name, tier in (("Acme Inc", "free"), ("Beta", "pro")):
        assert agentidp(tmp_path, env, "orgs", "create", name, "--tier", tier).returncode == 0
    listed = agentidp(tmp_path, env, "orgs", "list").stdout.splitlines()
    assert listed[0] == "ORG_ID\tNAME\tTIER\tCREATED"
    rows = [line.split("\t") for line in listed[1:]]
    assert [(r[1], r[2]) for r in rows] == [("Acme Inc", "free"), ("Beta", "pro")]
    assert all(len(r[0]) == 36 and r[3].endswith("+00:00") for r in rows)


def test_cli_commands_on_a_fresh_clone(tmp_path):
    # Development migrates as `serve` does, so the README's `orgs create` works first.
    env = env_for(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/fresh.db")
    listed = agentidp(tmp_path, env, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith("KID")
    # Without MIGRATE_ON_START: one line naming the fix, not a `no such table` traceback.
    env = env_for(
        tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/bare.db", AGENTIDP_MIGRATE_ON_START="false"
    )
    line = one_failure_line(agentidp(tmp_path, env, "orgs", "list"), prefix="Error: ")
    assert "agentidp db migrate" in line


def test_a_key_that_cannot_be_decrypted_stops_serve_with_one_line(tmp_path):
    env = env_for(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/keys.db", KEY_STORE_SECRET=STRONG)
    assert agentidp(tmp_path, env, "keys", "rotate").returncode == 0
    env["KEY_STORE_SECRET"] = "y" * 48
    line = one_failure_line(agentidp(tmp_path, env, *serve_args(free_port(), 1)))
    assert "cannot be decrypted" in line
    assert "KEY_STORE_SECRET_PREVIOUS" in line
    assert "agentidp keys reencrypt" in line
    assert "plugin" not in line  # the kernel's own failure, not worded as a plugin's
