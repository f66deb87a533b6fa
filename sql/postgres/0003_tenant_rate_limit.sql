-- A tenant's rate of events per second (NULL: no limit). Past it, the ingest API answers 429
-- with Retry-After, so one tenant cannot take the queue's whole capacity.
ALTER TABLE tenants ADD COLUMN rate_limit_per_sec INTEGER CHECK (rate_limit_per_sec > 0);
