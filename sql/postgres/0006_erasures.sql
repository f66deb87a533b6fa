-- Erasure requests: the removal of one end user's or one session's data, asked through
-- `POST /v1/ai/erasures` or `sift-batcher erase`, carried out by a batcher, and reported
-- 'done' only once a read-back finds nothing of it left. A request is also the tombstone
-- the batchers check while it is younger than `--erasure-tombstone-days`: an event of the
-- subject that arrives later with a timestamp before `requested_at` is not written.
CREATE TABLE erasures (
    id            BIGSERIAL PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('user_id', 'session_id')),
    subject       TEXT NOT NULL CHECK (length(subject) BETWEEN 1 AND 128),
    status        TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done')),
    requested_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    heartbeat_at  TIMESTAMPTZ,
    worker        TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    done_at       TIMESTAMPTZ,
    removed       TEXT,
    last_error    TEXT
);

CREATE INDEX erasures_open ON erasures (id) WHERE status <> 'done';
CREATE INDEX erasures_requested_at ON erasures (requested_at);
