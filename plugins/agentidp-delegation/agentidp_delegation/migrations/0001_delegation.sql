-- Delegation grants and the chains token exchanges built through them.
-- Times are unix milliseconds (BIGINT) and JSON is TEXT, so one file serves
-- PostgreSQL and SQLite alike. No foreign keys into kernel tables: the plugin
-- reads agents through `idp.agents` only.
CREATE TABLE delegation_grants (
    delegation_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    delegator_id TEXT NOT NULL,
    delegatee_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    audience TEXT,
    expires_at BIGINT,
    max_depth INTEGER NOT NULL CHECK (max_depth >= 0),
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    CHECK (delegator_id <> delegatee_id)
);
-- The listing (keyset pagination per organisation).
CREATE INDEX delegation_grants_by_org ON delegation_grants (org_id, created_at, delegation_id);
-- The token exchange: the active grants from one agent to another.
CREATE INDEX delegation_grants_by_pair ON delegation_grants (delegatee_id, delegator_id, status);

-- One row per distinct chain of grants a token exchange has issued a token through.
CREATE TABLE delegation_chains (
    chain_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    links TEXT NOT NULL,
    depth INTEGER NOT NULL,
    created_at BIGINT NOT NULL
);

-- Which chains a grant takes part in (GET /api/v1/delegations/{id}/chain).
CREATE TABLE delegation_chain_links (
    delegation_id TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (delegation_id, chain_id)
);
