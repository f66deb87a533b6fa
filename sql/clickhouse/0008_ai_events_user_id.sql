-- The end user each event is about ('' when the application does not say), so that one
-- user's data can be found and erased (`POST /v1/ai/erasures`). User ids are scattered over
-- the sort key, so a bloom filter index lets the erasure's delete and its read-back skip the
-- granules without that user instead of reading the tenant's every row.
-- {database} is filled in by `sift-batcher migrate`.
ALTER TABLE {database}.ai_events ADD COLUMN IF NOT EXISTS user_id String DEFAULT '' AFTER session_id;

ALTER TABLE {database}.ai_events ADD INDEX IF NOT EXISTS user_id_bloom user_id TYPE bloom_filter(0.01) GRANULARITY 4
