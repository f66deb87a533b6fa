//! Tenants and API keys. A key is shown once, at creation; PostgreSQL keeps only its SHA-256,
//! which is also what the ingest API looks up, with the key's scopes (what it may do). A
//! tenant's own retention of raw events is kept here too (ClickHouse enforces it, see
//! [`crate::retention`]).

use std::collections::BTreeMap;

use rand::RngCore;
use sift_core::Scopes;
use tokio_postgres::Client;

use crate::postgres::PostgresError;

/// Every key starts with this, so a leaked key is easy to recognise and to search for.
pub const KEY_PREFIX: &str = "sk_";

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("tenant id {0:?} is not valid: use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit")]
    InvalidId(String),
    #[error("tenant {0:?} does not exist")]
    NoSuchTenant(String),
    #[error("no active key matches {0:?}")]
    NoSuchKey(String),
    #[error("rate limit {0} is not valid: use 1 to 2147483647 events per second")]
    InvalidRateLimit(u32),
    #[error("retention of {0} days is not valid: use 1 to {max} days", max = crate::retention::MAX_DAYS)]
    InvalidRetention(u32),
    #[error("a key needs at least one scope")]
    NoScopes,
    #[error("key {id} has a scope this version does not know: {source}")]
    UnknownScope {
        id: i64,
        source: sift_core::scope::UnknownScope,
    },
}

impl From<tokio_postgres::Error> for TenantError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(PostgresError::Query(e))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub rate_limit: Option<i32>,
    /// Its own retention of raw events in days (`None`: the global raw TTL).
    pub raw_days: Option<u32>,
    pub active_keys: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: i64,
    pub prefix: String,
    pub revoked: bool,
    pub scopes: Scopes,
}

/// A newly created key: the only moment the key itself exists outside the client.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: i64,
    pub tenant_id: String,
    pub key: String,
    pub scopes: Scopes,
}

pub fn is_valid_tenant_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

/// Creates the tenant if it does not exist; returns whether it was created.
pub async fn create_tenant(
    client: &Client,
    id: &str,
    name: Option<&str>,
    rate_limit: Option<u32>,
) -> Result<bool, TenantError> {
    if !is_valid_tenant_id(id) {
        return Err(TenantError::InvalidId(id.to_owned()));
    }
    let rate = rate_limit.map(to_i32).transpose()?;
    let created = client
        .execute(
            "INSERT INTO tenants (id, name, rate_limit_per_sec) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            &[&id, &name.unwrap_or(id), &rate],
        )
        .await?;
    Ok(created == 1)
}

/// Sets (or with `None` removes) a tenant's events-per-second limit.
pub async fn set_rate_limit(
    client: &Client,
    id: &str,
    rate_limit: Option<u32>,
) -> Result<(), TenantError> {
    let rate = rate_limit.map(to_i32).transpose()?;
    let updated = client
        .execute(
            "UPDATE tenants SET rate_limit_per_sec = $2 WHERE id = $1",
            &[&id, &rate],
        )
        .await?;
    if updated == 0 {
        return Err(TenantError::NoSuchTenant(id.to_owned()));
    }
    Ok(())
}

fn to_i32(limit: u32) -> Result<i32, TenantError> {
    i32::try_from(limit)
        .ok()
        .filter(|n| *n > 0)
        .ok_or(TenantError::InvalidRateLimit(limit))
}

/// Arbitrary constant naming, among PostgreSQL advisory locks, the lock held while the
/// tenants' retention is written to ClickHouse: two writers at once could each read the
/// settings before the other's change, and the last to alter the TTL would drop the other's.
const RETENTION_LOCK: i64 = 0x5f1f_7001;

/// Sets (or with `None` removes) a tenant's own retention of raw events, in days. The caller
/// holds [`lock_retention`] and then writes the settings to ClickHouse.
pub async fn set_raw_retention(
    client: &Client,
    id: &str,
    days: Option<u32>,
) -> Result<(), TenantError> {
    let days = days
        .map(|d| {
            i32::try_from(d)
                .ok()
                .filter(|d| (1..=crate::retention::MAX_DAYS as i32).contains(d))
                .ok_or(TenantError::InvalidRetention(d))
        })
        .transpose()?;
    let updated = client
        .execute(
            "UPDATE tenants SET raw_retention_days = $2 WHERE id = $1",
            &[&id, &days],
        )
        .await?;
    if updated == 0 {
        return Err(TenantError::NoSuchTenant(id.to_owned()));
    }
    Ok(())
}

/// Takes the retention lock on this connection (a session lock, held until
/// [`unlock_retention`] or the connection's end), waiting for another holder.
pub async fn lock_retention(client: &Client) -> Result<(), TenantError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&RETENTION_LOCK])
        .await?;
    Ok(())
}

/// Releases [`lock_retention`].
pub async fn unlock_retention(client: &Client) -> Result<(), TenantError> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK])
        .await?;
    Ok(())
}

