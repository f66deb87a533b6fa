# sift: the two commands of the README are `make run` and `make test`.
SHELL := /bin/bash
.PHONY: run run-cluster test build up down cluster-up redis-cluster browser otel-clients lint fmt bench load

# Bring up Redis, PostgreSQL and ClickHouse (installing them when missing), migrate, create a
# local tenant and key, and run sift in the foreground.
run:
	deploy/local/run.sh

# The whole distributed stack on this machine: a Redis Cluster (3 masters, 3 replicas), a
# ClickHouse cluster of two shards, PostgreSQL, two ingest nodes and two batchers (Ctrl-C stops
# sift; `make down` stops the rest).
run-cluster:
	deploy/local/run_cluster.sh

# Everything CI checks: formatting, clippy, unit, property and end-to-end tests on real services
# (and the dashboard in headless Chromium; its screenshot lands in target/test-artifacts/), and
# the tests that need a Redis Cluster (started here, not by `make up`).
test: up redis-cluster browser otel-clients
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo build --workspace --bins
	set -o pipefail; cargo test --workspace 2>&1 | tee target/test-output.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "summary: %d passed, %d failed\n", p, f}' target/test-output.log

build:
	cargo build --workspace --release --bins

# The local services only (no Docker needed); `down` stops what `up` (and `redis-cluster`) started.
up:
	deploy/local/up.sh

down:
	deploy/local/down.sh
	deploy/local/clickhouse_cluster.sh stop

# A two-shard ClickHouse cluster `sift_local` (HTTP 21123 and 22123) to run sift on by hand
# (docs/deploy.md, "A two-shard ClickHouse on one machine"); the tests start their own.
cluster-up:
	deploy/local/clickhouse_cluster.sh start

# A local Redis Cluster (3 masters, 3 replicas on 127.0.0.1:24001-24006) for the cluster tests;
# `make down` stops it too.
redis-cluster:
	deploy/local/redis_cluster.sh start

# Debian's Chromium, for the dashboard's browser test.
browser:
	deploy/local/chromium.sh

# The real OpenTelemetry GenAI client (Python, pinned) that the OTLP end-to-end test drives.
otel-clients:
	deploy/local/otel_clients.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Every benchmark scenario on the local stack, in one run, each figure beside its limit:
# ingest alone (and OTLP exports against JSON batches), batchers draining 2 million records (and ClickHouse alone for the same rows),
# the whole pipeline at rising rates, bytes on disk, the hourly API on 10 million events.
# Report: target/bench/report.md and report.json. SIFT_BENCH_SCALE (1) multiplies every size
# and duration (0.1 for a quick look); about 14 minutes at 1 on 2 cores.
bench: up
	cargo build --release --bins
	cargo bench -p sift-e2e --bench hourly
	cargo bench -p sift-ingest-api --bench redis_ceiling
	cargo bench -p sift-e2e --bench report

# sift-bench against a running stack (`make run`), with the end-to-end check in ClickHouse:
# KEY=sk_... make load ARGS='--batch-size 100 --duration 20s' (see sift-bench --help).
load:
	cargo build --release -p sift-bench
	target/release/sift-bench --key "$(KEY)" \
		--clickhouse-url "$${SIFT_CLICKHOUSE_URL:-http://127.0.0.1:8123}" $(ARGS)
