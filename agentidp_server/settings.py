"""Settings: Dynaconf environments, the runbook's variable names, and validation."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf
from dynaconf.utils.parse_conf import parse_conf_data

ENV_SWITCHER = "AGENTIDP_ENV"
ENV_PREFIX = "AGENTIDP"
ENVIRONMENTS = ("development", "test", "production")


class SettingsError(Exception):
    """Settings that cannot start a server; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Setting:
    """One setting: its key, default, type and what it is for.

    The same declarations feed Dynaconf's defaults, validation and the README's
    configuration table, so the three cannot drift apart.
    """

    key: str
    default: Any
    description: str
    type: type | tuple[type, ...] = str
    check: Callable[[Any], str | None] | None = None
    secret: bool = False
    choices: tuple[Any, ...] = field(default=())

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None
        expected = self.type if isinstance(self.type, tuple) else (self.type,)
        # A secret's value never appears in a problem line (they reach stderr and logs).
        got = "" if self.secret else f", got {value!r}"
        # bool is an int subclass; "PORT=true" must not pass as a port
        if isinstance(value, bool) and bool not in expected:
            return f"{self.key} must be {_type_name(self.type)}{got}"
        if not isinstance(value, expected):
            return f"{self.key} must be {_type_name(self.type)}{got}"
        if self.choices and value not in self.choices:
            options = ", ".join(str(c) for c in self.choices)
            return f"{self.key} must be one of {options}{got}"
        if self.check is not None:
            message = self.check(value)
            if message:
                return f"{self.key} {message}"
        return None


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value!r}"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must not be negative, got {value!r}"


def _port(value: Any) -> str | None:
    return None if 0 < value < 65536 else f"must be between 1 and 65535, got {value!r}"


