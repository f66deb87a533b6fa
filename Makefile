# sift: the two commands of the README are `make run` and `make test`.
SHELL := /bin/bash
.PHONY: run test build up down browser lint fmt bench bench-ingest load

# Bring up Redis, PostgreSQL and ClickHouse (installing them when missing), migrate, create a
# local tenant and key, and run sift in the foreground.
run:
	deploy/local/run.sh

# Everything CI checks: formatting, clippy, unit, property and end-to-end tests on real services
# (and the dashboard in headless Chromium; its screenshot lands in target/test-artifacts/).
test: up browser
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo build --workspace --bins
	set -o pipefail; cargo test --workspace 2>&1 | tee target/test-output.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "summary: %d passed, %d failed\n", p, f}' target/test-output.log

build:
	cargo build --workspace --release --bins

# The local services only (no Docker needed); `down` stops what `up` started.
up:
	deploy/local/up.sh

down:
	deploy/local/down.sh

# Debian's Chromium, for the dashboard's browser test.
browser:
	deploy/local/chromium.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# The read path over 10 million raw events: hourly API (rollups) against the raw table.
# Report: stdout and target/bench-report.md. SIFT_BENCH_EVENTS changes the size.
bench: up
	cargo build --release --bins
	cargo bench -p sift-e2e --bench hourly

# The ingest API under a duplicate-heavy load: events/s and p50/p99 (target/bench-ingest.md).
bench-ingest: up
	cargo build --release --bins
	cargo bench -p sift-e2e --bench ingest

# sift-bench against a running stack (`make run`), with the end-to-end check in ClickHouse:
# KEY=sk_... make load ARGS='--batch-size 100 --duration 20s' (see sift-bench --help).
load:
	cargo build --release -p sift-bench
	flock /tmp/sift-bench.lock target/release/sift-bench --key "$(KEY)" \
		--clickhouse-url "$${SIFT_CLICKHOUSE_URL:-http://127.0.0.1:8123}" $(ARGS)