/// The tenants with their own retention of raw events, in days. Empty on a database that
/// PostgreSQL migration 5 has not reached yet: no tenant can have one there.
pub async fn raw_retention_days(client: &Client) -> Result<BTreeMap<String, u32>, TenantError> {
    use tokio_postgres::error::SqlState;
    let rows = match client
        .query(
            "SELECT id, raw_retention_days FROM tenants WHERE raw_retention_days IS NOT NULL",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_COLUMN)
                || e.code() == Some(&SqlState::UNDEFINED_TABLE) =>
        {
            return Ok(BTreeMap::new())
        }
        Err(e) => return Err(e.into()),
    };
    rows.iter()
        .map(|r| {
            let days: i32 = r.try_get(1)?;
            Ok((r.try_get(0)?, days.unsigned_abs()))
        })
        .collect()
}

pub async fn list_tenants(client: &Client) -> Result<Vec<Tenant>, TenantError> {
    let rows = client
        .query(
            "SELECT t.id, t.name, t.rate_limit_per_sec, t.raw_retention_days,
                    count(k.id) FILTER (WHERE k.revoked_at IS NULL)
             FROM tenants t LEFT JOIN api_keys k ON k.tenant_id = t.id
             GROUP BY t.id, t.name, t.rate_limit_per_sec, t.raw_retention_days ORDER BY t.id",
            &[],
        )
        .await?;
    rows.iter().map(tenant_of).collect()
}

/// One tenant, as [`list_tenants`] shows it.
pub async fn get_tenant(client: &Client, id: &str) -> Result<Tenant, TenantError> {
    let row = client
        .query_opt(
            "SELECT t.id, t.name, t.rate_limit_per_sec, t.raw_retention_days,
                    count(k.id) FILTER (WHERE k.revoked_at IS NULL)
             FROM tenants t LEFT JOIN api_keys k ON k.tenant_id = t.id
             WHERE t.id = $1
             GROUP BY t.id, t.name, t.rate_limit_per_sec, t.raw_retention_days",
            &[&id],
        )
        .await?
        .ok_or_else(|| TenantError::NoSuchTenant(id.to_owned()))?;
    tenant_of(&row)
}

fn tenant_of(r: &tokio_postgres::Row) -> Result<Tenant, TenantError> {
    let raw_days: Option<i32> = r.try_get(3)?;
    Ok(Tenant {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        rate_limit: r.try_get(2)?,
        raw_days: raw_days.map(i32::unsigned_abs),
        active_keys: r.try_get(4)?,
    })
}

/// Creates a key for `tenant` with `scopes` (at least one).
pub async fn create_key(
    client: &Client,
    tenant: &str,
    scopes: Scopes,
) -> Result<NewKey, TenantError> {
    if scopes.is_empty() {
        return Err(TenantError::NoScopes);
    }
    let exists = client
        .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&tenant])
        .await?
        .is_some();
    if !exists {
        return Err(TenantError::NoSuchTenant(tenant.to_owned()));
    }
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
    let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
    let row = client
        .query_one(
            "INSERT INTO api_keys (tenant_id, key_hash, key_prefix, scopes) VALUES ($1, $2, $3, $4) RETURNING id",
            &[&tenant, &sift_core::hash::sha256_hex(&key), &prefix, &scopes.names()],
        )
        .await?;
    Ok(NewKey {
        id: row.get(0),
        tenant_id: tenant.to_owned(),
        key,
        scopes,
    })
}

/// Revokes by numeric id or by the key itself; returns the revoked key's id.
pub async fn revoke_key(client: &Client, id_or_key: &str) -> Result<i64, TenantError> {
    let row = match id_or_key.parse::<i64>() {
        Ok(id) => {
            client
                .query_opt(
                    "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id",
                    &[&id],
                )
                .await?
        }
        Err(_) => {
            client
                .query_opt(
                    "UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1 AND revoked_at IS NULL RETURNING id",
                    &[&sift_core::hash::sha256_hex(id_or_key)],
                )
                .await?
        }
    };
    let shown = if id_or_key.starts_with(KEY_PREFIX) {
        "the given key"
    } else {
        id_or_key
    };
    row.map(|r| r.get(0))
        .ok_or_else(|| TenantError::NoSuchKey(shown.to_owned()))
}

pub async fn list_keys(client: &Client, tenant: &str) -> Result<Vec<KeyInfo>, TenantError> {
    let rows = client
        .query(
            "SELECT id, key_prefix, revoked_at IS NOT NULL, scopes FROM api_keys WHERE tenant_id = $1 ORDER BY id",
            &[&tenant],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id = r.try_get(0)?;
            let names: Vec<String> = r.try_get(3)?;
            Ok(KeyInfo {
                id,
                prefix: r.try_get(1)?,
                revoked: r.try_get(2)?,
                scopes: Scopes::from_names(&names)
                    .map_err(|source| TenantError::UnknownScope { id, source })?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::is_valid_tenant_id;

    #[test]
    fn tenant_ids_are_slugs() {
        for ok in ["acme", "a", "team-7_x"] {
            assert!(is_valid_tenant_id(ok), "{ok}");
        }
        for bad in ["", "Acme", "-x", "a b", "a|b", "a:b", &"x".repeat(64)] {
            assert!(!is_valid_tenant_id(bad), "{bad}");
        }
    }
}
