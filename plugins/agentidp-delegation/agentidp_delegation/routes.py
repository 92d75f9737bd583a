"""`/api/v1/delegations`: grant, list, read, revoke delegations and show their chains.

The caller authenticates with its own access token. An organisation admin
manages every grant of its organisation; an agent grants from itself and sees
(and may revoke) the grants it is a party to. A delegated token (one carrying
`act`) manages nothing: the actor must not re-grant the authority it borrows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agentidp_server import (
    Agent,
    ApiError,
    IdP,
    Principal,
    current_idp,
    document_errors,
    principal,
    principal_actor,
    principal_org,
    require_scope,
)
from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, jsonify, request
from quart_schema import document_querystring, document_request, document_response

from agentidp_delegation import chains, store

blueprint = Blueprint("delegation", __name__)

SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
FIELDS = frozenset({"delegator", "delegatee", "scopes", "audience", "expires_at", "max_depth"})
MAX_SCOPES = 100
MAX_TEXT = 1000
# RFC 8693 tokens are bounded by ACCESS_TOKEN_TTL anyway; a grant past a century is a typo.
MAX_GRANT_LIFETIME_MS = 100 * 365 * 86_400_000
# The last instant Python's datetime (and RFC 3339's four-digit year) can show.
LATEST_MS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() * 1000)
EARLIEST_MS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)


class DelegationCreate(BaseModel):
    """Documentation of the body `_validate` checks (it names the first problem itself)."""

    model_config = ConfigDict(extra="forbid")

    delegator: str = Field(min_length=1, max_length=MAX_TEXT)
    delegatee: str = Field(min_length=1, max_length=MAX_TEXT)
    scopes: list[str] = Field(min_length=1, max_length=MAX_SCOPES)
    audience: str | None = None
    expires_at: str | None = Field(None, description="RFC 3339 time with an offset")
    max_depth: int = Field(0, ge=0, description="At most DELEGATION_MAX_DEPTH - 1")


class DelegationQuery(BaseModel):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None
    status: str | None = Field(None, description="active or revoked")
    delegator: str | None = None
    delegatee: str | None = None


class Delegation(BaseModel):
    """The delegation; `status` reads `expired` once it has lapsed."""

    delegation_id: str
    org_id: str
    delegator: str
    delegatee: str
    scopes: list[str]
    audience: str | None
    expires_at: str | None
    max_depth: int
    status: str
    created_by: str
    created_at: str | None
    revoked_at: str | None


class DelegationPage(BaseModel):
    """A page of delegations; pass `next_cursor` as `cursor` for the next one."""

    data: list[Delegation]
    next_cursor: str | None


class DelegationChains(BaseModel):
    """The delegation and the chains built through it."""

    delegation: Delegation
    chains: list[dict[str, Any]]


def _bad(message: str) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", message)


def _not_found() -> ApiError:
    return ApiError(404, "NOT_FOUND", "delegation not found")


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    # A row an older server stored out of range still renders (clamped), never a 500.
    moment = datetime.fromtimestamp(min(max(ms, EARLIEST_MS), LATEST_MS) / 1000, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def view(grant: Mapping[str, Any]) -> dict[str, Any]:
    """A grant as the API shows it; `status` says `expired` once it has lapsed."""
    status = grant["status"]
    if status == "active" and not store.is_live(grant, store.now_ms()):
        status = "expired"
    return {
        "delegation_id": grant["delegation_id"],
        "org_id": grant["org_id"],
        "delegator": grant["delegator_id"],
        "delegatee": grant["delegatee_id"],
        "scopes": grant["scopes"],
        "audience": grant["audience"],
        "expires_at": _iso(grant["expires_at"]),
        "max_depth": grant["max_depth"],
        "status": status,
        "created_by": grant["created_by"],
        "created_at": _iso(grant["created_at"]),
        "revoked_at": _iso(grant["revoked_at"]),
    }


async def _caller(idp: IdP) -> Principal:
    """The calling agent (or admin client), acting for itself only. The kernel has
    verified that the token's subject is an active agent of the token's organisation."""
    caller = principal()
    if caller.delegated or chains.CHAIN_CLAIM in caller.claims:
        raise ApiError(
            403, "FORBIDDEN", "a delegated token cannot manage delegations; use your own token"
        )
    return caller


def _is_admin(caller: Principal) -> bool:
    return caller.is_admin


async def _visible_grant(idp: IdP, caller: Principal, delegation_id: str) -> dict[str, Any]:
    """The grant if the caller may see it; otherwise 404, as for another organisation's."""
    grant = await store.get_grant(idp.db, principal_org(), delegation_id)
    if grant is None:
        raise _not_found()
    if not _is_admin(caller) and caller.agent_id not in (
        grant["delegator_id"],
        grant["delegatee_id"],
    ):
        raise _not_found()
    return grant