def _url(*schemes: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value == "":
            return None
        scheme = value.split(":", 1)[0].lower()
        if "://" not in value or scheme not in schemes:
            return f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
        return None

    return check


def _http_url(value: Any) -> str | None:
    if value == "":
        return None
    if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
        return "must be an http(s) URL without query or fragment, e.g. https://idp.example.com"
    return None


KERNEL_SETTINGS: tuple[Setting, ...] = (
    Setting("PORT", 3000, "TCP port the server binds", int, _port),
    Setting("HOST", "0.0.0.0", "Address the server binds"),  # noqa: S104
    Setting(
        "ISSUER",
        "",
        "Public base URL of this server (`iss` of every token); "
        "empty means `http://localhost:<PORT>`",
        str,
        _http_url,
    ),
    Setting(
        "DATABASE_URL",
        "",
        "PostgreSQL URL (`postgresql://...`); empty in development means the embedded SQLite",
        str,
        _url("postgresql", "postgres", "sqlite"),
        secret=True,
    ),
    Setting(
        "REDIS_URL",
        "",
        "Redis URL (`redis://` or `rediss://`); empty in development means in-process memory",
        str,
        _url("redis", "rediss", "unix", "memory"),
        secret=True,
    ),
    Setting("DATA_DIR", "./.agentidp", "Where the embedded SQLite database lives"),
    Setting("WORKERS", 1, "Worker processes `agentidp serve` supervises", int, _positive),
    Setting(
        "SERVER",
        "hypercorn",
        "ASGI server under each worker: hypercorn, or uvicorn (with uvloop and httptools, "
        "from the `fast` extra) for the highest token rate",
        choices=("hypercorn", "uvicorn"),
    ),
    Setting(
        "GRACEFUL_TIMEOUT",
        30.0,
        "Seconds in-flight requests get to finish after SIGTERM",
        (int, float),
        _positive,
    ),
    Setting(
        "REQUEST_READ_TIMEOUT",
        30.0,
        "Seconds a client has to send a whole request body (a slow or stalled upload "
        "is answered 408 and closed)",
        (int, float),
        _positive,
    ),
    Setting(
        "MIGRATE_ON_START",
        False,
        "Apply pending migrations when the server starts (on in development)",
        bool,
    ),
    Setting("DB_POOL_MIN_SIZE", 1, "Minimum PostgreSQL connections per worker", int),
    Setting("DB_POOL_MAX_SIZE", 10, "Maximum PostgreSQL connections per worker", int, _positive),
    Setting(
        "DB_ACQUIRE_TIMEOUT",
        5.0,
        "Seconds a request waits for a database connection before answering 503",
        (int, float),
        _positive,
    ),
    Setting(
        "DB_STATEMENT_TIMEOUT",
        10.0,
        "Seconds one SQL statement may run before it is cancelled (503)",
        (int, float),
        _positive,
    ),
    Setting(
        "CLIENT_CACHE_TTL",
        300.0,
        "Seconds a worker may reuse a client lookup (PostgreSQL only; changes drop it at "
        "once through LISTEN/NOTIFY, this bounds it if a notification is lost); 0 turns "
        "the cache off",
        (int, float),
        _not_negative,
    ),
    Setting(
        "CLIENT_CACHE_SIZE",
        100_000,
        "Clients each worker keeps in its lookup cache",
        int,
        _positive,
    ),
    Setting(
        "REDIS_TIMEOUT",
        2.0,
        "Seconds one Redis command (or connect) may take before it fails",
        (int, float),
        _positive,
    ),
    Setting("REDIS_KEY_PREFIX", "", "Prefix for every Redis key (empty keeps the runbook's keys)"),
    Setting(
        "HEALTH_CHECK_TIMEOUT",
        2.0,
        "Seconds each readiness check may take",
        (int, float),
        _positive,
    ),
    Setting(
        "SHUTDOWN_TASK_TIMEOUT",
        5.0,
        "Seconds background tasks get to stop at shutdown",
        (int, float),
        _positive,
    ),
    Setting(
        "CORS_ORIGIN",
        "",
        "Comma-separated browser origins allowed to call the API (e.g. an admin console)",
    ),
    Setting(
        "LOG_LEVEL", "INFO", "Log level", str, None, choices=("DEBUG", "INFO", "WARNING", "ERROR")
    ),
    Setting(
        "LOG_FORMAT",
        "text",
        "`json` (one object per line) or `text`",
        str,
        None,
        choices=("json", "text"),
    ),
    Setting("ACCESS_LOG", True, "Write one access line per request", bool),
    Setting(
        "JWT_PRIVATE_KEY",
        "",
        "PEM private key that signs tokens (RSA, EC P-256 or Ed25519); empty uses the key store",
        secret=True,
    ),
    Setting("JWT_PUBLIC_KEY", "", "PEM public half of JWT_PRIVATE_KEY (checked to match)"),
    Setting(
        "JWT_PREVIOUS_PUBLIC_KEYS",
        "",
        "PEM public keys of earlier signing keys (concatenated), still published in the JWKS "
        "and accepted, so that rotating JWT_PRIVATE_KEY (or moving to the key store) logs no "
        "client out; remove one once ACCESS_TOKEN_TTL has passed since it last signed",
    ),
    Setting(
        "JWT_ALGORITHM",
        "RS256",
        "Algorithm of keys the key store generates",
        str,
        None,
        choices=("RS256", "ES256", "EdDSA"),
    ),
    Setting(
        "KEY_STORE_SECRET",
        "",
        "Secret that encrypts the key store's private keys (required in production "
        "unless JWT_PRIVATE_KEY is set; at least 32 bytes)",
        secret=True,
    ),
    Setting(
        "KEY_STORE_SECRET_PREVIOUS",
        "",
        "The KEY_STORE_SECRET being rotated out: stored keys that the current secret cannot "
        "decrypt are tried with it; `agentidp keys reencrypt` then moves them to the current one",
        secret=True,
    ),
    Setting(
        "KEY_ACTIVATION_DELAY",
        300,
        "Seconds a rotated key is published before it signs",
        (int, float),
    ),
    Setting(
        "KEYS_REFRESH_INTERVAL",
        30,
        "Seconds between reloads of the key store in each worker (on PostgreSQL a rotation "
        "or revocation reaches every worker at once through LISTEN/NOTIFY; this bounds a "
        "lost notification)",
        (int, float),
        _positive,
    ),
    Setting("ACCESS_TOKEN_TTL", 900, "Access-token lifetime in seconds", int, _positive),
    Setting(
        "DEFAULT_AUDIENCE",
        "",
        "`aud` of tokens requested without `resource`; empty means the ISSUER",
    ),
    Setting(
        "CREDENTIAL_PEPPER",
        "",
        "Secret key of the HMAC that stores client secrets (required in production; at "
        "least 32 bytes)",
        secret=True,
    ),
    Setting("RATE_LIMIT_WINDOW_MS", 60000, "Rate-limit window in milliseconds", int, _positive),
    Setting("RATE_LIMIT_MAX", 100, "Requests one client may make per window", int, _positive),
    Setting(
        "AUTH_FAILURE_LIMIT",
        20,
        "Failed client authentications per presented client id and address per window",
        int,
        _positive,
    ),
    Setting("TIER_FREE_DAILY_CALLS", 1000, "API calls a day on the free tier (0: unlimited)", int),
    Setting("TIER_FREE_DAILY_TOKENS", 1000, "Tokens a day on the free tier (0: unlimited)", int),
    Setting("TIER_PRO_DAILY_CALLS", 100000, "API calls a day on the pro tier (0: unlimited)", int),
    Setting("TIER_PRO_DAILY_TOKENS", 100000, "Tokens a day on the pro tier (0: unlimited)", int),
    Setting(
        "TIER_ENTERPRISE_DAILY_CALLS",
        0,
        "API calls a day on the enterprise tier (0: unlimited)",
        int,
    ),
    Setting(
        "TIER_ENTERPRISE_DAILY_TOKENS", 0, "Tokens a day on the enterprise tier (0: unlimited)", int
    ),
    Setting(
        "METRICS_PER_ID_LABELS",
        True,
        "Keep the runbook's client_id/org_id metric labels; false drops them for very many agents",
        bool,
    ),
    Setting(
        "AUDIT_VERIFY_INTERVAL",
        300,
        "Seconds between background verifications of every audit chain (the integrity gauge)",
        (int, float),
        _positive,
    ),
    Setting(
        "AUDIT_VERIFY_BATCH",
        50_000,
        "Events per chain the background integrity check re-hashes per round (it sweeps "
        "each chain in slices; the CLI and API verify whole chains)",
        int,
        _positive,
    ),
    Setting(
        "AUDIT_DISPATCH_INTERVAL",
        1.0,
        "Seconds between looks for audit events other processes committed (plugin delivery)",
        (int, float),
        _positive,
    ),
    Setting(
        "AUDIT_CONSUMER_TIMEOUT",
        10.0,
        "Seconds a plugin's audit_event handler has for one event before the attempt counts "
        "as failed and is retried",
        (int, float),
        _positive,
    ),
    Setting(
        "AUDIT_CONSUMER_RETRY_MIN",
        1.0,
        "Seconds before the first retry of an audit event a plugin failed on (doubling after "
        "each further failure)",
        (int, float),
    ),
    Setting(
        "AUDIT_CONSUMER_RETRY_MAX",
        60.0,
        "Most seconds between two retries of an audit event a plugin keeps failing on",
        (int, float),
        _positive,
    ),
    Setting(
        "AUDIT_STRICT_ACTIONS",
        False,
        "Refuse to record an audit action no plugin declared (register_audit_actions); "
        "on in the test suites",
        bool,
    ),
    Setting(
        "AUDIT_CHECKPOINT_INTERVAL",
        60,
        "Seconds between signed checkpoints of each audit chain that grew",
        (int, float),
        _positive,
    ),
    Setting(
        "AUDIT_RETENTION_DAYS",
        0,
        "Days audit events are kept (0: forever); pruning leaves a signed checkpoint at the cut",
        int,
    ),
    Setting(
        "OPERATOR_TOKEN",
        "",
        "Bearer secret of the operator API (tier changes); empty disables that API",
        secret=True,
    ),
)

# The runbook's production requirements, worded as its error lines.
JWT_KEYS_REQUIRED = "JWT_PRIVATE_KEY and JWT_PUBLIC_KEY environment variables are required"
REQUIRED_IN_PRODUCTION = {
    "DATABASE_URL": "DATABASE_URL environment variable is required",
    "REDIS_URL": "REDIS_URL environment variable is required",
}
# The runbook's keys line (§ startup errors), extended with the key store as the alternative.
KEYS_REQUIRED = (
    f"{JWT_KEYS_REQUIRED}, or KEY_STORE_SECRET to keep generated keys in the database key store"
)
PEPPER_REQUIRED = "CREDENTIAL_PEPPER environment variable is required"
# Secrets production refuses to run on: the only list of the placeholders this
# repository ships (deploy/.env.example, deploy/k8s/secret.example.yaml,
# config/settings.toml); tests/test_production_secrets.py checks it covers them.
PLACEHOLDER_SECRETS = frozenset(
    {
        "change-me",
        "changeme",
        "change_me",
        "development-only-pepper-do-not-use-in-production",
        "development-only-key-store-secret-do-not-use-in-production",
        "test-only-pepper",
        "test-only-key-store-secret",
    }
)
# 256 bits, the entropy the HMAC and the key-store KDF are meant to have.
MIN_SECRET_BYTES = 32
GENERATE_HINT = '`python -c "import secrets; print(secrets.token_urlsafe(32))"`'
SECRETS_CHECKED_IN_PRODUCTION = (
    "CREDENTIAL_PEPPER",
    "KEY_STORE_SECRET",
    "KEY_STORE_SECRET_PREVIOUS",
)


def weak_secret(key: str, value: str) -> str | None:
    """Why `value` cannot protect production, without ever quoting it."""
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        return f"{key} is a placeholder shipped with AgentIdP; generate one with {GENERATE_HINT}"
    if len(value.encode()) < MIN_SECRET_BYTES:
        return (
            f"{key} must be at least {MIN_SECRET_BYTES} bytes, got {len(value.encode())}; "
            f"generate one with {GENERATE_HINT}"
        )
    return None


def _settings_file() -> Path | None:
    here = Path(__file__).resolve().parent
    for candidate in (here / "config" / "settings.toml", here.parent / "config" / "settings.toml"):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    env: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    settings_file: str | os.PathLike[str] | None = None,
) -> Any:
    """Load settings for one environment.

    Order (later wins): built-in defaults, `config/settings.toml` ([default] then
    the current environment's section), the runbook's plain variable names
    (`DATABASE_URL`), `AGENTIDP_`-prefixed variables, then `overrides`.
    """
    environ = os.environ if environ is None else environ
    env = (env or environ.get(ENV_SWITCHER) or "development").lower()
    files = [str(settings_file)] if settings_file else []
    if not files and (found := _settings_file()):
        files = [str(found)]
    extra = environ.get("AGENTIDP_SETTINGS_FILE")
    if extra:
        files.append(extra)
    # Dynaconf's env loader reads os.environ: a caller-supplied environ replaces it
    # (otherwise a developer's exported AGENTIDP_* variables leak into tests).
    isolated: dict[str, Any] = {} if environ is os.environ else {"loaders": []}
    settings = Dynaconf(
        envvar_prefix=ENV_PREFIX,
        settings_files=files,
        environments=True,
        env=env,
        env_switcher=ENV_SWITCHER,
        # A developer's .env must not leak into test runs (PITFALLS.md).
        load_dotenv=env != "test" and environ is os.environ,
        merge_enabled=False,
        **isolated,
    )
    if environ is not os.environ:
        for key, value in environ.items():
            if key.startswith(ENV_PREFIX + "_") and key != ENV_SWITCHER:
                settings.set(key[len(ENV_PREFIX) + 1 :], parse_conf_data(value, tomlfy=True))
    settings.set("ENV", env)
    settings.set("_ENVIRON", dict(environ))
    settings.set("_OVERRIDES", dict(overrides or {}))
    apply_defaults(settings, KERNEL_SETTINGS)
    for key, value in (overrides or {}).items():
        settings.set(key, value)
    return settings


