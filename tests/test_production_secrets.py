"""Production fails closed (issue 15): without its secrets, with a placeholder or a short
value, or with an unusable key setting, `agentidp` prints one line and exits 1.

The storage URLs point at ports nothing listens on: validation runs before any
connection, so reaching storage would show up as a different error line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agentidp_server.settings import (
    JWT_KEYS_REQUIRED,
    KERNEL_SETTINGS,
    KEYS_REQUIRED,
    PLACEHOLDER_SECRETS,
    load_settings,
    validate,
    weak_secret,
)

ROOT = Path(__file__).resolve().parents[1]
FAILED = "Failed to start server: Error: "
PEPPER = "a-production-pepper-of-at-least-32-bytes!"
STORE_SECRET = "a-production-key-store-secret-32-bytes+"
# Ports nothing listens on: a connection attempt would fail with another line.
PRODUCTION = {
    "AGENTIDP_ENV": "production",
    "DATABASE_URL": "postgresql://agentidp@127.0.0.1:9/agentidp",
    "REDIS_URL": "redis://127.0.0.1:9/0",
    "ISSUER": "https://idp.example.com",
    "CREDENTIAL_PEPPER": PEPPER,
    "KEY_STORE_SECRET": STORE_SECRET,
}


def _pem_pair(kind: str = "rsa") -> tuple[str, str]:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP384R1())
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


PRIVATE_A, PUBLIC_A = _pem_pair()
_, PUBLIC_B = _pem_pair()
P384_PRIVATE, _ = _pem_pair("p384")


def _environ(**changes: str | None) -> dict[str, str]:
    names = {s.key for s in KERNEL_SETTINGS}
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTIDP_", "DYNACONF_")) and k not in names
    }
    environ.update(PRODUCTION)
    for key, value in changes.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ


def run(*args: str, **changes: str | None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "agentidp"
    return subprocess.run(
        [str(script), *args],
        env=_environ(**changes),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _placeholder_line(key: str) -> str:
    return (
        f"{key} is a placeholder shipped with AgentIdP; generate one with "
        '`python -c "import secrets; print(secrets.token_urlsafe(32))"`'
    )


CASES: list[tuple[str, dict[str, str | None], str]] = [
    (
        "no_pepper",
        {"CREDENTIAL_PEPPER": None},
        "CREDENTIAL_PEPPER environment variable is required",
    ),
    (
        "no_keys",
        {"KEY_STORE_SECRET": None},
        "JWT_PRIVATE_KEY and JWT_PUBLIC_KEY environment variables are required, or "
        "KEY_STORE_SECRET to keep generated keys in the database key store",
    ),
    (
        "empty_pepper",
        {"CREDENTIAL_PEPPER": ""},
        "CREDENTIAL_PEPPER environment variable is required",
    ),
    (
        "placeholder_pepper",
        {"CREDENTIAL_PEPPER": "change-me"},
        _placeholder_line("CREDENTIAL_PEPPER"),
    ),
    (
        "placeholder_store_secret",
        {"KEY_STORE_SECRET": "change-me"},
        _placeholder_line("KEY_STORE_SECRET"),
    ),
    (
        "development_store_secret",
        {"KEY_STORE_SECRET": "development-only-key-store-secret-do-not-use-in-production"},
        _placeholder_line("KEY_STORE_SECRET"),
    ),
    (
        "short_pepper",
        {"CREDENTIAL_PEPPER": "s3cr3t-but-only-31-bytes-long!!"},
        "CREDENTIAL_PEPPER must be at least 32 bytes, got 31; generate one with "
        '`python -c "import secrets; print(secrets.token_urlsafe(32))"`',
    ),
    (
        "short_store_secret",
        {"KEY_STORE_SECRET": "0123456789"},
        "KEY_STORE_SECRET must be at least 32 bytes, got 10; generate one with "
        '`python -c "import secrets; print(secrets.token_urlsafe(32))"`',
    ),
    (
        "short_previous_store_secret",
        {"KEY_STORE_SECRET_PREVIOUS": "old"},
        "KEY_STORE_SECRET_PREVIOUS must be at least 32 bytes, got 3; generate one with "
        '`python -c "import secrets; print(secrets.token_urlsafe(32))"`',
    ),
    (
        "unknown_env",
        {"AGENTIDP_ENV": "prod"},
        "AGENTIDP_ENV must be one of development, test, production, got 'prod'",
    ),
    (
        "public_key_alone",
        {"KEY_STORE_SECRET": None, "JWT_PUBLIC_KEY": PUBLIC_A},
        "JWT_PUBLIC_KEY is set without JWT_PRIVATE_KEY: set both, or neither to use the key "
        "store (an old public key goes in JWT_PREVIOUS_PUBLIC_KEYS)",
    ),
    (
        "mismatched_pair",
        {"KEY_STORE_SECRET": None, "JWT_PRIVATE_KEY": PRIVATE_A, "JWT_PUBLIC_KEY": PUBLIC_B},
        "JWT_PUBLIC_KEY is not the public half of JWT_PRIVATE_KEY",
    ),
    (
        "unparsable_private_key",
        {
            "KEY_STORE_SECRET": None,
            "JWT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\\nnope\\n-----END PRIVATE KEY-----",
        },
        "JWT_PRIVATE_KEY is not a PEM RSA, EC P-256 or Ed25519 private key",
    ),
    (
        "unsupported_curve",
        {"KEY_STORE_SECRET": None, "JWT_PRIVATE_KEY": P384_PRIVATE},
        "JWT_PRIVATE_KEY is not a PEM RSA, EC P-256 or Ed25519 private key",
    ),
]


@pytest.mark.parametrize(("changes", "line"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_serve_refuses_to_start_with_one_line(changes: dict[str, str | None], line: str) -> None:
    result = run("serve", **changes)
    assert (result.returncode, result.stderr.splitlines()) == (1, [FAILED + line])
    assert result.stdout == ""
    for key, value in changes.items():
        if value and key in SECRET_KEYS:  # a secret or key never reaches the line
            assert value not in result.stderr
            assert value.replace("\n", "\\n") not in result.stderr


SECRET_KEYS = {s.key for s in KERNEL_SETTINGS if s.secret}


def test_keys_line_extends_the_runbook_line() -> None:
    assert KEYS_REQUIRED.startswith(JWT_KEYS_REQUIRED)


def test_every_command_that_builds_the_app_refuses_too() -> None:
    result = run("keys", "list", CREDENTIAL_PEPPER=None)
    expected = FAILED + "CREDENTIAL_PEPPER environment variable is required"
    assert (result.returncode, result.stderr.splitlines()) == (1, [expected])


def test_production_with_its_secrets_validates() -> None:
    """The control: the settings every case above breaks one of pass as they are, with
    the key store or with the PEM pair (and only its private half)."""
    for environ in (
        PRODUCTION,
        {**PRODUCTION, "KEY_STORE_SECRET": "", "JWT_PRIVATE_KEY": PRIVATE_A},
        {
            **PRODUCTION,
            "KEY_STORE_SECRET": "",
            "JWT_PRIVATE_KEY": PRIVATE_A.replace("\n", "\\n"),
            "JWT_PUBLIC_KEY": PUBLIC_A,
            "JWT_PREVIOUS_PUBLIC_KEYS": PUBLIC_B,
        },
    ):
        assert validate(load_settings(environ=environ), KERNEL_SETTINGS) == []


def _shipped_secret_values() -> list[tuple[str, str]]:
    """Every secret value the repository ships, wherever it is written."""
    names = "|".join(
        s.key for s in KERNEL_SETTINGS if s.secret and s.key.endswith(("PEPPER", "SECRET"))
    )
    pattern = re.compile(rf"^\s*({names})\s*[:=]\s*\"?([^\"\s#]+)\"?", re.MULTILINE)
    found = []
    for path in [*ROOT.joinpath("deploy").rglob("*"), ROOT / "config" / "settings.toml"]:
        if path.is_file():
            found.extend(pattern.findall(path.read_text(encoding="utf-8", errors="replace")))
    return found


def test_every_shipped_secret_is_refused_in_production() -> None:
    shipped = _shipped_secret_values()
    keys = {key for key, _ in shipped}
    assert {"CREDENTIAL_PEPPER", "KEY_STORE_SECRET"} <= keys  # the scan finds them
    for key, value in shipped:
        if value.startswith("${"):  # compose interpolation, not a value
            continue
        assert weak_secret(key, value) is not None, (key, value)
    # `change-me` and its spellings are the repository's placeholder, wherever it appears.
    assert {"change-me", "changeme", "change_me"} <= PLACEHOLDER_SECRETS


def test_weak_values_are_refused_only_in_production() -> None:
    environ = {"CREDENTIAL_PEPPER": "change-me", "KEY_STORE_SECRET": "short"}
    for env in ("development", "test"):
        assert validate(load_settings(env=env, environ=environ), KERNEL_SETTINGS) == []
