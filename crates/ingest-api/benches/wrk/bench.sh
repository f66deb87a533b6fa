#!/usr/bin/env bash
# Runs the ingest API under wrk: starts target/release/sift-ingest, runs wrk RUNS times for
# each load, prints wrk's JSON line per run, and deletes its Redis keys after each run.
# Every run holds /tmp/sift-bench.lock so that benchmarks on a shared machine never overlap.
#
# Usage: bench.sh LOAD...   where LOAD is single:CONNS, batch:CONNS or paced:CONNS:DELAY_MS
# Environment: SIFT_KEY (required), SIFT_POSTGRES_URL (required), SECS (15), RUNS (3),
# PORT (8090), PREFIX (wtb), WRK_THREADS (1), INGEST_ARGS (extra flags for sift-ingest),
# BIN (target/release/sift-ingest).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
: "${SIFT_KEY:?}" "${SIFT_POSTGRES_URL:?}"
SECS=${SECS:-15} RUNS=${RUNS:-3} PORT=${PORT:-8090} PREFIX=${PREFIX:-wtb} WRK_THREADS=${WRK_THREADS:-1}
BIN=${BIN:-target/release/sift-ingest}
script=crates/ingest-api/benches/wrk/ingest.lua

clean() {
  redis-cli --scan --pattern "${PREFIX}:*" | awk '{k = k " " $0} NR % 500 == 0 {print "UNLINK" k; k = ""} END {if (k != "") print "UNLINK" k}' | redis-cli >/dev/null
}

# shellcheck disable=SC2086
"$BIN" --listen "127.0.0.1:$PORT" --postgres-url "$SIFT_POSTGRES_URL" --key-prefix "$PREFIX" \
  --queue-high-water 0 ${INGEST_ARGS:-} >/tmp/sift-wrk-ingest.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; clean' EXIT
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  sleep 0.1
done

for load in "$@"; do
  IFS=: read -r kind conns delay <<<"$load"
  case $kind in
    single) batch=1 ;;
    batch) batch=${BATCH:-100} ;;
    paced) batch=1 ;;
    *) echo "unknown load $kind" >&2; exit 2 ;;
  esac
  for run in $(seq "$RUNS"); do
    line=$(SIFT_BATCH=$batch SIFT_DELAY_MS=${delay:-0} flock /tmp/sift-bench.lock \
      wrk -t"$WRK_THREADS" -c"$conns" -d"${SECS}s" -s "$script" "http://127.0.0.1:$PORT" | tail -1)
    echo "{\"load\":\"$load\",\"run\":$run,${line#\{}"
    clean
  done
done
