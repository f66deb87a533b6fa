//! The erasures' tombstones as the workers check them. An erasure removes what ClickHouse
//! holds of its subject once; events of the subject that were still on their way (in the
//! queue, a processing list, an open stream, a dead letter replayed later, a client's late
//! resend) must not be written after it. So every batcher keeps the recent erasures in memory,
//! refreshed from PostgreSQL every `--erasure-refresh-ms`, and drops a record of an erased
//! subject whose timestamp is before its erasure when it forms a chunk. Events of the subject
//! timed after the erasure are new data and are written.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sift_core::QueueRecord;
use sift_service::erasures::{self, SubjectKind, Tombstone};
use sift_service::outage::Outage;

/// The tombstones of one moment, by tenant.
#[derive(Debug, Default)]
pub struct TombstoneSet {
    by_tenant: HashMap<String, Vec<Tombstone>>,
}

impl TombstoneSet {
    pub fn new(tombstones: Vec<Tombstone>) -> Self {
        let mut by_tenant: HashMap<String, Vec<Tombstone>> = HashMap::new();
        for tombstone in tombstones {
            by_tenant
                .entry(tombstone.tenant_id.clone())
                .or_default()
                .push(tombstone);
        }
        Self { by_tenant }
    }

    /// Whether `record` belongs to an erased subject and was timed before its erasure.
    pub fn covers(&self, record: &QueueRecord<'_>) -> bool {
        let Some(tombstones) = self.by_tenant.get(record.tenant_id.as_ref()) else {
            return false;
        };
        tombstones.iter().any(|t| {
            record.timestamp_ms < t.before_ms
                && match t.subject.kind {
                    SubjectKind::User => record.user_id.as_deref() == Some(&t.subject.value),
                    SubjectKind::Session => record.session_id == t.subject.value,
                }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty()
    }
}

/// The current tombstones, shared by a batcher's workers and replaced whole by
/// [`keep_fresh`] (a reader keeps the set it took for the chunk it forms).
#[derive(Debug, Clone, Default)]
pub struct Tombstones(Arc<RwLock<Arc<TombstoneSet>>>);

impl Tombstones {
    pub fn current(&self) -> Arc<TombstoneSet> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn replace(&self, set: TombstoneSet) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
    }

    /// Reads the tombstones of the last `keep_days` days from PostgreSQL into this set.
    pub async fn refresh(
        &self,
        pool: &deadpool_postgres::Pool,
        keep_days: i32,
    ) -> Result<(), RefreshError> {
        let client = pool.get().await?;
        let tombstones = erasures::tombstones(&client, keep_days).await?;
        self.replace(TombstoneSet::new(tombstones));
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("PostgreSQL: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Erasures(#[from] erasures::ErasureError),
}

/// Refreshes `tombstones` every `every` until the task is aborted. While PostgreSQL cannot be
/// read, the last set read stays in force.
pub async fn keep_fresh(
    tombstones: Tombstones,
    pool: deadpool_postgres::Pool,
    every: Duration,
    keep_days: i32,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Logged as a state change and a periodic count, not a line per second.
    let outage = Outage::new(
        "PostgreSQL",
        "tombstone refreshes",
        "skipped (the last tombstones read stay in force)",
    );
    loop {
        tick.tick().await;
        match tombstones.refresh(&pool, keep_days).await {
            Ok(()) => outage.succeeded(),
            Err(error) => outage.failed(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sift_service::erasures::{Subject, SubjectKind, Tombstone};

    use super::TombstoneSet;

    #[test]
    fn a_tombstone_covers_its_subjects_events_timed_before_it() {
        let set = TombstoneSet::new(vec![
            Tombstone {
                tenant_id: "acme".into(),
                subject: Subject {
                    kind: SubjectKind::User,
                    value: "user-1".into(),
                },
                before_ms: 2_000_000,
            },
            Tombstone {
                tenant_id: "acme".into(),
                subject: Subject {
                    kind: SubjectKind::Session,
                    value: "session-gone".into(),
                },
                before_ms: 2_000_000,
            },
        ]);
        let covered = |tenant: &str, session: &str, user: Option<&str>, at_ms: i64| {
            let mut body = json!({"session_id": session, "prompt_text": "Hi",
                "model_version": "v1.0.0", "latency_ms": 5, "token_count": 3,
                "timestamp": at_ms as f64 / 1000.0});
            if let Some(user) = user {
                body["user_id"] = json!(user);
            }
            let limits = sift_core::Limits {
                max_age_ms: i64::MAX / 2,
                ..sift_core::Limits::default()
            };
            let event = sift_core::validate::validate(&body, &limits, 3_000_000).expect("valid");
            set.covers(&sift_core::QueueRecord::new(tenant, &event, 3_000_000))
        };
        assert!(covered("acme", "session-0001", Some("user-1"), 1_999_999));
        assert!(
            !covered("acme", "session-0001", Some("user-1"), 2_000_000),
            "timed after"
        );
        assert!(!covered("acme", "session-0001", Some("user-2"), 1_000_000));
        assert!(!covered("acme", "session-0001", None, 1_000_000));
        assert!(!covered(
            "globex",
            "session-0001",
            Some("user-1"),
            1_000_000
        ));
        assert!(covered("acme", "session-gone", None, 1_000_000));
        assert!(!covered("globex", "session-gone", None, 1_000_000));
    }
}
