//! Every Lua script sift runs, each a file under `lua/` (with its keys, arguments and answer
//! described at its top), and a typed wrapper that sends exactly those keys and arguments.
//! Each script touches keys of one shard only (one hash tag), so it runs on one node of a
//! Redis Cluster. A call sends EVALSHA and, on NOSCRIPT (a restarted server, a promoted
//! replica), EVAL with the script's text, which runs it and caches it on that node. (Not
//! SCRIPT LOAD: a cluster client sends that to every node and needs every one to answer, so a
//! replica down anywhere would fail the calls of a master that lost its scripts.)
//!
//! The claim script (`claim.lua`) is built by [`crate::claim`], which lays out its many keys.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult, ToRedisArgs};

/// A Lua script: its text and its SHA-1, as EVALSHA names it.
pub struct Lua {
    text: &'static str,
    hash: String,
}

impl Lua {
    pub fn new(text: &'static str) -> Self {
        Self {
            text,
            hash: redis::Script::new(text).get_hash().to_owned(),
        }
    }

    pub fn text(&self) -> &'static str {
        self.text
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// A call of this script, its keys and arguments added with [`LuaCall::key`] and
    /// [`LuaCall::arg`].
    pub fn key(&self, key: impl ToRedisArgs) -> LuaCall<'_> {
        let mut call = LuaCall {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        };
        call.key(key);
        call
    }
}

/// One call of a [`Lua`] script.
pub struct LuaCall<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl LuaCall<'_> {
    pub fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// EVALSHA, then EVAL with the text when the node does not have the script.
    pub async fn invoke<T: FromRedisValue, C: ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> RedisResult<T> {
        match self
            .command("EVALSHA", &self.lua.hash)
            .query_async(conn)
            .await
        {
            Err(e) if is_noscript(&e) => {
                self.command("EVAL", self.lua.text).query_async(conn).await
            }
            answer => answer,
        }
    }

    fn command(&self, verb: &str, script: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key.as_slice());
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }
}

/// Whether Redis answered NOSCRIPT (it ran nothing).
pub fn is_noscript(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

macro_rules! script {
    ($name:ident, $file:literal) => {
        static $name: LazyLock<Lua> =
            LazyLock::new(|| Lua::new(include_str!(concat!("lua/", $file))));
    };
}

script!(RATE, "rate.lua");
script!(SWEEP_STREAMS, "sweep_streams.lua");
script!(QUEUE_CLAIM, "queue_claim.lua");
script!(QUEUE_ACK, "queue_ack.lua");
script!(TAKE_OVER, "take_over.lua");
script!(HELD_LISTS, "held_lists.lua");
script!(REQUEUE, "requeue.lua");
script!(RESTORE_CHUNK, "restore_chunk.lua");
script!(LOCK_ACQUIRE, "lock_acquire.lua");
script!(LOCK_RELEASE, "lock_release.lua");

/// Counts `events` against a tenant's `limit` per second on `counter`; false when over it.
pub async fn rate<C: ConnectionLike>(
    conn: &mut C,
    counter: &str,
    events: usize,
    limit: u32,
) -> RedisResult<bool> {
    let taken: i64 = RATE
        .key(counter)
        .arg(events)
        .arg(limit)
        .invoke(conn)
        .await?;
    Ok(taken == 1)
}

/// Enqueues up to `max` streams of `open_streams` past their deadline onto `queue`, claiming
/// their intents for `claim_ms`; how many.
pub async fn sweep_streams<C: ConnectionLike>(
    conn: &mut C,
    open_streams: &str,
    queue: &str,
    now_ms: i64,
    max: usize,
    claim_ms: u64,
) -> RedisResult<u64> {
    SWEEP_STREAMS
        .key(open_streams)
        .key(queue)
        .arg(now_ms)
        .arg(max)
        .arg(claim_ms)
        .invoke(conn)
        .await
}

/// What one queue claim moved into a processing list.
pub struct Claimed {
    /// A budget (rows or bytes) stopped the claim: the chunk is full.
    pub full: bool,
    /// The records the elements hold.
    pub rows: usize,
    /// The elements, oldest first.
    pub elements: Vec<Vec<u8>>,
}

/// The lists one batcher worker works with.
pub struct WorkerLists<'a> {
    pub queue: &'a str,
    pub processing: &'a str,
    pub workers: &'a str,
    pub worker: &'a str,
}

/// Moves up to `rows` records and `bytes` bytes (at least one element if `at_least_one`)
/// from the queue's tail into the processing list.
pub async fn queue_claim<C: ConnectionLike>(
    conn: &mut C,
    lists: &WorkerLists<'_>,
    rows: usize,
    bytes: usize,
    at_least_one: bool,
) -> RedisResult<Claimed> {
    let (full, rows, elements): (u8, usize, Vec<Vec<u8>>) = QUEUE_CLAIM
        .key(lists.queue)
        .key(lists.processing)
        .key(lists.workers)
        .arg(rows)
        .arg(bytes)
        .arg(lists.worker)
        .arg(u8::from(at_least_one))
        .invoke(conn)
        .await?;
    Ok(Claimed {
        full: full == 1,
        rows,
        elements,
    })
}

