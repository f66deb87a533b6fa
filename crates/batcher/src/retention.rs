//! How long raw events are kept, per tenant: the global raw TTL (`migrate --raw-ttl-days`) or
//! a tenant's own (`tenant set-retention`). PostgreSQL holds each tenant's setting; ClickHouse
//! enforces it with `ai_events`' TTL, one expression that maps each row's tenant to its days:
//!
//! ```text
//! toDateTime(event_time) + toIntervalDay(transform(tenant_id, ['acme', 'beta'], [7, 90], 30))
//! ```
//!
//! A literal `transform` and not a dictionary, because ClickHouse (26.9) refuses `dictGet` in
//! a TTL ("TTL expression cannot contain non-deterministic functions"): the mapping must be
//! in the table's own definition, so a change of retention is an `ALTER TABLE … MODIFY TTL`
//! (metadata only) and the insert path is unchanged. Without tenant settings the TTL is the
//! plain `toDateTime(event_time) + toIntervalDay(30)` it has always been.
//!
//! The same parse serves the readers that must not reach past what the TTL keeps: rollup
//! rebuilds and the session flusher.

use std::collections::BTreeMap;

use clickhouse::Client;

use crate::tenants::is_valid_tenant_id;

/// The longest retention a tenant may have, in days (ten years). `ai_events`' TTL is a
/// `DateTime`, which ends in 2106: a far larger number would wrap around to the past.
pub const MAX_DAYS: u32 = 3650;

/// How long before raw rows leave by their TTL the derived tables stop being computed from
/// them (a session is no longer recomputed, a rollup hour no longer reconciled): longer than
/// any run (a flusher run ends within its period, a backfill step is one query), so that no
/// TTL merge removes rows while they are read.
pub const EXPIRY_MARGIN_SECS: u64 = 3600;

/// The column that each row's retention is counted from.
const TIME: &str = "event_time";

/// Days raw events are kept: the global default and the tenants with their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRetention {
    /// The global raw TTL, for every tenant without its own setting.
    pub default_days: u32,
    /// Tenants with their own retention (sorted, so the TTL's text is always the same).
    pub tenants: BTreeMap<String, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("cannot tell how long ai_events keeps raw events from its TTL: {0}")]
    Unreadable(String),
    #[error(
        "ai_events would rewrite every part to apply a new retention (migration 7 is missing): \
         run `sift-batcher migrate` first"
    )]
    NotMigrated,
}

/// What [`enforce`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    /// The TTL was already this retention (its parts' bounds were recomputed all the same).
    Unchanged,
    /// The TTL was rewritten, and its parts' bounds are being recomputed.
    Changed,
}

/// Makes `ai_events`' TTL enforce `retention`, then has ClickHouse recompute the TTL bounds of
/// the parts already written (`MATERIALIZE TTL`, a mutation in the background). Without that,
/// a part keeps the bounds computed when it was written: a shortened retention would reach
/// its rows only once the old rule expired them. The table's `materialize_ttl_recalculate_only`
/// (migration 7) keeps the mutation to reading `tenant_id` and `event_time`: the expired rows
/// go in ClickHouse's TTL merges, not in a rewrite of every part. `always` recomputes the bounds
/// even if the TTL was in place (a `set-retention` repeated after a failure).
pub async fn enforce(
    client: &Client,
    db: &str,
    retention: &RawRetention,
    always: bool,
) -> Result<Enforced, RetentionError> {
    // On a cluster, the rows and their TTL are in every node's `ai_events_local`.
    let table = crate::cluster::local("ai_events");
    let mut enforced = Enforced::Unchanged;
    for (url, node) in crate::cluster::holders(client) {
        let engine = engine_full(&node, db, &table).await?;
        if !engine.contains("materialize_ttl_recalculate_only = 1") {
            return Err(RetentionError::NotMigrated);
        }
        let changed = RawRetention::from_engine(&engine).ok().flatten().as_ref() != Some(retention);
        if changed {
            node.query(&format!(
                "ALTER TABLE {db}.{table} MODIFY TTL {}",
                retention.ttl()
            ))
            .with_setting("materialize_ttl_after_modify", "0")
            .execute()
            .await?;
            tracing::info!(node = url, ttl = %retention.ttl(), "{table}: TTL changed");
            enforced = Enforced::Changed;
        }
        if changed || always {
            node.query(&format!("ALTER TABLE {db}.{table} MATERIALIZE TTL"))
                .execute()
                .await?;
        }
    }
    Ok(enforced)
}

/// The engine text of `table` (`ai_events`, or `ai_events_local` on a cluster), with its TTL
/// and settings.
async fn engine_full(client: &Client, db: &str, table: &str) -> Result<String, RetentionError> {
    Ok(client
        .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
        .bind(db)
        .bind(table)
        .fetch_one()
        .await?)
}

impl RawRetention {
    /// Every tenant kept `default_days`.
    pub fn uniform(default_days: u32) -> Self {
        Self {
            default_days,
            tenants: BTreeMap::new(),
        }
    }

    /// The days a row of `tenant` is kept.
    pub fn days_of(&self, tenant: &str) -> u32 {
        self.tenants
            .get(tenant)
            .copied()
            .unwrap_or(self.default_days)
    }

    /// The number of days as an expression of the row's `tenant_id`.
    fn days_expr(&self) -> String {
        if self.tenants.is_empty() {
            return self.default_days.to_string();
        }
        let ids: Vec<String> = self.tenants.keys().map(|id| format!("'{id}'")).collect();
        let days: Vec<String> = self.tenants.values().map(u32::to_string).collect();
        format!(
            "transform(tenant_id, [{}], [{}], {})",
            ids.join(", "),
            days.join(", "),
            self.default_days
        )
    }

