//! Every Redis key sift uses, built from one configurable prefix.
//!
//! With Redis Cluster, every key one script touches must share a hash tag: a shard's prefix is
//! then `{ai:s}` and all of that shard's keys hash to one slot. Keeping the names here makes
//! that a configuration change rather than a code change.

use crate::hash::SemanticHash;

/// The key names under one prefix (default `ai`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self::new("ai")
    }
}

impl KeySpace {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The key spaces of `shards` Redis shards under `prefix`: `prefix` itself when there is
    /// one shard, else `{prefix:s}` for shard `s`. The braces are a Redis Cluster hash tag:
    /// every key of a shard hashes to one slot, so each script touches one node.
    pub fn shards(prefix: &str, shards: usize) -> Vec<KeySpace> {
        if shards <= 1 {
            return vec![Self::new(prefix)];
        }
        (0..shards)
            .map(|s| Self::new(format!("{{{prefix}:{s}}}")))
            .collect()
    }

    /// The key spaces of `shards` shards on a Redis Cluster: hash tags even for one shard
    /// (every script's keys must share a slot), each chosen so that shard `s` falls in the
    /// `s`-th of `shards` equal slot ranges: `{prefix:s}` when it does, else the first
    /// `{prefix:s.k}` that does. A cluster made with its slots split evenly over its masters
    /// (as `redis-cli --cluster create` does) then gets the shards spread evenly over them,
    /// where plain `{prefix:s}` tags can crowd (`{ai:1}` and `{ai:2}` share the second of
    /// three masters). Deterministic: every process names the same keys.
    pub fn cluster(prefix: &str, shards: usize) -> Vec<KeySpace> {
        let n = shards.max(1);
        (0..n)
            .map(|s| {
                // One slot in from each end: `redis-cli --cluster create` rounds its ranges'
                // edges (the second of three masters ends at 10922, not 10921).
                let (low, high) = (SLOTS * s / n + 1, (SLOTS * (s + 1) / n).saturating_sub(1));
                let tag = std::iter::once(format!("{prefix}:{s}"))
                    .chain((1..).map(|k| format!("{prefix}:{s}.{k}")))
                    .take(64 * n + 64)
                    .find(|tag| (low..high).contains(&slot_of(tag.as_bytes())))
                    .unwrap_or_else(|| format!("{prefix}:{s}"));
                Self::new(format!("{{{tag}}}"))
            })
            .collect()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The queue of accepted records: LPUSH at the head, consumers take from the tail (FIFO).
    pub fn queue(&self) -> String {
        format!("{}:queue", self.prefix)
    }

    /// The claim on one intent within the semantic window.
    pub fn dedup(&self, tenant: &str, semantic_hash: &str) -> String {
        format!("{}:dedup:{tenant}:{semantic_hash}", self.prefix)
    }

    /// Writes [`KeySpace::dedup`] of a digest into `out` (cleared first): the ingest path
    /// names three keys per event, and this spares each its `String`.
    pub fn write_dedup(&self, out: &mut Vec<u8>, tenant: &str, semantic_hash: &SemanticHash) {
        self.write_key(out, "dedup", tenant);
        push_hex(out, semantic_hash.as_bytes());
    }

    /// Writes [`KeySpace::event_id`] into `out` (cleared first).
    pub fn write_event_id(&self, out: &mut Vec<u8>, tenant: &str, event_id_hash: &str) {
        self.write_key(out, "eid", tenant);
        out.extend_from_slice(event_id_hash.as_bytes());
    }

    /// Writes [`KeySpace::event_time`] of a digest into `out` (cleared first).
    pub fn write_event_time(
        &self,
        out: &mut Vec<u8>,
        tenant: &str,
        semantic_hash: &SemanticHash,
        timestamp_ms: i64,
    ) {
        self.write_key(out, "evt", tenant);
        push_hex(out, semantic_hash.as_bytes());
        out.push(b':');
        out.extend_from_slice(timestamp_ms.to_string().as_bytes());
    }

    /// Writes [`KeySpace::stream_pending`] of a digest into `out` (cleared first).
    pub fn write_stream_pending(
        &self,
        out: &mut Vec<u8>,
        tenant: &str,
        semantic_hash: &SemanticHash,
    ) {
        self.write_key(out, "stream", tenant);
        push_hex(out, semantic_hash.as_bytes());
    }

    /// `prefix:kind:tenant:`, the head of a per-tenant key.
    fn write_key(&self, out: &mut Vec<u8>, kind: &str, tenant: &str) {
        out.clear();
        for part in [self.prefix.as_str(), ":", kind, ":", tenant, ":"] {
            out.extend_from_slice(part.as_bytes());
        }
    }

    /// The claim on one client `event_id` (hashed, so any id length gives one key length).
    pub fn event_id(&self, tenant: &str, event_id_hash: &str) -> String {
        format!("{}:eid:{tenant}:{event_id_hash}", self.prefix)
    }

    /// The claim on one event by its identity when the client sent its own timestamp: its
    /// intent and that time. Kept for the event-id window, so that a resend long after the
    /// semantic window (a client retrying after an outage) is still known.
    pub fn event_time(&self, tenant: &str, semantic_hash: &str, timestamp_ms: i64) -> String {
        format!(
            "{}:evt:{tenant}:{semantic_hash}:{timestamp_ms}",
            self.prefix
        )
    }

    /// The latest chunk of a stream whose final chunk has not come yet.
    pub fn stream_pending(&self, tenant: &str, semantic_hash: &str) -> String {
        format!("{}:stream:{tenant}:{semantic_hash}", self.prefix)
    }

    /// Open streams by deadline, for the sweeper that enqueues streams that never finished.
    pub fn open_streams(&self) -> String {
        format!("{}:streams", self.prefix)
    }

    /// A tenant's dedup counters for one hour (`YYYYMMDDHH`, UTC): events received, accepted.
    pub fn dedup_stats(&self, tenant: &str, hour: &str) -> String {
        format!("{}:stats:{tenant}:{hour}", self.prefix)
    }

    /// A tenant's count of events received in one second (epoch seconds), for its rate limit.
    pub fn rate(&self, tenant: &str, second: i64) -> String {
        format!("{}:rate:{tenant}:{second}", self.prefix)
    }

    /// Events the API refused as invalid, raw with their error (bounded).
    pub fn invalid(&self) -> String {
        format!("{}:invalid", self.prefix)
    }

    /// Records the batcher could not write, with their error.
    pub fn dlq(&self) -> String {
        format!("{}:dlq", self.prefix)
    }

    /// A batcher worker's in-flight records, acknowledged by deletion after the insert.
    pub fn processing(&self, worker: &str) -> String {
        format!("{}:processing:{worker}", self.prefix)
    }

    /// A batcher worker's liveness key (expires when the worker stops renewing it).
    pub fn heartbeat(&self, worker: &str) -> String {
        format!("{}:heartbeat:{worker}", self.prefix)
    }

    /// The set of worker ids that have processing lists, for recovery.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// The lock that lets one batcher at a time run the flusher (sessions, finalized hours).
    pub fn flusher_lock(&self) -> String {
        format!("{}:flusher:lock", self.prefix)
    }

    /// This shard's answer to its part of one multi-shard request (named by the hash of that
    /// part), so that the request retried after another shard failed is answered the same.
    pub fn receipt(&self, tenant: &str, part_hash: &str) -> String {
        format!("{}:receipt:{tenant}:{part_hash}", self.prefix)
    }

    /// Marks an invalid event replayed onto this shard from another one (named by the hash of
    /// its entry), so that a replay interrupted between its two steps is not repeated.
    pub fn replayed(&self, entry_hash: &str) -> String {
        format!("{}:replayed:{entry_hash}", self.prefix)
    }

    /// A counter the batcher increments whenever it has written events of `tenant` for the
    /// hour starting at `hour` (epoch seconds): the read API's cache of that hour is stale
    /// once the counter moved. Expires [`ROLLUP_VERSION_TTL_MS`] after the last write.
    pub fn rollup_version(&self, tenant: &str, hour: i64) -> String {
        format!("{}:rollver:{tenant}:{hour}", self.prefix)
    }
}

/// The slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// The Redis Cluster slot of a hash tag's content (CRC16/XMODEM modulo the slots).
pub fn slot_of(tag: &[u8]) -> usize {
    usize::from(crc16::State::<crc16::XMODEM>::calculate(tag)) % SLOTS
}

/// The shard of an intent, from its semantic hash: every copy of one intent, with its claims
/// and its stream chunks, meets in the same shard, and so do `event_id` retries of the same
/// content. A retry whose content hashes differently (another `stream_id`, say) may land on
/// another shard, where its `event_id` claim is not seen. (The hash's first 8 bytes, big
/// endian, modulo the shards: the same shard as the first 16 hex characters gave before
/// digests were kept as bytes.)
pub fn shard_of(semantic_hash: &SemanticHash, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut head = [0u8; 8];
    head.copy_from_slice(&semantic_hash.as_bytes()[..8]);
    (u64::from_be_bytes(head) % shards as u64) as usize
}

/// Appends `bytes` in lowercase hex to `out`, as `hex::encode` spells them (a table, not a
/// character iterator: this runs for every key and answer of the ingest path).
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    for b in bytes {
        out.extend_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// The two hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [DIGITS[b >> 4], DIGITS[b & 0xf]];
        b += 1;
    }
    pairs
};