def apply_defaults(settings: Any, specs: Iterable[Setting]) -> None:
    """Give each declared key its default, then the plain and prefixed variables."""
    environ: Mapping[str, str] = settings.get("_ENVIRON", {})
    overrides: Mapping[str, Any] = settings.get("_OVERRIDES", {})
    for spec in specs:
        if settings.get(spec.key) is None:
            settings.set(spec.key, spec.default)
        apply_environment(settings, spec.key, environ, overrides, text=spec.type is str)


def apply_environment(
    settings: Any,
    key: str,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any],
    *,
    text: bool = False,
) -> None:
    """The runbook's unprefixed name works; the `AGENTIDP_` name and overrides win over it.

    With `text`, the variable's value is kept as written (a prefix "2024" or an
    all-digit secret stays a string instead of being parsed into a number).
    """
    if key in overrides:
        settings.set(key, overrides[key])
        return
    for name in (f"{ENV_PREFIX}_{key}", key):
        if name in environ:
            raw = environ[name]
            settings.set(key, raw if text else parse_conf_data(raw, tomlfy=True))
            return


def validate(settings: Any, specs: Iterable[Setting]) -> list[str]:
    """Return one line per problem, in the order the settings were declared."""
    problems = [p for spec in specs if (p := spec.problem(settings.get(spec.key))) is not None]
    delay, refresh = settings.get("KEY_ACTIVATION_DELAY"), settings.get("KEYS_REFRESH_INTERVAL")
    if isinstance(delay, int | float) and isinstance(refresh, int | float) and delay < refresh:
        # Every worker must have loaded a new key before any worker signs with it.
        problems.append(
            f"KEY_ACTIVATION_DELAY ({delay}) must be at least KEYS_REFRESH_INTERVAL ({refresh})"
        )
    if settings.ENV not in ENVIRONMENTS:
        # A typo ("prod") must not silently run with development's embedded storage.
        problems.insert(
            0, f"{ENV_SWITCHER} must be one of {', '.join(ENVIRONMENTS)}, got {settings.ENV!r}"
        )
    if settings.ENV == "production":
        problems.extend(
            message for key, message in REQUIRED_IN_PRODUCTION.items() if not settings.get(key)
        )
        problems.extend(_production_secrets(settings))
    from agentidp_server.keys.keyring import key_setting_problems  # keys imports nothing from here

    problems.extend(key_setting_problems(settings))
    return problems


def _production_secrets(settings: Any) -> list[str]:
    problems = []
    if not settings.get("CREDENTIAL_PEPPER"):
        problems.append(PEPPER_REQUIRED)
    pem_set = settings.get("JWT_PRIVATE_KEY") or settings.get("JWT_PUBLIC_KEY")
    # A half pair has its own line (keys.key_setting_problems): one line per mistake.
    if not settings.get("KEY_STORE_SECRET") and not pem_set:
        problems.append(KEYS_REQUIRED)
    for key in SECRETS_CHECKED_IN_PRODUCTION:
        value = settings.get(key)
        if isinstance(value, str) and value and (problem := weak_secret(key, value)):
            problems.append(problem)
    return problems


def issuer(settings: Any) -> str:
    """The public base URL, without a trailing slash."""
    value: str = settings.get("ISSUER") or f"http://localhost:{settings.PORT}"
    return value.rstrip("/")