    /// When a row with the time `column` (and the row's `tenant_id`) leaves the raw events.
    pub fn expiry_of(&self, column: &str) -> String {
        format!("toDateTime({column}) + toIntervalDay({})", self.days_expr())
    }

    /// `ai_events`' TTL, exactly as ClickHouse shows it in `engine_full` (so that `migrate`
    /// recognises a TTL already in place).
    pub fn ttl(&self) -> String {
        self.expiry_of(TIME)
    }

    /// The retention that a table's engine text (`system.tables.engine_full`) enforces;
    /// `None` if the table has no TTL.
    pub fn from_engine(engine: &str) -> Result<Option<Self>, RetentionError> {
        let Some(at) = engine.find(" TTL ") else {
            return Ok(None);
        };
        let unreadable = || RetentionError::Unreadable(engine.to_owned());
        let prefix = format!("toDateTime({TIME}) + toIntervalDay(");
        let rest = engine[at + 5..]
            .strip_prefix(prefix.as_str())
            .ok_or_else(unreadable)?;
        if let Some((days, _)) = rest.split_once(')') {
            if let Ok(days) = days.parse() {
                return Ok(Some(Self::uniform(days)));
            }
        }
        parse_transform(rest).map(Some).ok_or_else(unreadable)
    }

    /// The retention `ai_events` in `db` enforces now (`None`: it keeps raw events forever).
    /// On a cluster, as the first node's `ai_events_local` enforces it (`migrate` and
    /// `tenant set-retention` give every node the same TTL).
    pub async fn current(client: &Client, db: &str) -> Result<Option<Self>, RetentionError> {
        let table = crate::cluster::local("ai_events");
        let node = crate::cluster::holders(client)
            .into_iter()
            .next()
            .map_or_else(|| client.clone(), |(_, node)| node);
        Self::from_engine(&engine_full(&node, db, &table).await?)
    }
}

/// `transform(tenant_id, ['a', 'b'], [7, 90], 30))…` as [`RawRetention::days_expr`] writes it
/// (tenant ids are slugs: no quote or comma to escape).
fn parse_transform(text: &str) -> Option<RawRetention> {
    let rest = text.strip_prefix("transform(tenant_id, [")?;
    let (ids, rest) = rest.split_once("], [")?;
    let (days, rest) = rest.split_once("], ")?;
    let (default_days, _) = rest.split_once(')')?;
    let ids: Vec<&str> = ids
        .split(", ")
        .map(|id| id.strip_prefix('\'')?.strip_suffix('\''))
        .collect::<Option<_>>()?;
    let days: Vec<u32> = days
        .split(", ")
        .map(|d| d.parse().ok())
        .collect::<Option<_>>()?;
    if ids.len() != days.len() || !ids.iter().all(|id| is_valid_tenant_id(id)) {
        return None;
    }
    Some(RawRetention {
        default_days: default_days.parse().ok()?,
        tenants: ids.into_iter().map(str::to_owned).zip(days).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::RawRetention;

    fn engine(ttl: &str) -> String {
        format!(
            "ReplacingMergeTree(ingested_at) PARTITION BY toYYYYMM(event_time) ORDER BY (tenant_id) \
             TTL {ttl} SETTINGS non_replicated_deduplication_window = 100000, \
             materialize_ttl_recalculate_only = 1"
        )
    }

    #[test]
    fn without_tenant_settings_the_ttl_is_the_plain_global_one() {
        let uniform = RawRetention::uniform(30);
        assert_eq!(uniform.ttl(), "toDateTime(event_time) + toIntervalDay(30)");
        assert_eq!(
            RawRetention::from_engine(&engine(&uniform.ttl())).ok(),
            Some(Some(uniform))
        );
    }

    #[test]
    fn tenant_settings_round_trip_through_the_engine_text() {
        let mut retention = RawRetention::uniform(30);
        retention.tenants.insert("zeta".into(), 400);
        retention.tenants.insert("acme".into(), 7);
        assert_eq!(
            retention.ttl(),
            "toDateTime(event_time) + toIntervalDay(transform(tenant_id, ['acme', 'zeta'], [7, 400], 30))"
        );
        let read = RawRetention::from_engine(&engine(&retention.ttl()));
        assert_eq!(read.ok(), Some(Some(retention.clone())));
        assert_eq!(
            (
                retention.days_of("acme"),
                retention.days_of("zeta"),
                retention.days_of("other")
            ),
            (7, 400, 30)
        );
        assert_eq!(
            retention.expiry_of("first_seen"),
            "toDateTime(first_seen) + toIntervalDay(transform(tenant_id, ['acme', 'zeta'], [7, 400], 30))"
        );
    }

    #[test]
    fn a_table_without_ttl_keeps_everything_and_a_foreign_ttl_is_unreadable() {
        assert_eq!(
            RawRetention::from_engine("MergeTree ORDER BY x").ok(),
            Some(None)
        );
        for ttl in [
            "toDateTime(event_time) + toIntervalMonth(1)",
            "toDateTime(event_time) + toIntervalDay(transform(tenant_id, ['a'], [7, 8], 30))",
            "toDateTime(event_time) + toIntervalDay(transform(tenant_id, ['A b'], [7], 30))",
            "toDateTime(event_time) + toIntervalDay(dictGet('d', 'days', tenant_id))",
        ] {
            assert!(
                RawRetention::from_engine(&engine(ttl)).is_err(),
                "{ttl} is not one this code wrote"
            );
        }
    }
}
