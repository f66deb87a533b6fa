#!/usr/bin/env bash
# Profiles sift-ingest (and Redis) under one wrk load and draws flamegraphs with inferno.
# Holds /tmp/sift-bench.lock for the whole run.
#
# Usage: profile.sh NAME LOAD   (LOAD as in bench.sh: single:CONNS or batch:CONNS)
# Writes target/perf/NAME.svg (sift-ingest), target/perf/NAME-redis.svg (redis-server), the
# folded stacks beside them, and NAME.top.txt (the hottest functions, self time; PATTERNS:
# frames whose inclusive share to add, see top.py).
# Environment: SIFT_KEY, SIFT_POSTGRES_URL (required), BIN (target/profiling/sift-ingest:
# `cargo build --profile profiling --bin sift-ingest`), SECS (12), PORT (8091), PREFIX (wtp),
# INGEST_ARGS, REDIS_PID (found with pidof when unset).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
: "${SIFT_KEY:?}" "${SIFT_POSTGRES_URL:?}"
name=$1 load=$2
SECS=${SECS:-12} PORT=${PORT:-8091} PREFIX=${PREFIX:-wtp} BIN=${BIN:-target/profiling/sift-ingest}
REDIS_PID=${REDIS_PID:-$(pidof redis-server | cut -d' ' -f1)}
out=target/perf
mkdir -p "$out"
IFS=: read -r kind conns <<<"$load"
batch=1
[ "$kind" = batch ] && batch=${BATCH:-100}

run() {
  # shellcheck disable=SC2086
  "$BIN" --listen "127.0.0.1:$PORT" --postgres-url "$SIFT_POSTGRES_URL" --key-prefix "$PREFIX" \
    --queue-high-water 0 ${INGEST_ARGS:-} >/tmp/sift-perf-ingest.log 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    sleep 0.1
  done
  SIFT_BATCH=$batch wrk -t1 -c"$conns" -d"${SECS}s" -s crates/ingest-api/benches/wrk/ingest.lua \
    "http://127.0.0.1:$PORT" >"$out/$name.wrk.txt" &
  wrk=$!
  sleep 2
  perf record -F 999 -g --call-graph dwarf,16384 -p "$server" -o "$out/$name.data" -- sleep $((SECS - 4)) 2>/dev/null &
  p1=$!
  perf record -F 999 -g -p "$REDIS_PID" -o "$out/$name-redis.data" -- sleep $((SECS - 4)) 2>/dev/null &
  p2=$!
  wait $p1 $p2 $wrk
  kill $server; wait $server 2>/dev/null || true
  trap - EXIT
  redis-cli --scan --pattern "${PREFIX}:*" | awk '{k = k " " $0} NR % 500 == 0 {print "UNLINK" k; k = ""} END {if (k != "") print "UNLINK" k}' | redis-cli >/dev/null
}
export -f run
flock /tmp/sift-bench.lock bash -c "$(declare -f run); BIN='$BIN' PORT=$PORT PREFIX=$PREFIX SECS=$SECS batch=$batch conns=$conns out=$out name=$name REDIS_PID=$REDIS_PID INGEST_ARGS='${INGEST_ARGS:-}' run"

for data in "$name" "$name-redis"; do
  perf script -i "$out/$data.data" 2>/dev/null | inferno-collapse-perf >"$out/$data.folded"
  inferno-flamegraph --title "$data ($load)" <"$out/$data.folded" >"$out/$data.svg"
  crates/ingest-api/benches/wrk/top.py "$out/$data.folded" 30 ${PATTERNS:-} >"$out/$data.top.txt"
  rm -f "$out/$data.data"
done
tail -1 "$out/$name.wrk.txt"
