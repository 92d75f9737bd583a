-- The audit table is the plugins' outbox; this is its cursor: the last seq of
-- each chain handed to the audit_event hook.
CREATE TABLE audit_deliveries (
    org_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL
);
-- Events written before this cursor existed were delivered in-process already.
INSERT INTO audit_deliveries (org_id, seq) SELECT org_id, seq FROM audit_heads;

-- Named leases: one process at a time holds each (the audit dispatcher's is
-- `audit-dispatch`), renewing it; another takes over once it has expired.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- The background integrity check's latest result, written by the process
-- holding the `audit-integrity` lease, so every process (every pod) exports
-- the same agentidp_audit_chain_integrity.
CREATE TABLE audit_integrity (
    scope TEXT PRIMARY KEY,
    intact INTEGER NOT NULL,
    checked_at BIGINT NOT NULL
);
