"""AgentIdP kernel. Plugins import only what this module exports."""

from agentidp_server.api.auth import principal, principal_actor, principal_org, require_scope
from agentidp_server.audit.log import Actor, AuditAction, UndeclaredAuditAction
from agentidp_server.cli import load_idp, open_idp
from agentidp_server.directory.scopes import Scope
from agentidp_server.hookspecs import hookimpl
from agentidp_server.idp import IdP, current_idp
from agentidp_server.keys.keyring import SigningKey
from agentidp_server.oauth.client_auth import Client, ClientAuthMethod
from agentidp_server.oauth.client_credentials import resource_uri
from agentidp_server.oauth.errors import OAuthError
from agentidp_server.oauth.grants import GrantType
from agentidp_server.oauth.rfc8693 import (
    ACCESS_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    ExchangedToken,
    TokenExchange,
    TokenExchangeHandler,
)
from agentidp_server.oauth.rfc9068 import InvalidToken, issued_at_ms, valid_after_ms
from agentidp_server.oauth.subjects import SUBJECT_KIND_CLAIM, Subject, SubjectKind, subject_kind
from agentidp_server.oauth.token_request import TokenRequest
from agentidp_server.server.health import HealthCheck
from agentidp_server.server.http import ApiError
from agentidp_server.server.leases import Lease, Leases
from agentidp_server.server.openapi import document_empty, document_errors, document_raw_response
from agentidp_server.settings import Setting
from agentidp_server.storage.migrations import MigrationSet
from agentidp_server.util.background import BackgroundTask
from agentidp_server.util.clock import Clock, TestClock, now_ms, now_s
from agentidp_server.views import (
    Agent,
    ChainReport,
    Credential,
    Organisation,
    Page,
    Principal,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "SUBJECT_KIND_CLAIM",
    "TOKEN_EXCHANGE",
    "Actor",
    "Agent",
    "ApiError",
    "AuditAction",
    "BackgroundTask",
    "ChainReport",
    "Client",
    "ClientAuthMethod",
    "Clock",
    "Credential",
    "ExchangedToken",
    "GrantType",
    "HealthCheck",
    "IdP",
    "InvalidToken",
    "Lease",
    "Leases",
    "MigrationSet",
    "OAuthError",
    "Organisation",
    "Page",
    "Principal",
    "Scope",
    "Setting",
    "SigningKey",
    "Subject",
    "SubjectKind",
    "TestClock",
    "TokenExchange",
    "TokenExchangeHandler",
    "TokenRequest",
    "UndeclaredAuditAction",
    "Usage",
    "__version__",
    "current_idp",
    "document_empty",
    "document_errors",
    "document_raw_response",
    "hookimpl",
    "issued_at_ms",
    "load_idp",
    "now_ms",
    "now_s",
    "open_idp",
    "principal",
    "principal_actor",
    "principal_org",
    "require_scope",
    "resource_uri",
    "subject_kind",
    "valid_after_ms",
]
