"""What the kernel knows of the request being served, whichever pipeline serves it.

Most requests go through Quart, but the token endpoint has a leaner ASGI path
(`oauth/token_asgi.py`); code shared by both reads the request id, client
address and headers from here rather than from Quart's `request` and `g`.
"""

from __future__ import annotations

import contextvars
import re
import time
from dataclasses import dataclass, field
from typing import Protocol

from agentidp_server.server.logs import request_id_var
from agentidp_server.util.ids import new_id


class Headers(Protocol):
    """Header lookup by lower-case name: werkzeug's Headers, or a dict of lower-case keys."""

    def get(self, key: str, default: str, /) -> str | None: ...


_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class RequestScope:
    method: str
    path: str
    remote_addr: str | None
    headers: Headers
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    rate_headers: dict[str, str] = field(default_factory=dict)
    tiers: dict[str, str] = field(default_factory=dict)  # org_id -> tier, read once per request
    # Tokens already counted with the request's admission (one kv step), not yet minted.
    prepaid_tokens: int = 0
    # HTTP Basic credentials once decoded (False: not decoded yet); several steps of
    # client authentication read them, and decoding costs microseconds each time.
    basic: tuple[str, str] | bool | None = False

    def header(self, name: str) -> str:
        return self.headers.get(name, "") or ""


_current: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "agentidp_request_scope", default=None
)


def request_id_from(incoming: str) -> str:
    """The caller's X-Request-Id when it is safe to echo and log, else a new one."""
    return incoming if _VALID_REQUEST_ID.match(incoming) else new_id()


def begin(method: str, path: str, remote_addr: str | None, headers: Headers) -> RequestScope:
    """Start serving a request in this task (each ASGI request runs in a task of its own)."""
    scope = RequestScope(
        method, path, remote_addr, headers, request_id_from(headers.get("x-request-id", "") or "")
    )
    _current.set(scope)
    request_id_var.set(scope.request_id)
    return scope


def current() -> RequestScope | None:
    """The request being served, or None (CLI, background tasks, tests without a request)."""
    return _current.get()


def started() -> float:
    """When the request arrived (now, for one that failed before it was begun)."""
    scope = _current.get()
    return scope.started if scope is not None else time.perf_counter()


def require() -> RequestScope:
    """The request being served; calling this outside a request is a programming error."""
    scope = _current.get()
    if scope is None:
        raise RuntimeError("no request is being served")
    return scope


def take_prepaid_token() -> bool:
    """Use one token counted at admission, if the request being served has one."""
    scope = _current.get()
    if scope is None or scope.prepaid_tokens == 0:
        return False
    scope.prepaid_tokens -= 1
    return True
