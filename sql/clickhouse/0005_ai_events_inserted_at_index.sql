-- A minmax skip index on ai_events.inserted_at: the flusher picks the sessions and hours that
-- received rows in its last minutes by inserted_at, which is not in the sort key. The rows of
-- one tenant and hour arrive at about the same time, so a granule's inserted_at range is
-- narrow and the index skips the granules written before the window (the flusher also bounds
-- its reads by event_time, which prunes partitions and hours by the sort key).
-- MATERIALIZE builds it for the parts written before this migration (a mutation, in the
-- background); parts written after it have it from the start.
ALTER TABLE {database}.ai_events ADD INDEX IF NOT EXISTS inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1;

ALTER TABLE {database}.ai_events MATERIALIZE INDEX inserted_at_minmax
