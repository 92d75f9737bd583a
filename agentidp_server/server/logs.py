"""Logging: JSON lines in production, plain text elsewhere; request ids; redaction."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "agentidp_request_id", default=None
)

# Last line of defence: values that look like secrets are masked even if a
# message or exception text carries them by mistake.
_KEY_VALUE = re.compile(
    r"(?i)(client_secret|password|secret|assertion|token|authorization)"
    r"([\"']?\s*[=:]\s*)"
    # A quoted value up to its closing quote (spaces included), or a bare one; an
    # auth scheme ("Authorization: Bearer <token>") belongs to the value after it.
    r"(\"[^\"]*\"|'[^']*'|(?:(?:bearer|basic|dpop)\s+)?[^\s&\"',}]+)"
)


def _mask_value(match: re.Match[str]) -> str:
    value = match.group(3)
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match.group(1)}{match.group(2)}{quote}[redacted]{quote}"


_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    (_KEY_VALUE, _mask_value),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [redacted]"),
    (re.compile(r"(?i)(\w+://[^:/\s@]*:)[^@\s]+@"), r"\1[redacted]@"),
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, message, request id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "message": redact(record.getMessage()),
            "logger": record.name,
            "request_id": getattr(record, "request_id", None),
        }
        for key in ("access", "plugin"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = redact(record.getMessage())
        if record.exc_info:
            text += "\n" + redact(self.formatException(record.exc_info))
        return text


def configure_logging(settings: Any) -> None:
    """Route the `agentidp` loggers (and hypercorn's errors) to stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter() if settings.LOG_FORMAT == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    for name in ("agentidp", "hypercorn.error", "quart.app"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(settings.LOG_LEVEL)
        logger.propagate = False
