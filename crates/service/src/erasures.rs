//! Erasure requests in PostgreSQL (`erasures`), shared by the ingest API, which records and
//! reports them, and the batcher, which carries them out and checks their tombstones. Kept in
//! PostgreSQL so that a request survives a restart of every process, and so that any batcher
//! can take one over from another that stopped (a claim is a row lock, not a lease in memory).

use std::fmt;

use tokio_postgres::{Client, Row};

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the erasures table holds an unknown {what}: {value}")]
    Unknown { what: &'static str, value: String },
}

/// What an erasure removes: every event of one end user, or of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    User,
    Session,
}

impl SubjectKind {
    /// The event field (and `ai_events` column) that names the subject.
    pub fn field(self) -> &'static str {
        match self {
            Self::User => "user_id",
            Self::Session => "session_id",
        }
    }

    /// The kind a field of that name gives (`user_id`, `session_id`).
    pub fn of_field(name: &str) -> Option<Self> {
        match name {
            "user_id" => Some(Self::User),
            "session_id" => Some(Self::Session),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Self, ErasureError> {
        Self::of_field(text).ok_or_else(|| ErasureError::Unknown {
            what: "subject kind",
            value: text.to_owned(),
        })
    }
}

/// The subject of an erasure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: SubjectKind,
    pub value: String,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind.field(), self.value)
    }
}

/// Where an erasure stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Running,
    Done,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
        }
    }

    fn parse(text: &str) -> Result<Self, ErasureError> {
        match text {
            "pending" => Ok(Self::Pending),
            "running" => Ok(Self::Running),
            "done" => Ok(Self::Done),
            other => Err(ErasureError::Unknown {
                what: "status",
                value: other.to_owned(),
            }),
        }
    }
}

/// One erasure request as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Erasure {
    pub id: i64,
    pub tenant_id: String,
    pub subject: Subject,
    pub status: Status,
    /// Epoch milliseconds. Events of the subject with a timestamp before it are removed.
    pub requested_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub done_at_ms: Option<i64>,
    pub attempts: i32,
    /// What was removed (a JSON object), once done.
    pub removed: Option<String>,
    pub last_error: Option<String>,
}

/// The columns every query returns, in [`Erasure`]'s order (times as epoch milliseconds).
const COLUMNS: &str = "id, tenant_id, subject_kind, subject, status, \
    (extract(epoch FROM requested_at) * 1000)::BIGINT, \
    (extract(epoch FROM started_at) * 1000)::BIGINT, \
    (extract(epoch FROM done_at) * 1000)::BIGINT, attempts, removed, last_error";

fn erasure(row: &Row) -> Result<Erasure, ErasureError> {
    Ok(Erasure {
        id: row.try_get(0)?,
        tenant_id: row.try_get(1)?,
        subject: Subject {
            kind: SubjectKind::parse(row.try_get(2)?)?,
            value: row.try_get(3)?,
        },
        status: Status::parse(row.try_get(4)?)?,
        requested_at_ms: row.try_get(5)?,
        started_at_ms: row.try_get(6)?,
        done_at_ms: row.try_get(7)?,
        attempts: row.try_get(8)?,
        removed: row.try_get(9)?,
        last_error: row.try_get(10)?,
    })
}

/// Records a request to erase `subject` of `tenant`, pending.
pub async fn create(
    client: &Client,
    tenant: &str,
    subject: &Subject,
) -> Result<Erasure, ErasureError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO erasures (tenant_id, subject_kind, subject) VALUES ($1, $2, $3) \
                 RETURNING {COLUMNS}"
            ),
            &[&tenant, &subject.kind.field(), &subject.value],
        )
        .await?;
    erasure(&row)
}

/// The erasure `id` of `tenant` (None: no such erasure, or another tenant's).
pub async fn get(client: &Client, tenant: &str, id: i64) -> Result<Option<Erasure>, ErasureError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM erasures WHERE id = $1 AND tenant_id = $2"),
            &[&id, &tenant],
        )
        .await?;
    row.as_ref().map(erasure).transpose()
}

/// Takes the oldest erasure that is pending, or running without a heartbeat for
/// `stale_secs` (its batcher stopped), for `worker`: marks it running. None: nothing to do.
pub async fn claim_next(
    client: &Client,
    worker: &str,
    stale_secs: i64,
) -> Result<Option<Erasure>, ErasureError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE erasures SET status = 'running', worker = $1, attempts = attempts + 1, \
                     started_at = coalesce(started_at, now()), heartbeat_at = now() \
                 WHERE id = (SELECT id FROM erasures WHERE status = 'pending' \
                     OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => $2::BIGINT)) \
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            ),
            &[&worker, &stale_secs],
        )
        .await?;
    row.as_ref().map(erasure).transpose()
}

/// Takes erasure `id` for `worker`, whatever its state but done (an operator's `erase`).
pub async fn claim(
    client: &Client,
    id: i64,
    worker: &str,
) -> Result<Option<Erasure>, ErasureError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE erasures SET status = 'running', worker = $1, attempts = attempts + 1, \
                     started_at = coalesce(started_at, now()), heartbeat_at = now() \
                 WHERE id = $2 AND status <> 'done' RETURNING {COLUMNS}"
            ),
            &[&worker, &id],
        )
        .await?;
    row.as_ref().map(erasure).transpose()
}

/// Tells that `worker` is still carrying out erasure `id`.
pub async fn heartbeat(client: &Client, id: i64, worker: &str) -> Result<(), ErasureError> {
    client
        .execute(
            "UPDATE erasures SET heartbeat_at = now() WHERE id = $1 AND worker = $2",
            &[&id, &worker],
        )
        .await?;
    Ok(())
}

/// Marks erasure `id` done, with what was removed (a JSON object).
pub async fn finish(client: &Client, id: i64, removed: &str) -> Result<(), ErasureError> {
    client
        .execute(
            "UPDATE erasures SET status = 'done', done_at = now(), removed = $2, last_error = NULL \
             WHERE id = $1",
            &[&id, &removed],
        )
        .await?;
    Ok(())
}

/// Puts erasure `id` back to pending with the error that stopped it: it is tried again.
pub async fn fail(client: &Client, id: i64, error: &str) -> Result<(), ErasureError> {
    client
        .execute(
            "UPDATE erasures SET status = 'pending', worker = NULL, last_error = $2 WHERE id = $1",
            &[&id, &error],
        )
        .await?;
    Ok(())
}

/// One tombstone: events of `subject` of `tenant_id` with a timestamp before `before_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub tenant_id: String,
    pub subject: Subject,
    pub before_ms: i64,
}

/// The tombstones of every erasure requested in the last `keep_days` days.
pub async fn tombstones(client: &Client, keep_days: i32) -> Result<Vec<Tombstone>, ErasureError> {
    let rows = client
        .query(
            "SELECT tenant_id, subject_kind, subject, \
                 (extract(epoch FROM requested_at) * 1000)::BIGINT FROM erasures \
             WHERE requested_at > now() - make_interval(days => $1)",
            &[&keep_days],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Tombstone {
                tenant_id: row.try_get(0)?,
                subject: Subject {
                    kind: SubjectKind::parse(row.try_get(1)?)?,
                    value: row.try_get(2)?,
                },
                before_ms: row.try_get(3)?,
            })
        })
        .collect()
}
