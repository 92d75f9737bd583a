-- Organisations (tenants) and their tiers; the runbook reads tenant_tiers directly.
CREATE TABLE organizations (
    org_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE tenant_tiers (
    org_id TEXT PRIMARY KEY REFERENCES organizations (org_id) ON DELETE CASCADE,
    tier TEXT NOT NULL CHECK (tier IN ('free', 'pro', 'enterprise')),
    updated_at BIGINT NOT NULL
);
