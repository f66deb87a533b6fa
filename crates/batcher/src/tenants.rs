//! Tenants and API keys. A key is shown once, at creation; PostgreSQL keeps only its SHA-256,
//! which is also what the ingest API looks up, with the key's scopes (what it may do).

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

pub async fn list_tenants(client: &Client) -> Result<Vec<Tenant>, TenantError> {
    let rows = client
        .query(
            "SELECT t.id, t.name, t.rate_limit_per_sec, count(k.id) FILTER (WHERE k.revoked_at IS NULL)
             FROM tenants t LEFT JOIN api_keys k ON k.tenant_id = t.id
             GROUP BY t.id, t.name, t.rate_limit_per_sec ORDER BY t.id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Tenant {
            id: r.get(0),
            name: r.get(1),
            rate_limit: r.get(2),
            active_keys: r.get(3),
        })
        .collect())
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