def _parse_expiry(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad("expires_at must be an RFC 3339 time string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad("expires_at must be an RFC 3339 time string") from None
    if moment.tzinfo is None:
        raise _bad("expires_at must carry a UTC offset or Z")
    expires_at = int(moment.timestamp() * 1000)
    now = store.now_ms()
    latest = min(now + MAX_GRANT_LIFETIME_MS, LATEST_MS)
    if not now < expires_at <= latest:
        raise _bad(
            "expires_at must be in the future and at most 100 years ahead, "
            f"in UTC no later than {_iso(latest)}"
        )
    return expires_at


def _validate(idp: IdP, body: Any) -> dict[str, Any]:
    """The request body's shape; the first problem is named."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(unknown)}")
    for name in ("delegator", "delegatee"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
            raise _bad(f"{name} must be an agent id")
    if body["delegator"] == body["delegatee"]:
        raise _bad("an agent cannot delegate to itself")
    scopes = body.get("scopes")
    if (
        not isinstance(scopes, list)
        or not scopes
        or len(scopes) > MAX_SCOPES
        or not all(isinstance(s, str) and SCOPE_TOKEN.match(s) for s in scopes)
    ):
        raise _bad("scopes must be a non-empty list of RFC 6749 scope tokens")
    audience = body.get("audience")
    if audience is not None and (
        not isinstance(audience, str) or not audience.strip() or len(audience) > MAX_TEXT
    ):
        raise _bad("audience must be a non-empty string")
    limit = int(idp.settings.DELEGATION_MAX_DEPTH) - 1
    max_depth = body.get("max_depth", 0)
    if max_depth is None:
        max_depth = 0
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 0 <= max_depth <= limit:
        raise _bad(f"max_depth must be an integer from 0 to {limit} (DELEGATION_MAX_DEPTH - 1)")
    return {
        "delegator_id": body["delegator"],
        "delegatee_id": body["delegatee"],
        "scopes": sorted(set(scopes)),
        "audience": audience,
        "expires_at": _parse_expiry(body.get("expires_at")),
        "max_depth": max_depth,
    }


async def _party(idp: IdP, org_id: str, role: str, agent_id: str) -> Agent:
    """An active agent of the organisation (another organisation's answers 404)."""
    agent = await idp.agents.get_in_org(org_id, agent_id)
    if agent is None:
        raise ApiError(404, "NOT_FOUND", f"{role} not found")
    if not agent.is_active:
        raise ApiError(409, "CONFLICT", f"the {role} is {agent.status}")
    return agent


@blueprint.post("/api/v1/delegations")
@require_scope(None)
@document_request(DelegationCreate)
@document_response(Delegation, 201)
@document_errors(404, 409)
async def create() -> tuple[Response, int]:
    """Agent A (the delegator) lets agent B (the delegatee) act for it."""
    idp = current_idp()
    caller = await _caller(idp)
    fields = _validate(idp, await request.get_json(force=True, silent=True))
    if not _is_admin(caller) and caller.agent_id != fields["delegator_id"]:
        raise ApiError(
            403, "FORBIDDEN", "only the delegator itself or an organisation admin may grant"
        )
    org_id = principal_org()
    delegator = await _party(idp, org_id, "delegator", fields["delegator_id"])
    await _party(idp, org_id, "delegatee", fields["delegatee_id"])
    held = set(delegator.scopes)
    if not _is_admin(caller):
        # The delegator's own token: it may give no more than that token carries.
        held &= caller.scopes
    missing = sorted(set(fields["scopes"]) - held)
    if missing:
        raise _bad(f"scopes not held by the delegator: {' '.join(missing)}")
    grant = {
        **fields,
        "delegation_id": store.new_id(),
        "org_id": org_id,
        "status": "active",
        "created_by": caller.agent_id,
        "created_at": store.now_ms(),
        "revoked_at": None,
    }
    async with idp.db.transaction() as conn:
        await store.insert_grant(conn, grant)
        event = await idp.audit.append(
            conn,
            org_id=org_id,
            action="delegation.created",
            actor=principal_actor(),
            target_type="delegation",
            target_id=grant["delegation_id"],
            details={
                "delegator": grant["delegator_id"],
                "delegatee": grant["delegatee_id"],
                "scopes": grant["scopes"],
                "audience": grant["audience"],
                "expires_at": grant["expires_at"],
                "max_depth": grant["max_depth"],
            },
        )
    idp.audit.published(event)
    return jsonify(view(grant)), 201


@blueprint.get("/api/v1/delegations")
@require_scope(None)
@document_querystring(DelegationQuery)
@document_response(DelegationPage)
async def list_() -> Response:
    """The organisation's grants (an agent: those it is a party to), in creation order."""
    idp = current_idp()
    caller = await _caller(idp)
    args = request.args
    try:
        limit = int(args.get("limit", "50"))
    except ValueError:
        raise _bad("limit must be an integer") from None
    if not 1 <= limit <= 200:
        raise _bad("limit must be between 1 and 200")
    status = args.get("status")
    if status not in (None, "active", "revoked"):
        raise _bad("status must be active or revoked")
    try:
        page, cursor = await store.list_grants(
            idp.db,
            principal_org(),
            party=None if _is_admin(caller) else caller.agent_id,
            status=status,
            delegator_id=args.get("delegator"),
            delegatee_id=args.get("delegatee"),
            cursor=args.get("cursor"),
            limit=limit,
        )
    except store.CursorError as error:
        raise _bad(str(error)) from None
    return jsonify(data=[view(g) for g in page], next_cursor=cursor)


@blueprint.get("/api/v1/delegations/<delegation_id>")
@require_scope(None)
@document_response(Delegation)
async def read(delegation_id: str) -> Response:
    """Read one delegation the caller may see."""
    idp = current_idp()
    return jsonify(view(await _visible_grant(idp, await _caller(idp), delegation_id)))


@blueprint.delete("/api/v1/delegations/<delegation_id>")
@require_scope(None)
@document_response(Delegation)
@document_errors(409)
async def revoke(delegation_id: str) -> Response:
    """Revoke: every token issued through this link is inactive from now on."""
    idp = current_idp()
    grant = await _visible_grant(idp, await _caller(idp), delegation_id)
    if grant["status"] == "revoked":
        raise ApiError(409, "CONFLICT", "the delegation is already revoked")
    at = store.now_ms()
    async with idp.db.transaction() as conn:
        if not await store.revoke_grant(conn, principal_org(), delegation_id, at):
            raise ApiError(409, "CONFLICT", "the delegation is already revoked")
        event = await idp.audit.append(
            conn,
            org_id=principal_org(),
            action="delegation.revoked",
            actor=principal_actor(),
            target_type="delegation",
            target_id=delegation_id,
            details={"delegator": grant["delegator_id"], "delegatee": grant["delegatee_id"]},
        )
    idp.audit.published(event)
    return jsonify(view({**grant, "status": "revoked", "revoked_at": at}))


@blueprint.get("/api/v1/delegations/<delegation_id>/chain")
@require_scope(None)
@document_response(DelegationChains)
async def chain(delegation_id: str) -> Response:
    """The chains token exchanges have built through this grant, each hop by hop."""
    idp = current_idp()
    grant = await _visible_grant(idp, await _caller(idp), delegation_id)
    recorded = await store.chains_through(idp.db, principal_org(), delegation_id)
    ids = sorted({link for c in recorded for link in c["links"]})
    grants = await store.grants_by_id(idp.db, ids)
    at = store.now_ms()
    shown = []
    for entry in recorded:
        links = [grants[link] for link in entry["links"] if link in grants]
        shown.append(
            {
                "chain_id": entry["chain_id"],
                "subject": entry["subject_id"],
                "depth": entry["depth"],
                "created_at": _iso(entry["created_at"]),
                # Tokens issued through this chain are active only while every link is.
                "active": len(links) == entry["depth"] and all(store.is_live(g, at) for g in links),
                "links": [
                    {
                        "delegation_id": g["delegation_id"],
                        "delegator": g["delegator_id"],
                        "delegatee": g["delegatee_id"],
                        "scopes": g["scopes"],
                        "status": view(g)["status"],
                    }
                    for g in links
                ],
            }
        )
    return jsonify(delegation=view(grant), chains=shown)
