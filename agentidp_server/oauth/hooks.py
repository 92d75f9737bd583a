"""The OAuth endpoints, grants, client authentication methods, token metrics and client
cache, registered through the plugin hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from quart import Blueprint

from agentidp_server.hookspecs import hookimpl
from agentidp_server.oauth import endpoints
from agentidp_server.oauth.client_auth import KERNEL_METHODS, ClientAuthMethod
from agentidp_server.oauth.client_credentials import ClientCredentialsGrant
from agentidp_server.oauth.client_lookup import ClientLookup
from agentidp_server.oauth.grants import GrantType
from agentidp_server.oauth.rfc8693 import TokenExchangeGrant
from agentidp_server.oauth.rfc9068 import AGENT_KIND
from agentidp_server.oauth.subjects import SubjectKind
from agentidp_server.server.metrics import labelled
from agentidp_server.util.background import BackgroundTask

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


@hookimpl
def register_blueprints(idp: IdP) -> list[Blueprint]:
    return [endpoints.blueprint]


@hookimpl
def register_client_auth_methods(idp: IdP) -> list[ClientAuthMethod]:
    return list(KERNEL_METHODS.values())


@hookimpl
def register_grant_types(idp: IdP) -> list[GrantType]:
    grants: list[GrantType] = [ClientCredentialsGrant()]
    handlers = idp._hooks.token_exchange_handlers(idp)
    if handlers:  # RFC 8693 is served (and advertised) only with someone to decide
        grants.append(TokenExchangeGrant(handlers))
    return grants


@hookimpl
def register_subject_kinds(idp: IdP) -> list[SubjectKind]:
    return [AGENT_KIND]


@hookimpl
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    # Counted on every token: kept as a `labelled` child lookup.
    idp.state.setdefault("core", {})["tokens_issued"] = labelled(
        Counter(
            "agentidp_tokens_issued_total", "OAuth 2.0 tokens issued", ["scope"], registry=registry
        )
    )


@hookimpl
def register_background_tasks(idp: IdP) -> list[BackgroundTask]:
    async def client_cache() -> None:
        await ClientLookup.of(idp).cache.listen_forever(idp)

    return [BackgroundTask("client-cache", client_cache)]
