"""Test fixture plugins are visible to test sessions only, never to a user of the venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AGENTIDP = Path(sys.executable).with_name("agentidp")
FIXTURES = Path(__file__).parent / "fixtures"


def _user_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell: no test PYTHONPATH, no AgentIdP settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith(("AGENTIDP_", "HELLO_", "PLUGINS__"))
    }
    env.update(AGENTIDP_ENV="development", AGENTIDP_DATA_DIR=str(tmp_path))
    return env


def test_a_users_agentidp_plugins_does_not_list_the_hello_fixture(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(AGENTIDP), "plugins"],
        env=_user_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert "did" in names  # the shipped plugins are listed, so the command did run
    assert "hello" not in names, result.stdout


def test_the_session_passes_the_fixture_on_to_subprocesses() -> None:
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    assert str(FIXTURES / "agentidp-hello") in paths
