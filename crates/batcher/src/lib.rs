//! sift-batcher: the worker that moves accepted events from Redis into ClickHouse exactly once,
//! and the operator commands around it.
//!
//! - [`config`]: the command line (every flag also read from the environment).
//! - [`commands`]: one module per command (`migrate`, `run`, `backfill`, `dlq`, `tenant`,
//!   `key`), the binary's edge: each connects to the stores, calls the modules below and
//!   prints what the operator reads.
//! - [`worker`]: the queue consumer that `run` starts; [`queue`] (Redis: reliable claim,
//!   heartbeats, takeover), [`chunk`] (deterministic chunk ids), [`rowbinary`] (a record as a
//!   row), [`ledger`] (PostgreSQL chunk ledger), [`clickhouse`] (the token-carrying insert),
//!   [`retry`], [`shutdown`].
//! - [`flusher`]: one batcher at a time, every period, recomputes recent [`sessions`] (session
//!   metrics, and their backfill), finalizes recent [`rollups`] (hourly figures for the
//!   read API) and [`reconcile`]s them with the raw events; [`event_bounds`]: the time bounds
//!   on raw events they read with.
//! - [`dlq`]: dead letters: listing, replay (whole chunks with their tokens), purge.
//! - [`erasure`]: carrying out erasure requests, and the tombstones that keep an erased
//!   subject's late events out.
//! - [`health`] and [`metrics`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`postgres`], [`migrate`], [`tenants`]: schema and tenants/keys administration;
//!   [`retention`]: per-tenant retention of raw events, enforced by `ai_events`' TTL.
//! - [`cluster`]: sift on a sharded ClickHouse (`--clickhouse-cluster`): the nodes, and the
//!   deletes and TTL changes sent to each node's `_local` tables.
//! - [`sql`]: names (the database, a table, a TTL) bound into SQL text, in one place.

pub mod chunk;
pub mod clickhouse;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod dlq;
pub mod erasure;
pub mod event_bounds;
pub mod flusher;
pub mod health;
pub mod ledger;
pub mod metrics;
pub mod migrate;
pub mod postgres;
pub mod queue;
pub mod reconcile;
pub mod retention;
pub mod retry;
pub mod rollups;
pub mod rowbinary;
pub mod sessions;
pub mod shutdown;
pub mod sql;
pub mod tenants;
pub mod worker;
