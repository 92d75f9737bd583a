"""JWT access tokens (RFC 9068): minting, verification, status and revocation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import suppress
from functools import cached_property
from typing import TYPE_CHECKING, Any, overload

from joserfc import jwt
from joserfc.errors import JoseError

from agentidp_server.audit.log import Actor
from agentidp_server.oauth.jws_parts import unverified_part
from agentidp_server.oauth.subjects import AGENT, SUBJECT_KIND_CLAIM, Subject, SubjectKind
from agentidp_server.server import request_scope
from agentidp_server.storage.errors import Conflict, StorageUnavailable
from agentidp_server.util.clock import now as clock_now
from agentidp_server.util.ids import new_id, now_ms
from agentidp_server.views import Agent

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

log = logging.getLogger("agentidp.tokens")

TOKEN_TYPE = "at+jwt"  # noqa: S105 - RFC 9068 media type
SIGNATURE_INVALID = "Token signature is invalid"
# Set by a resync to its time: when the kv copy of the revocations was last complete.
SYNC_MARKER = "agentidp:revocations-synced"
_REVOKED_SQL = "EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.jti = {jti})"
# Revocation, the agent and the credential behind an agent's token, in one round trip.
_AGENT_STATUS_SQL = (
    "SELECT a.status, a.org_id, a.tokens_valid_after, "
    "(SELECT c.status FROM credentials c WHERE c.credential_id = $2) AS credential_status, "
    f"{_REVOKED_SQL.format(jti='$3')} AS revoked "
    "FROM agents a WHERE a.agent_id = $1"
)
# Another kind's token: revocation and the credential (if it names one), in one round trip.
_SUBJECT_STATUS_SQL = (
    f"SELECT {_REVOKED_SQL.format(jti='$1')} AS revoked, "
    "(SELECT c.status FROM credentials c WHERE c.credential_id = $2) AS credential_status"
)
NOT_SERVED = "Token's subject kind is not served"
# A private claim (RFC 7519 §4.3): the issue time in ms, so a token issued just after a
# reactivation (in the suspension's second) is active; `iat` has one-second granularity.
ISSUED_MS = "iat_ms"


class InvalidToken(Exception):
    """The token cannot be accepted; the message is safe to show."""


def issued_at_ms(claims: Mapping[str, Any]) -> int:
    """When a token was issued, in unix ms, to compare with `tokens_valid_after`.

    A token without `iat_ms` (an older server's) counts from the start of its `iat`
    second: one issued in the second of a suspension stays inactive, as it was.
    """
    iat = claims.get("iat")
    seconds = iat if isinstance(iat, int) else 0
    precise = claims.get(ISSUED_MS)
    if isinstance(precise, int) and precise // 1000 == seconds:
        return precise
    return seconds * 1000


# Below this, a `tokens_valid_after` is in seconds (ms values passed it in 1973).
_SECONDS_BELOW = 100_000_000_000


def valid_after_ms(cutoff: int) -> int:
    """`tokens_valid_after` in unix ms. A value in seconds, written by a server from
    before migration 0007 still running in a rolling upgrade, means the end of that
    second (as migration 0007 converts it): read as ms it would lift a suspension."""
    return cutoff * 1000 + 999 if cutoff < _SECONDS_BELOW else cutoff


def _agent_reason(row: Mapping[str, Any] | None, claims: Mapping[str, Any]) -> str | None:
    """Why an agent's token is inactive, from the `_AGENT_STATUS_SQL` row, or None."""
    if row is not None and row["revoked"]:
        return "Token has been revoked"
    if row is None or row["status"] != "active" or row["org_id"] != claims["org_id"]:
        return "Token's agent is not active"
    cutoff = row["tokens_valid_after"]
    if cutoff is not None and issued_at_ms(claims) <= valid_after_ms(cutoff):
        return "Token was issued before the agent was suspended"
    # A revoked or deleted credential ends its tokens (an expired one does not).
    if isinstance(claims.get("credential_id"), str) and row["credential_status"] != "active":
        return "Token's credential has been revoked"
    return None


async def _agent_kind_status(idp: IdP, claims: Mapping[str, Any]) -> str | None:
    return await idp.tokens.agent_status(claims)


# The kernel's own kind (registered in core.py): a local agent and its credential.
AGENT_KIND = SubjectKind(AGENT, _agent_kind_status, "A local agent, by its client credential")


def access_token_claims(token: str) -> dict[str, Any]:
    """The payload of a token this server has just minted (no verification)."""
    claims = unverified_part(token, 1)
    if claims is None:
        raise InvalidToken("Token is malformed")
    return claims


class TokenService:
    def __init__(self, idp: IdP) -> None:
        self.idp = idp
        self._resync: asyncio.Task[None] | None = None

    # Read once: settings do not change once loaded, and each read costs microseconds.
    @cached_property
    def ttl(self) -> int:
        return int(self.idp.settings.ACCESS_TOKEN_TTL)

    @cached_property
    def _default_audience(self) -> str:
        return str(self.idp.settings.DEFAULT_AUDIENCE or self.idp.issuer)

    def default_audience(self) -> str:
        return self._default_audience

    @overload
    async def mint(
        self,
        *,
        agent: dict[str, Any] | Agent,
        credential_id: str,
        client_id: str,
        scopes: list[str],
        audience: str | list[str],
        grant_type: str,
        extra: dict[str, Any] | None = None,
        lifetime: int | None = None,
    ) -> tuple[str, dict[str, Any]]: ...

    @overload
    async def mint(
        self,
        *,
        subject: Subject,
        scopes: list[str],
        audience: str | list[str],
        grant_type: str,
        client_id: str | None = None,
        credential_id: str | None = None,
        extra: dict[str, Any] | None = None,
        lifetime: int | None = None,
    ) -> tuple[str, dict[str, Any]]: ...

    async def mint(
        self,
        *,
        agent: dict[str, Any] | Agent | None = None,
        subject: Subject | None = None,
        credential_id: str | None = None,
        client_id: str | None = None,
        scopes: list[str],
        audience: str | list[str],
        grant_type: str,
        extra: dict[str, Any] | None = None,
        lifetime: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Sign an access token for `agent` (the row its client authenticated as, with
        that client's `credential_id` and `client_id`) or for a `subject` of any
        registered kind. Counted against the subject's organisation, audited as
        `token.issued`, returned once the event has committed."""
        if agent is None:
            if subject is None:
                raise TypeError("mint() needs agent= or subject=")
            return await self._mint_subject(
                subject,
                credential_id=credential_id,
                client_id=client_id,
                scopes=scopes,
                audience=audience,
                grant_type=grant_type,
                extra=extra,
                lifetime=lifetime,
            )
        if subject is not None or credential_id is None or client_id is None:
            raise TypeError("mint(agent=...) takes its client's client_id and credential_id only")
        if isinstance(agent, Agent):  # a plugin's typed view; the token endpoint passes rows
            agent = agent.as_row()
        # The hot path (client credentials, benchmarked): no Subject is built for it.
        # Every grant mints here, so every token is counted against the tier (and the
        # runbook's monthly counter) before it exists: here, or with its request's admission.
        if not request_scope.take_prepaid_token():
            await self.idp.quotas.count_token(client_id, agent["org_id"])
        try:
            issued_ms = now_ms()
            now = issued_ms // 1000
            claims: dict[str, Any] = {
                "iss": self.idp.issuer,
                "sub": agent["agent_id"],
                "aud": audience,
                "client_id": client_id,
                "scope": " ".join(scopes),
                "jti": new_id(),
                "iat": now,
                "exp": now + (lifetime if lifetime is not None else self.ttl),
                "org_id": agent["org_id"],
                "credential_id": credential_id,
                # `iat` is whole seconds (RFC 7519 §2); suspensions are compared in ms.
                ISSUED_MS: issued_ms,
            }
            claims.update(extra or {})
            context = {"agent": agent, "grant_type": grant_type, "claims": dict(claims)}
            claims.update(await self.idp._hooks.token_claims(self.idp, context))
            token = self.idp.keys.sign(claims, TOKEN_TYPE)
            # The token is returned only once its issuance event has committed.
            await self.idp.audit.record(
                self.idp.db,
                org_id=agent["org_id"],
                action="token.issued",
                actor=Actor(client_id=client_id, agent_id=agent["agent_id"]),
                target_type="token",
                target_id=claims["jti"],
                details={
                    "grant_type": grant_type,
                    "scope": claims["scope"],
                    "aud": claims["aud"],
                    "exp": claims["exp"],
                    "credential_id": credential_id,
                    **({"act": claims["act"]} if "act" in claims else {}),
                },
            )
            return token, claims
        except Exception:
            # Counted but not issued (a hook, the key or the audit failed): the daily and
            # monthly counters count issued tokens only.
            await self.idp.quotas.refund_token(client_id, agent["org_id"])
            raise

    def subject_kinds(self) -> Mapping[str, SubjectKind]:
        """Every served subject kind by name (collected once per app, at startup)."""
        return self.idp._hooks.subject_kinds(self.idp)

    async def _mint_subject(
        self,
        subject: Subject,
        *,
        credential_id: str | None,
        client_id: str | None,
        scopes: list[str],
        audience: str | list[str],
        grant_type: str,
        extra: dict[str, Any] | None,
        lifetime: int | None,
    ) -> tuple[str, dict[str, Any]]:
        """A token for a subject that is not an agent row the caller holds."""
        if subject.kind == AGENT:
            # A mapped local agent: its row, read once, so hooks see what they always see.
            view = await self.idp.agents.get_in_org(subject.org_id, subject.subject_id)
            if view is None or view.status != "active":
                raise ValueError(f"agent {subject.subject_id} is not an active agent of its org")
            agent = view.as_row()
            if credential_id is None:
                raise ValueError("an agent's token needs the credential_id it is bound to")
            return await self.mint(
                agent=agent,
                credential_id=credential_id,
                client_id=client_id or str(agent["client_id"]),
                scopes=scopes,
                audience=audience,
                grant_type=grant_type,
                extra=extra,
                lifetime=lifetime,
            )
        if subject.kind not in self.subject_kinds():
            raise ValueError(f"subject kind {subject.kind!r} is not served (no plugin serves it)")
        # No OAuth client behind it (a first-party session): the subject's own label,
        # which counts its monthly tokens apart from every client's.
        client = client_id or subject.client_label()
        org_id = subject.org_id
        if not request_scope.take_prepaid_token():
            await self.idp.quotas.count_token(client, org_id)
        try:
            issued_ms = now_ms()
            now = issued_ms // 1000
            claims: dict[str, Any] = {
                "iss": self.idp.issuer,
                "sub": subject.subject_id,
                "aud": audience,
                "client_id": client,
                "scope": " ".join(scopes),
                "jti": new_id(),
                "iat": now,
                "exp": now + (lifetime if lifetime is not None else self.ttl),
                "org_id": org_id,
                ISSUED_MS: issued_ms,
            }
            if credential_id is not None:
                # The requesting client's credential: revoking it ends the token too.
                claims["credential_id"] = credential_id
            claims.update(extra or {})
            # After `extra`: the kind decides how the token is verified.
            claims[SUBJECT_KIND_CLAIM] = subject.kind
            context = {
                "agent": None,
                "subject": subject,
                "grant_type": grant_type,
                "claims": dict(claims),
            }
            claims.update(await self.idp._hooks.token_claims(self.idp, context))
            token = self.idp.keys.sign(claims, TOKEN_TYPE)
            await self.idp.audit.record(
                self.idp.db,
                org_id=org_id,
                action="token.issued",
                # The client that asked (or the subject's label); no agent acted.
                actor=Actor(client_id=client),
                target_type="token",
                target_id=claims["jti"],
                details={
                    "grant_type": grant_type,
                    "scope": claims["scope"],
                    "aud": claims["aud"],
                    "exp": claims["exp"],
                    "subject_kind": subject.kind,
                    "sub": subject.subject_id,
                    **({"credential_id": credential_id} if credential_id is not None else {}),
                    **({"act": claims["act"]} if "act" in claims else {}),
                },
            )
            return token, claims
        except Exception:
            await self.idp.quotas.refund_token(client, org_id)
            raise

    def verify_signature(self, token: str) -> dict[str, Any]:
        """Signature, `typ`, `iss` and `exp`; InvalidToken says which failed."""
        header = unverified_part(token, 0)
        if header is None:
            raise InvalidToken("Token is malformed")
        key = self.idp.keys.verification_key(str(header.get("kid", "")))
        # The key fixes the algorithm: `none`, HS256-with-the-public-key and
        # other confusions fail here (RFC 8725 §3.1).
        if key is None or header.get("alg") != key.alg:
            raise InvalidToken(SIGNATURE_INVALID)
        if str(header.get("typ", "")).lower() not in (TOKEN_TYPE, f"application/{TOKEN_TYPE}"):
            raise InvalidToken("Token is not an access token (typ must be at+jwt)")
        try:
            claims = dict(jwt.decode(token, key.key, algorithms=[key.alg]).claims)
        except (JoseError, ValueError):
            raise InvalidToken(SIGNATURE_INVALID) from None
        if claims.get("iss") != self.idp.issuer:
            raise InvalidToken("Token issuer is not this server")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= clock_now():
            raise InvalidToken("Token has expired")
        for name in ("sub", "jti", "org_id", "client_id"):
            if not isinstance(claims.get(name), str):
                raise InvalidToken(f"Token lacks the {name} claim")
        return claims

    async def verify(self, token: str) -> dict[str, Any]:
        """Everything `verify_signature` checks, then revocation and the status of
        the token's subject: for an agent, the agent and credential behind it; for
        another kind, that kind's status check. Then every `token_status` hook (a
        delegation link, ...)."""
        claims = self.verify_signature(token)
        kind = claims.get(SUBJECT_KIND_CLAIM)
        if kind is None:
            # An agent's token (every token before subject kinds): one round trip.
            credential_id = claims.get("credential_id")
            row = await self.idp.db.fetchrow(
                _AGENT_STATUS_SQL,
                claims["sub"],
                credential_id if isinstance(credential_id, str) else "",
                claims["jti"],
            )
            reason = _agent_reason(row, claims)
        else:
            reason = await self._subject_reason(kind, claims)
        if reason is not None:
            raise InvalidToken(reason)
        if self.idp._hooks.implemented("token_status"):
            reason = await self.idp._hooks.token_status(self.idp, claims)
            if reason is not None:
                raise InvalidToken(reason)
        return claims

    async def agent_status(self, claims: Mapping[str, Any]) -> str | None:
        """Why an agent's token is no longer valid (revoked, agent not active or
        suspended since, credential revoked), or None: the `agent` kind's check."""
        credential_id = claims.get("credential_id")
        row = await self.idp.db.fetchrow(
            _AGENT_STATUS_SQL,
            claims["sub"],
            credential_id if isinstance(credential_id, str) else "",
            claims["jti"],
        )
        return _agent_reason(row, claims)

    async def _subject_reason(self, kind: object, claims: Mapping[str, Any]) -> str | None:
        """Another kind's token: revocation (the durable row), its credential if it
        names one, then the kind's own status check (its plugin may be disabled)."""
        served = self.subject_kinds().get(kind) if isinstance(kind, str) else None
        # The kernel never writes the claim for an agent: such a token is not ours to trust.
        if served is None or kind == AGENT:
            return NOT_SERVED
        credential_id = claims.get("credential_id")
        row = await self.idp.db.fetchrow(
            _SUBJECT_STATUS_SQL,
            claims["jti"],
            credential_id if isinstance(credential_id, str) else "",
        )
        if row is not None and row["revoked"]:
            return "Token has been revoked"
        if isinstance(credential_id, str) and (row is None or row["credential_status"] != "active"):
            return "Token's credential has been revoked"
        try:
            reason = await served.status(self.idp, claims)
        except Exception:
            # Fail closed, as token_status does: a broken check never admits a token.
            log.exception("subject kind %s failed its status check; token is inactive", kind)
            return "Token status could not be checked"
        return str(reason) if reason else None

    # Revocation -------------------------------------------------------------
    #
    # The revoked_tokens row is the truth, read on every check; `revoked:<jti>` in the
    # kv is the runbook's copy for operators and outside readers, never trusted here.
    # Why not the kv plus a "synced" marker: a process that wrote the row while Redis
    # was unreachable from it cannot tell the others through Redis, so any marker
    # scheme still needs a database read per check to be correct across processes
    # (issue 25 item 1). verify() already makes one database round trip, so the row
    # is one index probe inside it: no extra round trip, and no Redis on the path.

    async def revoke(self, claims: dict[str, Any]) -> None:
        """Durable row first (the truth), then the runbook's `revoked:<jti>` copy."""
        remaining_ms = int(claims["exp"] * 1000) - now_ms()
        if remaining_ms <= 0:
            return
        db = self.idp.db
        exists = await db.fetchval("SELECT 1 FROM revoked_tokens WHERE jti = $1", claims["jti"])
        if not exists:
            with suppress(Conflict):  # revoked concurrently
                await db.execute(
                    "INSERT INTO revoked_tokens (jti, org_id, expires_at, revoked_at) "
                    "VALUES ($1, $2, $3, $4)",
                    claims["jti"],
                    claims["org_id"],
                    int(claims["exp"] * 1000),
                    now_ms(),
                )
        try:
            await self.idp.kv.set(f"revoked:{claims['jti']}", "1", ttl_ms=remaining_ms)
        except StorageUnavailable:
            log.warning("kv unavailable: revocation of %s kept in the database only", claims["jti"])
            self._schedule_resync()

    async def is_revoked(self, jti: str) -> bool:
        """Whether the durable store holds a revocation of `jti` (whatever the kv says)."""
        return bool(await self.idp.db.fetchval(f"SELECT {_REVOKED_SQL.format(jti='$1')}", jti))

    def _schedule_resync(self) -> None:
        if self._resync is None or self._resync.done():
            self._resync = asyncio.create_task(self._resync_until_done())

    async def _resync_until_done(self) -> None:
        """Refill the kv copy once the kv answers again (it missed a revocation)."""
        delay = 1.0
        while not await self.resync():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def resync(self) -> bool:
        """Copy unexpired durable revocations into the kv, then set the marker (the
        time of the copy, for operators). False when the kv or database is away."""
        try:
            now = now_ms()
            rows = await self.idp.db.fetch(
                "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1", now
            )
            for row in rows:
                await self.idp.kv.set(f"revoked:{row['jti']}", "1", ttl_ms=row["expires_at"] - now)
            await self.idp.kv.set(SYNC_MARKER, str(now))
        except StorageUnavailable:
            log.warning("could not resync revocations into the kv; will retry")
            return False
        return True
