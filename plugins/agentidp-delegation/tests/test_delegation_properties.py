"""Property-based: random organisations, grants and exchange sequences against a small
model of the rules. Whatever Hypothesis draws, an exchange succeeds exactly when the
model allows it, and no issued token ever holds a scope one of its delegators (or
grants) lacked; `act` nests the actors in order, distinct, within the depth limit."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from delegation_helpers import (
    ENABLED,
    Agent,
    exchange_raw,
    make_world,
    own_token,
    payload,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentidp_delegation.chains import actors, nest

UNIVERSE = ("s0", "s1", "s2", "s3")
MAX_DEPTH = 3  # DELEGATION_MAX_DEPTH's default
scope_sets = st.frozensets(st.sampled_from(UNIVERSE), min_size=1)
# No `scope` parameter two times in three: the widest the rules allow.
maybe_scope = st.none() | st.none() | scope_sets


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return dict(ENABLED)


@dataclass(frozen=True)
class Scenario:
    agent_scopes: list[frozenset[str]]
    grants: list[tuple[int, int, frozenset[str], int]]
    start: int
    start_scope: frozenset[str] | None
    # (follow a grant from the current holder?, which agent or grant, requested scope)
    steps: list[tuple[bool, int, frozenset[str] | None]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.sampled_from([4, 3, 2]))
    agent = st.integers(0, n - 1)
    # Mostly broad holdings, so that drawn grants often fit and chains grow.
    holdings = st.frozensets(st.sampled_from(UNIVERSE), min_size=2)
    agent_scopes = draw(st.lists(holdings, min_size=n, max_size=n))
    # A path of distinct agents with a grant along each step (chains can grow), then
    # grants between any two agents (cycles, self-grants, dead ends).
    path = draw(st.permutations(range(n)))[: draw(st.sampled_from(range(n, 1, -1)))]
    pairs = list(itertools.pairwise(path))
    for _ in range(draw(st.integers(0, 6))):
        delegator = draw(agent)
        pairs.append((delegator, (delegator + draw(st.integers(0, n - 1))) % n))
    grants = []
    for delegator, delegatee in pairs:
        wanted = draw(scope_sets)
        # Now and then a grant reaches beyond the delegator: it must be refused.
        overreach = draw(st.booleans()) and draw(st.booleans())
        scopes = wanted if overreach else (wanted & agent_scopes[delegator]) or wanted
        max_depth = draw(st.sampled_from([2, 2, 1, 0]))  # DELEGATION_MAX_DEPTH - 1 at most
        grants.append((delegator, delegatee, scopes, max_depth))
    from_grant = draw(st.booleans())
    return Scenario(
        agent_scopes=agent_scopes,
        grants=grants,
        start=grants[0][0] if from_grant else draw(agent),
        start_scope=draw(st.none() | scope_sets),
        steps=draw(
            st.lists(
                st.tuples(st.sampled_from([True, True, False]), st.integers(0, 8), maybe_scope),
                min_size=3,
                max_size=5,
            )
        ),
    )


@dataclass
class Model:
    """What the rules say: the chain so far and the grants that exist."""

    agent_scopes: list[frozenset[str]]
    grants: list[dict[str, Any]] = field(default_factory=list)
    path: list[int] = field(default_factory=list)
    chain: list[dict[str, Any]] = field(default_factory=list)
    scope: frozenset[str] = frozenset()

    def outcomes(
        self, actor: int, requested: frozenset[str] | None
    ) -> list[tuple[str, frozenset[str]]]:
        """Every (delegation id, scope) the server may rightly issue; [] means refuse."""
        depth = len(self.chain) + 1
        if actor in self.path or depth > MAX_DEPTH:
            return []
        if any(g["max_depth"] < depth - 1 - hop for hop, g in enumerate(self.chain)):
            return []
        holder = self.path[-1]
        fits = []
        for g in self.grants:
            if (g["delegator"], g["delegatee"]) != (holder, actor):
                continue
            held = self.scope & g["scopes"] & self.agent_scopes[holder]
            if requested is None and held:
                fits.append((g["id"], held))
            elif requested is not None and requested <= held:
                fits.append((g["id"], requested))
        return fits


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
async def test_random_chains_never_widen(agentidp_client, agentidp_idp, scenario):
    names = "ABCD"[: len(scenario.agent_scopes)]
    w = await make_world(agentidp_client, agentidp_idp, names, scopes=list(UNIVERSE))
    agents: list[Agent] = [w.agents[n] for n in names]
    # Each agent's own scopes, as drawn (make_world gave every agent the universe).
    for agent, scopes in zip(agents, scenario.agent_scopes, strict=True):
        response = await agentidp_client.patch(
            f"/api/v1/agents/{agent.id}", json={"scopes": sorted(scopes)}, headers=w.admin
        )
        assert response.status_code == 200
    model = Model(scenario.agent_scopes)
    for delegator, delegatee, scopes, max_depth in scenario.grants:
        response = await agentidp_client.post(
            "/api/v1/delegations",
            json={
                "delegator": agents[delegator].id,
                "delegatee": agents[delegatee].id,
                "scopes": sorted(scopes),
                "max_depth": max_depth,
            },
            headers=w.admin,
        )
        body = await response.get_json()
        allowed = delegator != delegatee and scopes <= scenario.agent_scopes[delegator]
        assert (response.status_code == 201) == allowed, body
        if allowed:
            model.grants.append(
                {
                    "id": body["delegation_id"],
                    "delegator": delegator,
                    "delegatee": delegatee,
                    "scopes": scopes,
                    "max_depth": max_depth,
                }
            )
    start_scope = (scenario.start_scope or frozenset()) & scenario.agent_scopes[scenario.start]
    params = {"scope": " ".join(sorted(start_scope))} if start_scope else {}
    current = await own_token(agentidp_client, agents[scenario.start], **params)
    model.path = [scenario.start]
    model.scope = frozenset(payload(current)["scope"].split())
    by_id = {g["id"]: g for g in model.grants}

    for follow, pick, requested in scenario.steps:
        # Following a grant from the current holder makes chains grow; else any agent.
        onward = [g["delegatee"] for g in model.grants if g["delegator"] == model.path[-1]]
        actor = onward[pick % len(onward)] if follow and onward else pick % len(agents)
        expected = model.outcomes(actor, requested)
        params = {"scope": " ".join(sorted(requested))} if requested else {}
        status, body = await exchange_raw(agentidp_client, agents[actor], current, **params)
        if not expected:
            assert status == 400, body
            assert body["error"] in ("invalid_grant", "invalid_scope"), body
            event(f"refused: {body['error']}")
            continue
        assert status == 200, body
        claims = payload(body["access_token"])
        issued = frozenset(claims["scope"].split())
        used = claims["delegation_chain"][-1]
        assert (used, issued) in expected
        model.chain.append(by_id[used])
        model.path.append(actor)
        model.scope = issued
        # The invariant: no scope beyond any delegator's holding or any grant on the path.
        for hop, link in enumerate(model.chain):
            assert issued <= link["scopes"]
            assert issued <= scenario.agent_scopes[model.path[hop]]
        assert claims["sub"] == agents[model.path[0]].id
        # RFC 8693 §4.1: actors nested outermost-current, all distinct, within the limit.
        chronological = actors(claims["act"])
        assert chronological == [agents[i].id for i in model.path[1:]]
        assert len(set(model.path)) == len(model.path) <= MAX_DEPTH + 1
        assert claims["delegation_chain"] == [g["id"] for g in model.chain]
        current = body["access_token"]
        # Shown by --hypothesis-show-statistics: how deep the drawn chains reach.
        event(f"issued at depth {len(model.chain)}")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6))
def test_nest_and_actors_round_trip(ids):
    act: dict[str, Any] | None = None
    for actor_id in ids:
        act = nest(actor_id, act)
    # Outermost is the latest actor; reading back gives the order they joined in.
    assert act is not None
    assert act["sub"] == ids[-1]
    assert actors(act) == ids
