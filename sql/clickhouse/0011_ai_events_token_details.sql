-- Token details that providers report and OpenTelemetry's GenAI spans carry, as their own
-- columns: input tokens read from and written to the prompt cache, and output tokens spent on
-- reasoning (0 when the event does not say).
-- {database} is filled in by `sift-batcher migrate`.
ALTER TABLE {database}.ai_events
    ADD COLUMN IF NOT EXISTS cache_read_input_tokens UInt32 DEFAULT 0 AFTER output_tokens,
    ADD COLUMN IF NOT EXISTS cache_creation_input_tokens UInt32 DEFAULT 0 AFTER cache_read_input_tokens,
    ADD COLUMN IF NOT EXISTS reasoning_output_tokens UInt32 DEFAULT 0 AFTER cache_creation_input_tokens
