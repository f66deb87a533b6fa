-- A tenant's own retention of raw events, in days (NULL: the global raw TTL that
-- `sift-batcher migrate --raw-ttl-days` gives ai_events). This column is the source of truth;
-- ClickHouse enforces it: `tenant set-retention` and `migrate` write every tenant's setting
-- into ai_events' TTL. At most ten years: the TTL is a DateTime, which ends in 2106.
ALTER TABLE tenants ADD COLUMN raw_retention_days INTEGER
    CHECK (raw_retention_days BETWEEN 1 AND 3650);
