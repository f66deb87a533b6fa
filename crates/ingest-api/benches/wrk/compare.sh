#!/usr/bin/env bash
# A/B of two sift-ingest binaries under the same loads, interleaved (A, B, A, B, ...) so that
# the drift of a shared machine falls on both alike; prints each run, then the medians and
# the ratio B/A of events/s and p99.
#
# Usage: compare.sh BIN_A BIN_B LOAD...   (LOAD as in bench.sh). Environment as in bench.sh,
# plus ROUNDS (3) and ARGS_A / ARGS_B (extra sift-ingest flags of each side).
set -euo pipefail
here=$(dirname "$0")
a=$1 b=$2
shift 2
log=$(mktemp)
for round in $(seq "${ROUNDS:-3}"); do
  for load in "$@"; do
    BIN=$a RUNS=1 INGEST_ARGS=${ARGS_A:-} "$here/bench.sh" "$load" | sed 's/^{/{"side":"A",/' | tee -a "$log"
    BIN=$b RUNS=1 INGEST_ARGS=${ARGS_B:-} "$here/bench.sh" "$load" | sed 's/^{/{"side":"B",/' | tee -a "$log"
  done
done
python3 - "$log" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
loads = sorted({r["load"] for r in rows}, key=lambda l: [r["load"] for r in rows].index(l))
print("| load | A events/s | B events/s | B/A | A p50 | B p50 | A p99 ms | B p99 ms | B/A p99 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for load in loads:
    m = {}
    for side in "AB":
        rs = [r for r in rows if r["load"] == load and r["side"] == side]
        m[side] = {k: statistics.median(r[k] for r in rs) for k in ("events_per_s", "p50_ms", "p99_ms")}
    A, B = m["A"], m["B"]
    print(f"| {load} | {A['events_per_s']:.0f} | {B['events_per_s']:.0f} | {B['events_per_s'] / A['events_per_s']:.2f} "
          f"| {A['p50_ms']:.2f} | {B['p50_ms']:.2f} | {A['p99_ms']:.2f} | {B['p99_ms']:.2f} | {B['p99_ms'] / A['p99_ms']:.2f} |")
PY
rm -f "$log"
