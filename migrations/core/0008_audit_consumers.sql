-- Each plugin that implements audit_event is a consumer with its own cursor
-- per organisation chain (the last seq its handler accepted), so a failing or
-- slow consumer holds back only itself. `audit_deliveries` stays the kernel's
-- cursor: where a consumer seen for the first time starts.
CREATE TABLE audit_consumers (
    name TEXT PRIMARY KEY,
    registered_at BIGINT NOT NULL
);

CREATE TABLE audit_consumer_cursors (
    consumer TEXT NOT NULL,
    org_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (consumer, org_id)
);

-- A consumer that already received events before this migration starts from
-- the shared cursor it had (`audit_deliveries`), so nothing is delivered twice.
