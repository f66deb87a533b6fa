-- The provider's name of the model each event used (`gpt-4o-mini`, '' when the event does not
-- say), beside the application's `model_version`: what OpenTelemetry's GenAI spans carry as
-- `gen_ai.request.model` / `gen_ai.response.model`.
-- {database} is filled in by `sift-batcher migrate`.
ALTER TABLE {database}.ai_events ADD COLUMN IF NOT EXISTS model LowCardinality(String) DEFAULT '' AFTER model_version
