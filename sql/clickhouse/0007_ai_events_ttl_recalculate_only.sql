-- Per-tenant retention: ai_events' TTL maps each row's tenant to its days, and changes when a
-- tenant's retention does (crates/batcher/src/retention.rs). A part keeps the TTL bounds
-- computed when it was written, so after a change `ALTER TABLE … MATERIALIZE TTL` recomputes
-- them. With this setting that mutation only reads tenant_id and event_time and writes the
-- new bounds (the other columns are hard-linked, not rewritten); the expired rows then go in
-- ClickHouse's TTL merges. Without it, MATERIALIZE TTL rewrites every part of the table whole.
ALTER TABLE {database}.ai_events MODIFY SETTING materialize_ttl_recalculate_only = 1
