-- Agents, their credentials, the signing-key store and durable revocations.
-- Times are unix milliseconds (BIGINT) and JSON is TEXT, so one file serves
-- PostgreSQL and SQLite alike.
CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (org_id) ON DELETE CASCADE,
    client_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('agent', 'admin')),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    owner TEXT NOT NULL,
    deployment_env TEXT NOT NULL,
    scopes TEXT NOT NULL,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'decommissioned')),
    -- Unix seconds of the last suspension: tokens issued up to then stay inactive
    -- even after the agent is reactivated.
    tokens_valid_after BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX agents_by_org ON agents (org_id, agent_id);

CREATE TABLE credentials (
    credential_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
    org_id TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('client_secret', 'private_key_jwt')),
    secret_hash TEXT,
    jwk TEXT,
    jwk_kid TEXT,
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX credentials_by_agent ON credentials (agent_id, status);
CREATE INDEX credentials_by_expiry ON credentials (expires_at);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    private_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    activates_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_by_expiry ON revoked_tokens (expires_at);