/// A chunk to acknowledge: its length and end records, what to dead-letter, and the rollup
/// version keys of the hours it wrote.
pub struct Ack<'a> {
    pub processing: &'a str,
    pub dead_letters: &'a str,
    pub versions: &'a [String],
    pub len: usize,
    pub oldest: &'a [u8],
    pub newest: &'a [u8],
    pub versions_ttl_ms: u64,
    pub dead: &'a [Vec<u8>],
}

/// Acknowledges a chunk; false when it was no longer at the list's tail (taken over).
pub async fn queue_ack<C: ConnectionLike>(conn: &mut C, ack: &Ack<'_>) -> RedisResult<bool> {
    let mut invocation = QUEUE_ACK.key(ack.processing);
    invocation.key(ack.dead_letters);
    for version in ack.versions {
        invocation.key(version);
    }
    invocation
        .arg(ack.len)
        .arg(ack.oldest)
        .arg(ack.newest)
        .arg(ack.versions_ttl_ms);
    for entry in ack.dead {
        invocation.arg(entry.as_slice());
    }
    let left: i64 = invocation.invoke(conn).await?;
    Ok(left >= 0)
}

/// The keys of one takeover: the dead worker's heartbeat and list, ours, the worker set.
pub struct TakeOver<'a> {
    pub heartbeat: &'a str,
    pub dead_list: &'a str,
    pub our_list: &'a str,
    pub workers: &'a str,
    pub dead: &'a str,
}

/// Takes over a dead worker's processing list when ours is empty; true when one was taken.
pub async fn take_over<C: ConnectionLike>(conn: &mut C, t: &TakeOver<'_>) -> RedisResult<bool> {
    let taken: i64 = TAKE_OVER
        .key(t.heartbeat)
        .key(t.dead_list)
        .key(t.our_list)
        .key(t.workers)
        .arg(t.dead)
        .invoke(conn)
        .await?;
    Ok(taken == 1)
}

/// How many of `lists` (the processing lists of the registered workers) hold records.
pub async fn held_lists<C: ConnectionLike>(
    conn: &mut C,
    workers: &str,
    lists: &[String],
) -> RedisResult<u64> {
    let mut invocation = HELD_LISTS.key(workers);
    for list in lists {
        invocation.key(list);
    }
    invocation.invoke(conn).await
}

/// Moves a dead letter's `record` onto `queue` if `entry` is still on `list`; true if moved.
pub async fn requeue<C: ConnectionLike>(
    conn: &mut C,
    list: &str,
    queue: &str,
    entry: &[u8],
    record: &[u8],
) -> RedisResult<bool> {
    let moved: i64 = REQUEUE
        .key(list)
        .key(queue)
        .arg(entry)
        .arg(record)
        .invoke(conn)
        .await?;
    Ok(moved == 1)
}

/// An exhausted chunk to rebuild from the dead letters: its entries there and their records,
/// in the chunk's order, and the worker (that does not exist) whose processing list it
/// becomes.
pub struct Restore<'a> {
    pub dead_letters: &'a str,
    pub processing: &'a str,
    pub workers: &'a str,
    pub worker: &'a str,
    pub entries: &'a [&'a [u8]],
    pub records: &'a [Vec<u8>],
}

/// Rebuilds an exhausted chunk as a processing list if all its entries are still there;
/// records moved.
pub async fn restore_chunk<C: ConnectionLike>(conn: &mut C, r: &Restore<'_>) -> RedisResult<usize> {
    let (entries, records) = (r.entries, r.records);
    let mut invocation = RESTORE_CHUNK.key(r.dead_letters);
    invocation
        .key(r.processing)
        .key(r.workers)
        .arg(r.worker)
        .arg(entries.len());
    for entry in entries {
        invocation.arg(*entry);
    }
    for record in records {
        invocation.arg(record.as_slice());
    }
    invocation.invoke(conn).await
}

/// Takes `lock` for `ttl_ms` as `token` if it is free, or renews it if `token` holds it.
pub async fn lock_acquire<C: ConnectionLike>(
    conn: &mut C,
    lock: &str,
    token: &str,
    ttl_ms: u64,
) -> RedisResult<bool> {
    let held: i64 = LOCK_ACQUIRE
        .key(lock)
        .arg(token)
        .arg(ttl_ms)
        .invoke(conn)
        .await?;
    Ok(held == 1)
}

/// Releases `lock` if `token` holds it.
pub async fn lock_release<C: ConnectionLike>(
    conn: &mut C,
    lock: &str,
    token: &str,
) -> RedisResult<()> {
    let _: i64 = LOCK_RELEASE.key(lock).arg(token).invoke(conn).await?;
    Ok(())
}
