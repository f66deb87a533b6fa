-- The chunk ledger (dedup layer 2): one row per micro-batch, keyed by its deterministic id.
-- A chunk marked 'inserted' is acknowledged without inserting again. Rows are small and are
-- pruned by age, so the table stays small metadata.
CREATE TABLE chunk_ledger (
    chunk_id     TEXT PRIMARY KEY,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'inserted')),
    worker       TEXT NOT NULL,
    row_count    INTEGER NOT NULL CHECK (row_count >= 0),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    inserted_at  TIMESTAMPTZ
);

CREATE INDEX chunk_ledger_updated_at ON chunk_ledger (updated_at);