/// `bytes` in lowercase hex, as [`push_hex`] writes them.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// A tenant's home shard, which counts its events against its rate limit when there are
/// several shards (FNV-1a of the name: stable across processes and versions).
pub fn home_shard(tenant: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let hash = tenant.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % shards as u64) as usize
}

/// How long a rollup version outlives the last write of its hour. The read API keeps a cached
/// hour for much less than this, so a counter that expired and started again at 1 can never
/// match a cached entry from its previous life.
pub const ROLLUP_VERSION_TTL_MS: u64 = 2 * 24 * 3600 * 1000;

/// The hour bucket of `ms` (milliseconds since the epoch) as `YYYYMMDDHH`, UTC.
pub fn hour_bucket(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn hour_buckets_are_utc_hours() {
        assert_eq!(super::hour_bucket(1_790_000_000_000), "2026092114");
        assert_eq!(super::hour_bucket(0), "1970010100");
    }

    use super::*;

    #[test]
    fn default_prefix_names_match_the_documented_keys() {
        let keys = KeySpace::default();
        assert_eq!(keys.queue(), "ai:queue");
        assert_eq!(keys.dlq(), "ai:dlq");
        assert_eq!(keys.dedup("acme", "ab12"), "ai:dedup:acme:ab12");
    }

    #[test]
    fn shards_are_named_with_hash_tags_and_chosen_by_hash() {
        assert_eq!(KeySpace::shards("ai", 1), vec![KeySpace::new("ai")]);
        let three = KeySpace::shards("ai", 3);
        assert_eq!(three[2].queue(), "{ai:2}:queue");
        let hash = |head: u64| {
            let mut bytes = [0xabu8; 32];
            bytes[..8].copy_from_slice(&head.to_be_bytes());
            SemanticHash::from_hex(&hex::encode(bytes)).expect("hex")
        };
        assert_eq!(shard_of(&hash(u64::MAX), 1), 0);
        assert_eq!(shard_of(&hash(5), 3), 2);
        let mut seen = [0usize; 4];
        for i in 0..4000u32 {
            seen[shard_of(&hash(u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)), 4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
        assert_eq!(home_shard("acme", 5), home_shard("acme", 5));
        assert!(home_shard("acme", 5) < 5);
    }

    #[test]
    fn written_keys_equal_the_named_ones() {
        let keys = KeySpace::new("{ai:3}");
        let digest = SemanticHash::from_hex(&"0f".repeat(32)).expect("hex");
        let hex = digest.to_hex();
        let mut out = b"left over".to_vec();
        keys.write_dedup(&mut out, "acme", &digest);
        assert_eq!(out, keys.dedup("acme", &hex).into_bytes());
        keys.write_event_id(&mut out, "acme", "e1");
        assert_eq!(out, keys.event_id("acme", "e1").into_bytes());
        keys.write_stream_pending(&mut out, "acme", &digest);
        assert_eq!(out, keys.stream_pending("acme", &hex).into_bytes());
    }

    /// Slots as Redis's CLUSTER KEYSLOT gives them, and cluster shards spread over equal
    /// slot ranges (so over the masters of an evenly split cluster).
    #[test]
    fn cluster_shards_fall_in_equal_slot_ranges() {
        assert_eq!(slot_of(b"ai:0"), 13969);
        assert_eq!(slot_of(b"ai:1"), 9904);
        assert_eq!(slot_of(b"ai:2"), 5843);
        for n in [1usize, 2, 3, 4, 6, 16] {
            let spaces = KeySpace::cluster("ai", n);
            assert_eq!(spaces.len(), n);
            for (s, keys) in spaces.iter().enumerate() {
                let tag = keys.prefix().trim_start_matches('{').trim_end_matches('}');
                let slot = slot_of(tag.as_bytes());
                assert!(
                    (SLOTS * s / n..SLOTS * (s + 1) / n).contains(&slot),
                    "{n} shards: shard {s} is {} in slot {slot}",
                    keys.prefix()
                );
            }
        }
        assert_eq!(KeySpace::cluster("ai", 1)[0].prefix(), "{ai:0}");
    }

    #[test]
    fn hex_is_spelled_as_the_hex_crate_does() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn a_shard_prefix_puts_every_key_under_one_hash_tag() {
        let keys = KeySpace::new("{ai:3}");
        for key in [
            keys.queue(),
            keys.dedup("t", "h"),
            keys.event_id("t", "e"),
            keys.invalid(),
        ] {
            assert!(key.starts_with("{ai:3}:"), "{key}");
        }
    }
}
