"""OAuth 2.0 Token Exchange (RFC 8693) for delegation: the `act` chain grows one hop.

The authenticated client (the delegatee, B) presents the `subject_token` of the
party it acts for (A, or a token already delegated to it) and gets a token with
`sub` = A and `act` = {"sub": B, "act": <the prior actors>}. Every hop needs an
active delegation grant from the current holder of the subject's authority to B.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentidp_server import (
    ACCESS_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    ExchangedToken,
    IdP,
    InvalidToken,
    OAuthError,
    TokenExchange,
    now_s,
)

from agentidp_delegation import chains, store
from agentidp_delegation.state import count_chain

# Our access tokens are JWTs, so both identifiers name what we accept and issue (§3).
TOKEN_TYPES = (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE)
# may_act members we can evaluate (§4.4); any other member fails closed.
MAY_ACT_MEMBERS = frozenset({"sub", "client_id", "org_id", "iss"})


def _delegation_id(params: Mapping[str, str]) -> str | None:
    """The one parameter of ours beside RFC 8693 §2.1's: which grant to use."""
    value = params.get("delegation_id")
    if value is not None and not value.strip():
        raise OAuthError("invalid_request", "delegation_id must not be empty")
    return value


async def _verified(idp: IdP, token: str, name: str, org_id: str) -> dict[str, Any]:
    """A presented token that is active now (signature, expiry, revocation, status of
    its agents and of every delegation link) and of the client's organisation."""
    try:
        claims = await idp.tokens.verify(token)
    except InvalidToken as error:
        raise OAuthError("invalid_grant", f"{name} is not active: {error}") from None
    # Another organisation's token is indistinguishable from an unknown one.
    if claims["org_id"] != org_id:
        raise OAuthError("invalid_grant", f"{name} is not active")
    return claims


def _check_may_act(idp: IdP, subject: Mapping[str, Any], actor: Mapping[str, Any]) -> None:
    """RFC 8693 §4.4: a subject token's `may_act` names who may act for it."""
    if "may_act" not in subject:
        return
    may_act = subject["may_act"]
    if not isinstance(may_act, Mapping) or not may_act:
        raise OAuthError("invalid_grant", "subject_token's may_act claim is malformed")
    mine = {
        "sub": actor["agent_id"],
        "client_id": actor["client_id"],
        "org_id": actor["org_id"],
        "iss": idp.issuer,
    }
    for member, value in may_act.items():
        if member not in MAY_ACT_MEMBERS or mine[member] != value:
            raise OAuthError("invalid_grant", "subject_token's may_act does not name this client")


