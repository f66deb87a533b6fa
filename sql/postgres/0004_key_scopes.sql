-- What each API key may do: 'ingest' (write events), 'read' (the read API and the dashboard),
-- 'admin' (operator routes on a tenant's data). Keys created before this migration get the
-- default, ingest and read, so they keep working exactly as before. A key has at least one
-- scope, and only known ones (an array holding a NULL fails the containment check too).
ALTER TABLE api_keys ADD COLUMN scopes TEXT[] NOT NULL DEFAULT ARRAY['ingest', 'read']
    CONSTRAINT api_keys_scopes_known
    CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['ingest', 'read', 'admin']);
