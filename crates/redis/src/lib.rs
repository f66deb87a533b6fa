//! sift-redis: the one Redis layer both binaries use.
//!
//! - [`args`]: the Redis flags both binaries take (`--redis-url`, shards, cluster mode, key
//!   prefix, timeout, replicas to wait for), and the claim flags the API and `dlq replay`
//!   share.
//! - [`shards`]: the shards built from those flags, each a key space and its connections: a
//!   pool on one server, or one Redis Cluster client for all of them (MOVED and ASK followed,
//!   each shard one hash tag, so one slot and one master).
//! - [`call`]: one bounded call (a timeout on every wait) whose failures are counted by name.
//! - [`metrics`]: the failed calls' counter.
//! - [`scripts`]: every Lua script sift runs (files under `lua/`), each with a typed wrapper.
//! - [`claim`]: the claim script's call for one shard and its answers: the same claim for an
//!   ingest request and for a replayed invalid event.
//! - [`version`]: the oldest Redis sift runs on, checked at start-up.

pub mod args;
pub mod call;
pub mod claim;
pub mod conn;
pub mod metrics;
pub mod scripts;
pub mod shards;
pub mod version;

pub use args::{ClaimArgs, RedisArgs};
pub use call::RedisError;
pub use claim::{Claim, ClaimCall, ClaimSettings, Outcome, WindowMode};
pub use conn::Conn;
pub use shards::{Shard, Shards};