def _aud(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    return [a for a in (aud if isinstance(aud, list) else [aud]) if isinstance(a, str)]


@dataclass(frozen=True)
class Narrowed:
    scopes: list[str]
    audience: str | list[str]


def narrow(
    exchange: TokenExchange,
    subject: Mapping[str, Any],
    grant: Mapping[str, Any],
    delegator_scopes: list[str],
) -> Narrowed:
    """Scope and audience may only narrow (RFC 8693 §2.1, §5): scope within the subject
    token's, the grant's and what the delegator holds now; audience within the
    subject token's and the grant's."""
    held = set(str(subject.get("scope", "")).split()) & set(grant["scopes"]) & set(delegator_scopes)
    if exchange.scope is None:
        if not held:
            raise OAuthError("invalid_scope", "the delegation leaves no scope to issue")
        scopes = sorted(held)
    else:
        wider = sorted(set(exchange.scope) - held)
        if wider:
            raise OAuthError(
                "invalid_scope", f"scope exceeds what the delegation allows: {' '.join(wider)}"
            )
        scopes = sorted(set(exchange.scope))
    allowed = _aud(subject)
    if grant["audience"] is not None:
        allowed = [a for a in allowed if a == grant["audience"]]
        if not allowed:
            raise OAuthError(
                "invalid_target", "the delegation's audience is not an audience of subject_token"
            )
    wider_targets = [t for t in exchange.targets if t not in allowed]
    if wider_targets:
        raise OAuthError(
            "invalid_target",
            f"audience is wider than the subject_token and delegation allow: {wider_targets[0]}",
        )
    chosen = exchange.targets or allowed
    return Narrowed(scopes, chosen[0] if len(chosen) == 1 else chosen)


class DelegationExchange:
    """The RFC 8693 handler for our own access tokens: the kernel checked §2.1's shape."""

    subject_token_types = TOKEN_TYPES
    actor_token_types = TOKEN_TYPES
    issued_token_types = TOKEN_TYPES
    issuer: str | None = None

    async def exchange(self, exchange: TokenExchange) -> ExchangedToken:
        idp, client = exchange.idp, exchange.client
        chosen_id = _delegation_id(exchange.params)
        actor = client.agent
        actor_id = str(actor["agent_id"])
        subject = await _verified(idp, exchange.subject_token, "subject_token", client.org_id)
        if exchange.actor_token is not None:
            acting = await _verified(idp, exchange.actor_token, "actor_token", client.org_id)
            # §2.1: the actor token represents the acting party: this client, itself.
            if acting["sub"] != actor_id or "act" in acting:
                raise OAuthError(
                    "invalid_grant", "actor_token must be the client's own, undelegated token"
                )
        try:
            prior_chain = chains.chain_of(subject)
            path = chains.participants(subject)
        except chains.BadChain as error:
            raise OAuthError(
                "invalid_grant", f"subject_token cannot be exchanged: {error}"
            ) from None
        # A→B→A (or A acting for itself) would let an agent launder its own authority.
        if actor_id in path:
            raise OAuthError(
                "invalid_grant", "the client is already in the subject_token's chain (a cycle)"
            )
        depth = len(prior_chain) + 1
        max_depth = int(idp.settings.DELEGATION_MAX_DEPTH)
        if depth > max_depth:
            raise OAuthError("invalid_grant", f"the delegation chain would exceed {max_depth} hops")
        _check_may_act(idp, subject, actor)
        holder = path[-1]
        # Earlier grants bound how far the chain may reach beyond them ("max_depth").
        earlier = await store.grants_by_id(idp.db, prior_chain)
        for hop, delegation_id in enumerate(prior_chain):
            link = earlier.get(delegation_id)
            if link is None or link["max_depth"] < depth - 1 - hop:
                raise OAuthError(
                    "invalid_grant", f"delegation {delegation_id} allows no further delegation"
                )
        candidates = await store.live_grants_between(
            idp.db, client.org_id, holder, actor_id, store.now_ms()
        )
        if chosen_id is not None:
            candidates = [g for g in candidates if g["delegation_id"] == chosen_id]
        if not candidates:
            raise OAuthError(
                "invalid_grant", "no active delegation grant lets this client act for the subject"
            )
        delegator = await idp.agents.get_in_org(client.org_id, holder)
        subject_agent = await idp.agents.get_in_org(client.org_id, str(subject["sub"]))
        if delegator is None or subject_agent is None:
            raise OAuthError("invalid_grant", "the delegator is not an agent of this organisation")
        grant, narrowed = _first_fitting(exchange, subject, candidates, list(delegator.scopes))
        now = now_s()
        bound = int(subject["exp"])
        if grant["expires_at"] is not None:
            bound = min(bound, int(grant["expires_at"]) // 1000)
        # -1: mint reads the clock again and must not land past the bound.
        lifetime = min(idp.tokens.ttl, bound - now - 1)
        if lifetime <= 0:
            raise OAuthError("invalid_grant", "subject_token or delegation expires too soon")
        links = [*prior_chain, grant["delegation_id"]]
        extra: dict[str, Any] = {
            "act": chains.nest(actor_id, subject.get("act")),
            chains.CHAIN_CLAIM: links,
        }
        if "may_act" in subject:
            # §4.4 honoured downstream too: onward delegation needs the named actor.
            extra["may_act"] = subject["may_act"]
        # client_id and credential_id are the actor's: it holds the token, may revoke it,
        # and revoking its credential ends it (RFC 8693 §4.3, RFC 9068 §2.2).
        token, claims = await idp.tokens.mint(
            agent=subject_agent.as_row(),  # mint still takes the row dict
            credential_id=client.credential_id,
            client_id=client.client_id,
            scopes=narrowed.scopes,
            audience=narrowed.audience,
            grant_type=TOKEN_EXCHANGE,
            extra=extra,
            lifetime=lifetime,
        )
        async with idp.db.transaction() as conn:
            await store.record_chain(conn, client.org_id, str(subject["sub"]), links)
        count_chain(idp)
        return ExchangedToken(
            access_token=token,
            issued_token_type=ACCESS_TOKEN_TYPE,
            expires_in=claims["exp"] - claims["iat"],
            scope=claims["scope"],
        )


def _first_fitting(
    exchange: TokenExchange,
    subject: Mapping[str, Any],
    candidates: list[dict[str, Any]],
    delegator_scopes: list[str],
) -> tuple[dict[str, Any], Narrowed]:
    """The newest grant that allows the request; else the newest grant's refusal."""
    first_error: OAuthError | None = None
    for grant in candidates:
        try:
            return grant, narrow(exchange, subject, grant, delegator_scopes)
        except OAuthError as error:
            first_error = first_error or error
    assert first_error is not None  # candidates is never empty here
    raise first_error
