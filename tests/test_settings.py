"""load_settings: environments, the runbook's variable names, validation and `.env`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentidp_server.app import build_idp
from agentidp_server.settings import (
    KERNEL_SETTINGS,
    REQUIRED_IN_PRODUCTION,
    SettingsError,
    issuer,
    load_settings,
    validate,
)

RUNBOOK_NAMES = {
    "DATABASE_URL": ("postgresql://agentidp@db.internal:5432/agentidp", str),
    "REDIS_URL": ("redis://cache.internal:6379/0", str),
    "PORT": ("8080", int),
    "RATE_LIMIT_WINDOW_MS": ("30000", int),
    "CORS_ORIGIN": ("http://localhost:3001", str),
}


def _problems(env: str = "development", **environ: str) -> list[str]:
    return validate(load_settings(env=env, environ=environ), KERNEL_SETTINGS)


def _clean_environ() -> dict[str, str]:
    """os.environ without anything that would configure AgentIdP (for subprocesses)."""
    names = {s.key for s in KERNEL_SETTINGS}
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTIDP_", "DYNACONF_")) and k not in names
    }


# --- environments --------------------------------------------------------------------


def test_default_environment_is_development() -> None:
    settings = load_settings(environ={})
    assert settings.ENV == "development"
    assert settings.MIGRATE_ON_START is True
    assert settings.ACCESS_LOG is True


@pytest.mark.parametrize("env", ["development", "test", "production"])
def test_agentidp_env_selects_the_environment(env: str) -> None:
    selected = load_settings(environ={"AGENTIDP_ENV": env}).ENV
    assert selected == env


def test_agentidp_env_is_case_insensitive_and_argument_wins() -> None:
    assert load_settings(environ={"AGENTIDP_ENV": "PRODUCTION"}).ENV == "production"
    assert load_settings(env="test", environ={"AGENTIDP_ENV": "production"}).ENV == "test"


def test_environment_sections() -> None:
    test = load_settings(env="test", environ={})
    assert (test.ACCESS_LOG, test.LOG_FORMAT, test.MIGRATE_ON_START) == (False, "text", True)
    prod = load_settings(env="production", environ={})
    assert (prod.ACCESS_LOG, prod.LOG_FORMAT, prod.MIGRATE_ON_START) == (True, "json", False)


def test_port_defaults_to_3000() -> None:
    settings = load_settings(environ={})
    assert settings.PORT == 3000
    assert isinstance(settings.PORT, int)


def test_defaults_validate_in_development_and_test() -> None:
    assert _problems("development") == []
    assert _problems("test") == []


# --- the runbook's variable names ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RUNBOOK_NAMES))
def test_runbook_plain_name(name: str) -> None:
    raw, kind = RUNBOOK_NAMES[name]
    value = load_settings(environ={name: raw}).get(name)
    assert value == kind(raw)
    assert isinstance(value, kind)


@pytest.mark.parametrize("name", sorted(RUNBOOK_NAMES))
def test_prefixed_name(name: str) -> None:
    raw, kind = RUNBOOK_NAMES[name]
    assert load_settings(environ={f"AGENTIDP_{name}": raw}).get(name) == kind(raw)


def test_prefixed_name_wins_over_plain() -> None:
    settings = load_settings(
        environ={
            "PORT": "8080",
            "AGENTIDP_PORT": "9090",
            "DATABASE_URL": "postgresql://plain@h/db",
            "AGENTIDP_DATABASE_URL": "postgresql://prefixed@h/db",
        }
    )
    assert settings.PORT == 9090
    assert settings.DATABASE_URL == "postgresql://prefixed@h/db"


def test_overrides_win_over_everything() -> None:
    settings = load_settings(
        environ={"PORT": "8080", "AGENTIDP_PORT": "9090"}, overrides={"PORT": 7070}
    )
    assert settings.PORT == 7070


def test_string_settings_keep_digits_as_text() -> None:
    settings = load_settings(environ={"REDIS_KEY_PREFIX": "2024", "CORS_ORIGIN": "123"})
    assert settings.REDIS_KEY_PREFIX == "2024"
    assert settings.CORS_ORIGIN == "123"
    assert validate(settings, KERNEL_SETTINGS) == []


def test_booleans_from_the_environment() -> None:
    assert load_settings(environ={"ACCESS_LOG": "false"}).ACCESS_LOG is False
    assert load_settings(env="test", environ={"AGENTIDP_ACCESS_LOG": "true"}).ACCESS_LOG is True


def test_supplied_environ_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTIDP_PORT", "4444")
    monkeypatch.setenv("AGENTIDP_LOG_FORMAT", "json")
    monkeypatch.setenv("PORT", "5555")
    settings = load_settings(env="test", environ={})
    assert settings.PORT == 3000
    assert settings.LOG_FORMAT == "text"
    assert load_settings(env="test").PORT == 4444  # os.environ when none is supplied


# --- ISSUER --------------------------------------------------------------------------------


def test_issuer_defaults_to_localhost_and_port() -> None:
    assert issuer(load_settings(environ={})) == "http://localhost:3000"
    assert issuer(load_settings(environ={"PORT": "8080"})) == "http://localhost:8080"


def test_issuer_setting_wins_and_loses_trailing_slash() -> None:
    settings = load_settings(environ={"ISSUER": "https://idp.example.com/"})
    assert issuer(settings) == "https://idp.example.com"


# --- validation: one line per problem --------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"PORT": "abc"}, "PORT must be an integer, got 'abc'"),
        ({"PORT": "true"}, "PORT must be an integer, got True"),
        ({"PORT": "3000.5"}, "PORT must be an integer, got 3000.5"),
        ({"PORT": "0"}, "PORT must be between 1 and 65535, got 0"),
        ({"PORT": "70000"}, "PORT must be between 1 and 65535, got 70000"),
        ({"RATE_LIMIT_WINDOW_MS": "-1"}, "RATE_LIMIT_WINDOW_MS must be greater than 0, got -1"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of json, text, got 'xml'"),
    ],
)
def test_validator_lines(environ: dict[str, str], expected: str) -> None:
    assert _problems(**environ) == [expected]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://agentidp@db/agentidp"),
        ("DATABASE_URL", "db.internal:5432"),
        ("REDIS_URL", "http://cache:6379"),
        ("REDIS_URL", "cache:6379"),
    ],
)
def test_bad_url_scheme(name: str, value: str) -> None:
    problems = _problems(**{name: value})
    assert len(problems) == 1
    assert problems[0].startswith(f"{name} must be a URL starting with ")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "postgresql://u:p@h:5432/db"),
        ("DATABASE_URL", "postgres://h/db"),
        ("DATABASE_URL", "sqlite:///./x.db"),
        ("REDIS_URL", "redis://h:6379/0"),
        ("REDIS_URL", "rediss://h:6380/0"),
        ("REDIS_URL", "unix:///run/redis.sock"),
        ("ISSUER", "https://idp.example.com"),
        ("ISSUER", "http://localhost:3000/tenant-a"),
    ],
)
def test_good_urls(name: str, value: str) -> None:
    assert _problems(**{name: value}) == []


def test_bad_issuer() -> None:
    problems = _problems(ISSUER="https://idp.example.com/?x=1")
    assert len(problems) == 1
    assert problems[0].startswith("ISSUER must be an http(s) URL")


def test_several_problems_one_line_each_in_declared_order() -> None:
    problems = _problems(PORT="abc", DATABASE_URL="mysql://x", REDIS_URL="http://x")
    assert len(problems) == 3
    assert [p.split()[0] for p in problems] == ["PORT", "DATABASE_URL", "REDIS_URL"]
    assert all("\n" not in p for p in problems)


def test_problem_lines_never_show_secret_values() -> None:
    problems = _problems(DATABASE_URL="mysql://agentidp:hunter2@db/agentidp")
    assert problems
    assert "hunter2" not in " ".join(problems)
    secret_keys = [s.key for s in KERNEL_SETTINGS if s.secret]
    for spec in KERNEL_SETTINGS:
        if spec.secret:
            line = spec.problem(12345678)
            assert line is not None
            assert "12345678" not in line, line
    assert secret_keys


def test_settings_error_carries_the_lines() -> None:
    with pytest.raises(SettingsError) as caught:
        build_idp(load_settings(env="test", environ={"PORT": "abc", "REDIS_URL": "http://x"}))
    assert caught.value.problems[:2] == [
        "PORT must be an integer, got 'abc'",
        "REDIS_URL must be a URL starting with redis:// or rediss:// or unix:// or memory://",
    ]


# --- production -------------------------------------------------------------------------


def test_production_requires_database_and_redis_urls() -> None:
    problems = _problems("production")
    assert "DATABASE_URL environment variable is required" in problems
    assert "REDIS_URL environment variable is required" in problems
    assert problems.index("DATABASE_URL environment variable is required") < problems.index(
        "REDIS_URL environment variable is required"
    )
    assert REQUIRED_IN_PRODUCTION["DATABASE_URL"] in problems


def test_production_with_urls_has_no_url_lines() -> None:
    problems = _problems(
        "production",
        DATABASE_URL="postgresql://agentidp@db/agentidp",
        REDIS_URL="redis://cache:6379/0",
    )
    assert not [p for p in problems if p.startswith(("DATABASE_URL", "REDIS_URL"))]


def test_url_requirement_is_production_only() -> None:
    assert not [p for p in _problems("development") if "environment variable is required" in p]
    assert not [p for p in _problems("test") if "environment variable is required" in p]


def test_cli_prints_runbook_lines_in_production(tmp_path: Path) -> None:
    environ = {**_clean_environ(), "AGENTIDP_ENV": "production"}
    result = subprocess.run(
        [sys.executable, "-c", "from agentidp_server.cli import main; main()", "serve"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert "Failed to start server: Error: DATABASE_URL environment variable is required" in lines
    assert "Failed to start server: Error: REDIS_URL environment variable is required" in lines


# --- .env ---------------------------------------------------------------------------------

_PROBE = """
import json
from agentidp_server.settings import load_settings
s = load_settings()
print(json.dumps({"env": s.ENV, "port": s.PORT, "cors": s.CORS_ORIGIN, "level": s.LOG_LEVEL}))
"""


def _load_in(cwd: Path, **environ: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=cwd,
        env={**_clean_environ(), **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


@pytest.fixture
def dotenv_dir(tmp_path: Path) -> Path:
    (tmp_path / ".env").write_text(
        "PORT=4321\nCORS_ORIGIN=http://localhost:3001\nAGENTIDP_LOG_LEVEL=DEBUG\n"
    )
    return tmp_path


def test_dotenv_is_loaded_in_development(dotenv_dir: Path) -> None:
    loaded = _load_in(dotenv_dir)
    assert loaded == {
        "env": "development",
        "port": 4321,
        "cors": "http://localhost:3001",
        "level": "DEBUG",
    }


def test_dotenv_is_not_loaded_in_test(dotenv_dir: Path) -> None:
    loaded = _load_in(dotenv_dir, AGENTIDP_ENV="test")
    assert loaded == {"env": "test", "port": 3000, "cors": "", "level": "INFO"}


def test_real_environment_wins_over_dotenv(dotenv_dir: Path) -> None:
    assert _load_in(dotenv_dir, PORT="5000")["port"] == 5000


def test_no_dotenv_no_change(tmp_path: Path) -> None:
    assert _load_in(tmp_path)["port"] == 3000


@pytest.mark.parametrize("key", [s.key for s in KERNEL_SETTINGS])
def test_every_kernel_setting_is_in_the_readme(key: str) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"| `{key}`" in readme or f"`{key}` /" in readme or f"/ `{key}`" in readme
