#!/usr/bin/env bash
# `make run`: the local services, the schema, a local tenant with a fresh API key, sift-batcher
# in the background and sift-ingest in the foreground (Ctrl-C stops both). Prints a curl line
# that sends an event and the query that counts the events in ClickHouse.
# Env: SIFT_LISTEN (127.0.0.1:8080), SIFT_BATCHER_LISTEN (127.0.0.1:9090), SIFT_POSTGRES_URL,
#      SIFT_REDIS_URL, SIFT_CLICKHOUSE_URL, SIFT_TENANT (local).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

"$root/deploy/local/up.sh"

export SIFT_POSTGRES_URL="${SIFT_POSTGRES_URL:-postgres://postgres@127.0.0.1:${SIFT_PG_PORT:-5432}/sift}"
export SIFT_REDIS_URL="${SIFT_REDIS_URL:-redis://127.0.0.1:${SIFT_REDIS_PORT:-6379}}"
export SIFT_CLICKHOUSE_URL="${SIFT_CLICKHOUSE_URL:-http://127.0.0.1:${SIFT_CLICKHOUSE_HTTP_PORT:-8123}}"
export SIFT_LISTEN="${SIFT_LISTEN:-127.0.0.1:8080}"
export SIFT_BATCHER_LISTEN="${SIFT_BATCHER_LISTEN:-127.0.0.1:9090}"
tenant="${SIFT_TENANT:-local}"

cargo build --release --bins --quiet
bin="$root/target/release"

"$bin/sift-batcher" migrate
"$bin/sift-batcher" tenant create "$tenant"
key="$("$bin/sift-batcher" key create "$tenant" | sed -n 's/.*key=\([^ ]*\).*/\1/p')"

cat <<MSG

API key for tenant '$tenant' (shown once; revoke with: target/release/sift-batcher key revoke <key>):
  $key

Send an event:
  curl -s -X POST http://$SIFT_LISTEN/v1/ai/events -H 'Authorization: Bearer $key' -H 'Content-Type: application/json' -d '{"session_id":"session-0001","prompt_text":"Help me write code","model_version":"v1.2.3","latency_ms":120,"token_count":42}'

Count the events in ClickHouse:
  curl -s '$SIFT_CLICKHOUSE_URL' --data-binary 'SELECT count() FROM ai_analytics.ai_events'

Dead letters:  target/release/sift-batcher dlq list   (and: dlq show N, dlq replay, dlq purge)
Metrics:       http://$SIFT_LISTEN/metrics (ingest), http://$SIFT_BATCHER_LISTEN/metrics (batcher)

Starting sift-batcher and sift-ingest on http://$SIFT_LISTEN (Ctrl-C stops both)...
MSG
"$bin/sift-batcher" run &
batcher=$!
# SIGTERM lets the batcher finish the chunk in hand.
trap 'kill -TERM "$batcher" 2>/dev/null; wait "$batcher" 2>/dev/null' EXIT
"$bin/sift-ingest"
