-- Every change to what a client lookup reads (the agent, its credentials, its
-- organisation's tier) is announced on the agentidp_clients channel when it
-- commits, so each worker can drop its cached copy (client_cache.py). Triggers
-- catch every writer: the API, the CLI, plugins and hand-written SQL.
CREATE FUNCTION agentidp_client_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed TEXT[] := '{}';
BEGIN
    -- Each branch names only its own table's columns (PL/pgSQL plans a
    -- statement on first run, against the row type it meets).
    IF TG_LEVEL = 'STATEMENT' THEN
        changed := ARRAY['*'];
    ELSIF TG_TABLE_NAME = 'tenant_tiers' THEN
        IF TG_OP <> 'DELETE' THEN changed := changed || ('org:' || NEW.org_id); END IF;
        IF TG_OP <> 'INSERT' THEN changed := changed || ('org:' || OLD.org_id); END IF;
    ELSE
        IF TG_OP <> 'DELETE' THEN changed := changed || ('agent:' || NEW.agent_id); END IF;
        IF TG_OP <> 'INSERT' THEN changed := changed || ('agent:' || OLD.agent_id); END IF;
    END IF;
    -- PostgreSQL folds identical payloads of one transaction into one notification.
    PERFORM pg_notify('agentidp_clients', key) FROM unnest(changed) AS key;
    RETURN NULL;
END
$$;

CREATE TRIGGER agents_client_changed AFTER INSERT OR UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION agentidp_client_changed();
CREATE TRIGGER credentials_client_changed AFTER INSERT OR UPDATE OR DELETE ON credentials
    FOR EACH ROW EXECUTE FUNCTION agentidp_client_changed();
CREATE TRIGGER tenant_tiers_client_changed AFTER INSERT OR UPDATE OR DELETE ON tenant_tiers
    FOR EACH ROW EXECUTE FUNCTION agentidp_client_changed();
CREATE TRIGGER agents_truncated AFTER TRUNCATE ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION agentidp_client_changed();
CREATE TRIGGER credentials_truncated AFTER TRUNCATE ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION agentidp_client_changed();
CREATE TRIGGER tenant_tiers_truncated AFTER TRUNCATE ON tenant_tiers
    FOR EACH STATEMENT EXECUTE FUNCTION agentidp_client_changed();
