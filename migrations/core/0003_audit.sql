-- The hash-chained audit log. (org_id, seq) is the primary key, so two
-- processes can never write two events at one position: a chain cannot fork.
CREATE TABLE audit_events (
    org_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    occurred_at BIGINT NOT NULL,
    action TEXT NOT NULL,
    actor_client_id TEXT,
    actor_agent_id TEXT,
    target_type TEXT,
    target_id TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    request_id TEXT,
    source_ip TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE INDEX audit_events_by_time ON audit_events (org_id, occurred_at);
CREATE INDEX audit_events_by_action ON audit_events (org_id, action, seq);

-- Each chain's head; its row lock serialises appends per organisation.
CREATE TABLE audit_heads (
    org_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
