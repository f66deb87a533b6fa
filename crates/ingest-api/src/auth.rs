//! Authentication: `Authorization: Bearer <key>` to a tenant and the key's scopes, through a
//! short-lived cache. Each route asks for the scope it needs ([`KeyCache::authorize`]): a
//! missing or unknown key is 401, a known key without the scope 403.
//!
//! PostgreSQL keeps SHA-256 hashes of keys. Each hash seen is looked up at most once per
//! refresh interval, answers (including "no such key") are cached for that long, so a revoked
//! key stops working within one interval and a flood of bad keys does not reach PostgreSQL.
//! When PostgreSQL is down, a stale answer is still used rather than refusing known clients;
//! the outage is logged when it begins and ends, and counted every 10 s, not per request.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use actix_web::http::header::AUTHORIZATION;
use actix_web::HttpRequest;
use deadpool_postgres::Pool;
use sift_core::{Scope, Scopes};
use sift_service::outage::Outage;

use crate::error::ApiError;

/// At most this many cached answers; past it, the cache is cleared (bad keys cannot grow it).
const MAX_ENTRIES: usize = 100_000;

pub struct KeyCache {
    pool: Pool,
    ttl: Duration,
    entries: RwLock<HashMap<String, Entry>>,
    /// PostgreSQL, as key lookups meet it.
    postgres: Outage,
}

#[derive(Clone)]
struct Entry {
    caller: Option<Caller>,
    fetched: Instant,
}

/// Who a valid key belongs to, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    /// Events per second the tenant may send (None: no limit).
    pub rate_limit: Option<u32>,
    pub scopes: Scopes,
}

impl Caller {
    /// Ok if the key has `scope`, else 403 naming it.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }
}

impl KeyCache {
    pub fn new(pool: Pool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            entries: RwLock::new(HashMap::new()),
            postgres: Outage::new(
                "PostgreSQL",
                "requests",
                "answered from the cached keys (503 for keys not seen before)",
            ),
        }
    }

    /// The caller, if its key has `scope`: 401 for a missing or unknown key, 403 for a key
    /// without the scope. Routes call it before reading the body or the parameters.
    pub async fn authorize(&self, request: &HttpRequest, scope: Scope) -> Result<Caller, ApiError> {
        let caller = self.caller(request).await?;
        caller.require(scope)?;
        Ok(caller)
    }

    /// The tenant of the request's key, its limits and scopes, or 401.
    pub async fn caller(&self, request: &HttpRequest) -> Result<Caller, ApiError> {
        let key = bearer_key(request).ok_or(ApiError::Unauthorized(
            "missing API key: send Authorization: Bearer <key>",
        ))?;
        let hash = sift_core::hash::sha256_hex(key);
        self.tenant_of(&hash).await?.ok_or(ApiError::Unauthorized(
            "the API key is not valid or was revoked",
        ))
    }

    async fn tenant_of(&self, key_hash: &str) -> Result<Option<Caller>, ApiError> {
        let cached = self.read().get(key_hash).cloned();
        if let Some(entry) = &cached {
            if entry.fetched.elapsed() < self.ttl {
                return Ok(entry.caller.clone());
            }
        }
        match self.fetch(key_hash).await {
            Ok(tenant) => {
                self.postgres.succeeded();
                let mut entries = self
                    .entries
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(
                    key_hash.to_owned(),
                    Entry {
                        caller: tenant.clone(),
                        fetched: Instant::now(),
                    },
                );
                Ok(tenant)
            }
            Err(error) => {
                self.postgres.failed(&error);
                match cached {
                    Some(entry) => Ok(entry.caller),
                    None => Err(error),
                }
            }
        }
    }

    async fn fetch(&self, key_hash: &str) -> Result<Option<Caller>, ApiError> {
        let unavailable =
            |e: deadpool_postgres::tokio_postgres::Error| ApiError::PostgresUnavailable(e.into());
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| ApiError::PostgresUnavailable(e.into()))?;
        let row = client
            .query_opt(
                "SELECT k.tenant_id, t.rate_limit_per_sec, k.scopes FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
                &[&key_hash],
            )
            .await
            .map_err(&unavailable)?;
        // try_get: a schema that drifted is an error to report, not a panic.
        row.map(|r| {
            let names: Vec<String> = r.try_get(2).map_err(&unavailable)?;
            Ok(Caller {
                tenant: r.try_get(0).map_err(&unavailable)?,
                rate_limit: r
                    .try_get::<_, Option<i32>>(1)
                    .map_err(&unavailable)?
                    .and_then(|n| u32::try_from(n).ok()),
                // The table's CHECK keeps unknown names out; should one appear (a newer
                // schema), the key gets the scopes this version knows, never more.
                scopes: names.iter().filter_map(|n| n.parse().ok()).collect(),
            })
        })
        .transpose()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn bearer_key(request: &HttpRequest) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_passes_only_with_the_scope_asked_for() {
        let caller = |names: &[&str]| Caller {
            tenant: "acme".into(),
            rate_limit: None,
            scopes: Scopes::from_names(names).expect("known scopes"),
        };
        let default = Caller {
            scopes: Scopes::DEFAULT,
            ..caller(&[])
        };
        assert!(default.require(Scope::Ingest).is_ok());
        assert!(default.require(Scope::Read).is_ok());
        assert!(matches!(
            default.require(Scope::Admin),
            Err(ApiError::Forbidden(Scope::Admin))
        ));
        // Admin implies nothing else.
        let admin = caller(&["admin"]);
        assert!(admin.require(Scope::Admin).is_ok());
        for scope in [Scope::Ingest, Scope::Read] {
            assert!(matches!(admin.require(scope), Err(ApiError::Forbidden(s)) if s == scope));
        }
        assert!(matches!(
            caller(&["ingest"]).require(Scope::Read),
            Err(ApiError::Forbidden(Scope::Read))
        ));
        assert!(matches!(
            caller(&["read"]).require(Scope::Ingest),
            Err(ApiError::Forbidden(Scope::Ingest))
        ));
    }
}
