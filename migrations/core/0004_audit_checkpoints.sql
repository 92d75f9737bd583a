-- Signed checkpoints of each audit chain: (org_id, seq, hash) signed with the
-- server's signing key, so cutting the tail, rewriting the whole chain or
-- pruning old events (retention) stays detectable.
CREATE TABLE audit_checkpoints (
    org_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('periodic', 'retention')),
    signed_at BIGINT NOT NULL,
    kid TEXT NOT NULL,
    jws TEXT NOT NULL,
    PRIMARY KEY (org_id, seq)
);
