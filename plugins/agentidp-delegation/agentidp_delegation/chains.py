"""Delegation chains in tokens: the nested `act` claim (RFC 8693 §4.1) and the private
`delegation_chain` claim listing the grant behind each hop, and their status check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentidp_server import IdP, issued_at_ms, valid_after_ms

from agentidp_delegation import store

# Private claim: the delegation ids of the chain, oldest hop first.
CHAIN_CLAIM = "delegation_chain"
# Far beyond any DELEGATION_MAX_DEPTH: bounds the walk over an untrusted `act`.
MAX_NESTING = 32


class BadChain(ValueError):
    """A token's `act` / `delegation_chain` claims are malformed or inconsistent."""


def actors(act: Any) -> list[str]:
    """The actors of an `act` claim in the order they joined, oldest first.

    RFC 8693 §4.1: the outermost `act` is the current actor; nested ones are
    prior actors, so reading outside-in goes back in time.
    """
    found: list[str] = []
    node = act
    while node is not None:
        if not isinstance(node, Mapping) or not isinstance(node.get("sub"), str):
            raise BadChain("act claim is malformed")
        found.append(node["sub"])
        if len(found) > MAX_NESTING:
            raise BadChain("act claim is nested too deeply")
        node = node.get("act")
    return found[::-1]


def nest(actor_id: str, prior: Mapping[str, Any] | None) -> dict[str, Any]:
    """The new `act`: the current actor outermost, the prior chain inside (RFC 8693 §4.1)."""
    act: dict[str, Any] = {"sub": actor_id}
    if prior is not None:
        act["act"] = dict(prior)
    return act


def chain_of(claims: Mapping[str, Any]) -> list[str]:
    """The delegation ids a token was issued through ([] for a token of the agent itself)."""
    chain = claims.get(CHAIN_CLAIM)
    if chain is None:
        if "act" in claims:
            # An act we cannot tie to grants: never extend or trust it.
            raise BadChain("the token's act claim was not issued through a delegation grant")
        return []
    if (
        not isinstance(chain, list)
        or not chain
        or not all(isinstance(d, str) for d in chain)
        or len(chain) > MAX_NESTING
    ):
        raise BadChain("delegation_chain claim is malformed")
    if len(actors(claims.get("act"))) != len(chain):
        raise BadChain("act and delegation_chain claims disagree")
    return list(chain)


def participants(claims: Mapping[str, Any]) -> list[str]:
    """The subject, then every actor in order: the path authority travelled."""
    return [str(claims["sub"]), *actors(claims.get("act"))]


def check_links(
    claims: Mapping[str, Any], chain: Sequence[str], grants: Mapping[str, Mapping[str, Any]]
) -> str | None:
    """Why the grants behind a token no longer carry it, or None."""
    path = participants(claims)
    at = store.now_ms()
    for hop, delegation_id in enumerate(chain):
        grant = grants.get(delegation_id)
        if grant is None or grant["org_id"] != claims["org_id"]:
            return "Token's delegation grant does not exist"
        if grant["delegator_id"] != path[hop] or grant["delegatee_id"] != path[hop + 1]:
            return "Token's delegation chain does not match its grants"
        if grant["status"] != "active":
            return "Token was issued through a revoked delegation"
        if not store.is_live(grant, at):
            return "Token was issued through an expired delegation"
    return None


async def status(idp: IdP, claims: Mapping[str, Any]) -> str | None:
    """`token_status`: a delegated token lives only while every link and actor does.

    One primary-key lookup for all the grants, one per actor (the kernel has
    already checked the subject). Tokens without the private claim are not ours.
    """
    if CHAIN_CLAIM not in claims:
        return None
    try:
        chain = chain_of(claims)
    except BadChain as error:
        return f"Token's delegation chain is invalid: {error}"
    reason = check_links(claims, chain, await store.grants_by_id(idp.db, chain))
    if reason is not None:
        return reason
    issued_at = issued_at_ms(claims)  # `tokens_valid_after` is unix ms
    for actor_id in actors(claims.get("act")):
        agent = await idp.agents.get(actor_id)
        if agent is None or not agent.is_active or agent.org_id != claims["org_id"]:
            return "An agent in the token's delegation chain is not active"
        cutoff = agent.tokens_valid_after
        # As the kernel does for `sub`: a suspension outlives reactivation for older tokens.
        if cutoff is not None and issued_at <= valid_after_ms(int(cutoff)):
            return "Token was issued before an agent in its delegation chain was suspended"
    return None
