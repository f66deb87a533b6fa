//! Helpers for the end-to-end tests: each test gets its own PostgreSQL database (and ClickHouse
//! database), its own Redis key prefix (or its own Redis server) and its own sift processes on
//! free ports, so tests run in parallel and repeatedly without seeing each other.
//!
//! - [`services`]: the stores, a database per test, a private Redis.
//! - [`clickhouse_cluster`]: a private two-shard ClickHouse cluster of one test.
//! - [`redis_cluster`]: the shared Redis Cluster, and a private one a test can fail over.
//! - [`processes`]: `sift-ingest` and `sift-batcher run` as child processes.
//! - [`proxy`]: a TCP proxy to cut a dependency and bring it back.
//! - [`fixtures`]: an ingest API with its database and key, and the data the tests send.
//! - [`world`]: a whole pipeline for several tenants, on any Redis layout.
//! - [`hourly`]: the check of hourly answers against the raw events.
//! - [`pipeline`]: an ingest API and a database for the batcher's tests.
//! - [`otlp`]: OTLP requests and answers for the tests and benchmark of `/v1/traces`.

pub mod clickhouse_cluster;
pub mod fixtures;
pub mod hourly;
pub mod otlp;
pub mod pipeline;
pub mod processes;
pub mod proxy;
pub mod redis_cluster;
pub mod services;
pub mod world;

pub use clickhouse_cluster::PrivateClickHouseCluster;
pub use fixtures::{dataset, event, f, gzip, hourly_path, now_secs, resent, Fixture, MODELS};
pub use hourly::assert_hourly_equals_raw;
pub use pipeline::{event_in, unique_events, Pipeline};
pub use processes::{Batcher, Ingest, Log};
pub use proxy::Proxy;
pub use redis_cluster::{redis_cluster_urls, require_redis_cluster, PrivateRedisCluster};
pub use services::{
    bin, clickhouse_query, clickhouse_query_at, clickhouse_url, delete_prefix,
    drop_postgres_database, postgres_base, redis_connection, redis_url, take_queue_as, unique,
    Database, PrivateRedis,
};
pub use world::World;
