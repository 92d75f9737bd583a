"""agentidp-oidc: AgentIdP as an OpenID Provider for agent identity.

Serves OpenID Connect Discovery 1.0 metadata at `/.well-known/openid-configuration`,
adds an `id_token` to token responses whose request named the `openid` scope, and
answers UserInfo at `/api/v1/oidc/userinfo`. Machine clients only: there is no
authorization endpoint (see README.md for what Discovery is told about it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from agentidp_server import IdP, hookimpl
from prometheus_client import CollectorRegistry, Counter
from quart import Blueprint

from agentidp_oidc.discovery import id_token_algorithms, shared_fields
from agentidp_oidc.id_token import id_token_fields
from agentidp_oidc.routes import blueprint
from agentidp_oidc.state import state


@hookimpl
def register_blueprints(idp: IdP) -> list[Blueprint]:
    return [blueprint]


@hookimpl
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    state(idp)["id_tokens"] = Counter(
        "agentidp_oidc_tokens_issued_total", "OIDC ID tokens issued", registry=registry
    )


@hookimpl
def lifespan(idp: IdP) -> AbstractAsyncContextManager[None]:
    @asynccontextmanager
    async def check_algorithms() -> AsyncIterator[None]:
        # The kernel's lifespan (entered first) has loaded the keys by now.
        if "RS256" not in id_token_algorithms(idp):
            # OIDC Core §15.1 and Discovery §3 expect RS256 among id_token algs.
            idp.log.warning(
                "OIDC: id_tokens are signed with %s; OpenID clients that only accept RS256 "
                "need JWT_ALGORITHM=RS256",
                ", ".join(id_token_algorithms(idp)) or "no key",
            )
        yield

    return check_algorithms()


@hookimpl
async def token_response(idp: IdP, context: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return await id_token_fields(idp, context)


@hookimpl
def discovery_metadata(idp: IdP) -> Mapping[str, Any]:
    return shared_fields(idp)
