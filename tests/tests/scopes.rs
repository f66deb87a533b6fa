//! End-to-end tests of API key scopes: every route against keys with and without the scope it
//! needs (403 with its body, checked before the body or the parameters are read), keys that
//! predate the scopes migration, and `key create --scope` / `key list`. Real binaries, real
//! Redis, PostgreSQL and ClickHouse.

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_e2e::{event, redis_connection, Database, Ingest, World};

/// A route and what a key with its scope gets.
struct Route {
    method: &'static str,
    path: &'static str,
    scope: &'static str,
    allowed: StatusCode,
}

const ROUTES: [Route; 8] = [
    Route {
        method: "POST",
        path: "/v1/ai/events",
        scope: "ingest",
        allowed: StatusCode::ACCEPTED,
    },
    Route {
        method: "POST",
        path: "/v1/traces",
        scope: "ingest",
        allowed: StatusCode::OK,
    },
    Route {
        method: "POST",
        path: "/v1/ai/events/batch",
        scope: "ingest",
        allowed: StatusCode::ACCEPTED,
    },
    Route {
        method: "GET",
        path: "/v1/ai/stats/hourly",
        scope: "read",
        allowed: StatusCode::OK,
    },
    Route {
        method: "GET",
        path: "/v1/ai/stats/dedup",
        scope: "read",
        allowed: StatusCode::OK,
    },
    // No session has been computed: a key that may read gets past the scope check to 404.
    Route {
        method: "GET",
        path: "/v1/ai/sessions/scopes-session",
        scope: "read",
        allowed: StatusCode::NOT_FOUND,
    },
    Route {
        method: "POST",
        path: "/v1/ai/erasures",
        scope: "admin",
        allowed: StatusCode::ACCEPTED,
    },
    // No such erasure: a key that may see erasures gets past the scope check to 404.
    Route {
        method: "GET",
        path: "/v1/ai/erasures/999999",
        scope: "admin",
        allowed: StatusCode::NOT_FOUND,
    },
];

fn forbidden(scope: &str) -> Value {
    json!({
        "error": "forbidden",
        "message": format!("this API key lacks the {scope} scope; create one with --scope {scope}"),
    })
}

/// Sends `route` with `key`; a POST carries a valid event (or a batch of one) unique to `tag`.
async fn call(
    http: &reqwest::Client,
    ingest: &Ingest,
    route: &Route,
    key: Option<&str>,
    tag: &str,
) -> Result<(StatusCode, Value)> {
    let mut request = match route.method {
        "POST" => {
            let one = event(&format!("scopes-{tag}"), &format!("prompt for {tag}"));
            let body = if route.path.ends_with("/batch") {
                json!([one])
            } else if route.path == "/v1/traces" {
                genai_export(tag)
            } else if route.path == "/v1/ai/erasures" {
                json!({"user_id": format!("scopes-{tag}")})
            } else {
                one
            };
            http.post(ingest.url(route.path))
                .header("content-type", "application/json")
                .body(body.to_string())
        }
        _ => http.get(ingest.url(route.path)),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// An OTLP JSON export of one GenAI span in session `scopes-{tag}`, its ids from the tag.
fn genai_export(tag: &str) -> Value {
    let ids = sift_core::hash::sha256_hex(tag);
    let start = sift_core::clock::now_ms() * 1_000_000;
    let attribute = |key: &str, value: Value| json!({"key": key, "value": value});
    json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": &ids[..32], "spanId": &ids[32..48], "name": "chat",
        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 1_000_000).to_string(),
        "attributes": [
            attribute("gen_ai.operation.name", json!({"stringValue": "chat"})),
            attribute("gen_ai.request.model", json!({"stringValue": "gpt-4o-mini"})),
            attribute("gen_ai.conversation.id", json!({"stringValue": format!("scopes-{tag}")})),
        ],
    }]}]}]})
}

#[tokio::test]
async fn every_route_needs_its_scope_and_answers_403_without_it() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    // (name, scopes the key was created with, scopes it has)
    let specs: [(&str, &[&str], &[&str]); 6] = [
        ("default", &[], &["ingest", "read"]),
        ("ingest", &["--scope", "ingest"], &["ingest"]),
        ("read", &["--scope", "read"], &["read"]),
        ("admin", &["--scope", "admin"], &["admin"]),
        (
            "read-admin",
            &["--scope", "read", "--scope", "admin"],
            &["read", "admin"],
        ),
        (
            "all",
            &["--scope", "ingest,read,admin"],
            &["ingest", "read", "admin"],
        ),
    ];
    let mut keys = Vec::new();
    for (name, args, has) in specs {
        let key = if name == "default" {
            w.keys["acme"].clone()
        } else {
            w.db.key("acme", args).await?
        };
        keys.push((name, key, has));
    }

    let mut accepted = 0;
    for (r, route) in ROUTES.iter().enumerate() {
        for (name, key, has) in &keys {
            let tag = format!("{name}-{r}");
            let (status, body) = call(&w.http, &w.ingest, route, Some(key), &tag).await?;
            if has.contains(&route.scope) {
                assert_eq!(status, route.allowed, "{name} on {}: {body}", route.path);
                match route.path {
                    "/v1/ai/events" => {
                        assert_eq!(body["status"], "accepted", "{name}: {body}");
                        accepted += 1;
                    }
                    "/v1/ai/events/batch" => {
                        assert_eq!(body["accepted"], 1, "{name}: {body}");
                        accepted += 1;
                    }
                    // An ExportTraceServiceResponse without partial success: all taken.
                    "/v1/traces" => {
                        assert_eq!(body, json!({}), "{name}");
                        accepted += 1;
                    }
                    "/v1/ai/stats/hourly" | "/v1/ai/stats/dedup" => {
                        assert_eq!(body["tenant"], "acme", "{name}: {body}")
                    }
                    "/v1/ai/erasures" => {
                        assert_eq!(body["status"], "pending", "{name}: {body}");
                        assert_eq!(body["subject"]["user_id"], format!("scopes-{tag}"));
                    }
                    "/v1/ai/erasures/999999" => assert_eq!(
                        body,
                        json!({"error": "not_found", "message": "no erasure 999999"}),
                        "{name}"
                    ),
                    _ => assert_eq!(
                        body,
                        json!({"error": "not_found",
                               "message": "no metrics for session \"scopes-session\" (yet: the flusher runs every minute)"}),
                        "{name}"
                    ),
                }
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{name} on {}: {body}",
                    route.path
                );
                assert_eq!(body, forbidden(route.scope), "{name} on {}", route.path);
            }
        }
        // A missing or unknown key is still 401, before any scope is looked at.
        let (status, body) = call(&w.http, &w.ingest, route, None, "none").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", route.path);
        assert_eq!(
            body,
            json!({"error": "unauthorized", "message": "missing API key: send Authorization: Bearer <key>"})
        );
        let (status, body) = call(&w.http, &w.ingest, route, Some("sk_unknown"), "bad").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", route.path);
        assert_eq!(body["message"], "the API key is not valid or was revoked");
    }
    // Default, ingest and all: three ingest routes each.
    assert_eq!(accepted, 9);

    // Only the allowed requests reached the queue: one element per request.
    let mut conn = redis_connection(&w.redis).await?;
    let queued: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(w.key_spaces()[0].queue())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let sessions: Vec<String> = queued
        .iter()
        .flat_map(|element| sift_core::records_of(element).expect("a queue element"))
        .map(|record| {
            sift_core::QueueRecord::decode(record)
                .expect("a queue record")
                .session_id
                .to_string()
        })
        .collect();
    assert_eq!(sessions.len(), 9, "{sessions:?}");
    assert!(
        sessions
            .iter()
            .all(|s| ["scopes-default", "scopes-ingest", "scopes-all"]
                .iter()
                .any(|p| s.starts_with(p))),
        "{sessions:?}"
    );

    // `key list` shows each key's scopes, in creation order.
    let listing = w.db.batcher(&["key", "list", "acme"]).await?;
    let scopes: Vec<&str> = listing
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(3))
        .collect();
    assert_eq!(
        scopes,
        [
            "ingest,read",
            "ingest",
            "read",
            "admin",
            "read,admin",
            "ingest,read,admin"
        ],
        "{listing}"
    );
    w.cleanup().await
}

/// The scope is checked before the body and the parameters: a key without it learns nothing
/// about its request's content (403, never 400, 413 or 415).
#[tokio::test]
async fn the_scope_is_checked_before_the_body_or_the_parameters() -> Result<()> {
    let w = World::new(&["acme"]).await?;
    let read = w.db.key("acme", &["--scope", "read"]).await?;
    let ingest = w.db.key("acme", &["--scope", "ingest"]).await?;

    let response = w
        .http
        .post(w.ingest.url("/v1/ai/events"))
        .bearer_auth(&read)
        .header("content-type", "text/plain")
        .body("not json")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.json::<Value>().await?, forbidden("ingest"));

    let response = w
        .http
        .post(w.ingest.url("/v1/ai/events/batch"))
        .bearer_auth(&read)
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body("[{")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.json::<Value>().await?, forbidden("ingest"));

    for path in [
        "/v1/ai/stats/hourly?from=yesterday",
        "/v1/ai/stats/dedup?model_version=v1.0.0",
        "/v1/ai/stats/hourly?unknown=1",
    ] {
        let response = w
            .http
            .get(w.ingest.url(path))
            .bearer_auth(&ingest)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(response.json::<Value>().await?, forbidden("read"), "{path}");
    }
    // The same requests with the scope get the answer about their content.
    let response = w
        .http
        .get(w.ingest.url("/v1/ai/stats/hourly?unknown=1"))
        .bearer_auth(&read)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = w
        .http
        .post(w.ingest.url("/v1/ai/events"))
        .bearer_auth(&ingest)
        .header("content-type", "text/plain")
        .body("not json")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    w.cleanup().await
}

/// A key stored before migration 4 (no `scopes` column) gets ingest and read from the
/// column's default, and works as it did.
#[tokio::test]
async fn a_key_created_before_the_scopes_migration_keeps_ingest_and_read() -> Result<()> {
    let db = Database::empty().await?;
    let client = db.connect().await?;
    // The schema as the previous release left it: migrations 1 to 3, recorded as applied.
    client
        .batch_execute(
            "CREATE TABLE sift_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
             checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    for migration in sift_batcher::migrate::POSTGRES
        .iter()
        .filter(|m| m.version < 4)
    {
        client.batch_execute(migration.sql).await?;
        client
            .execute(
                "INSERT INTO sift_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[
                    &migration.version,
                    &migration.name,
                    &sift_core::hash::sha256_hex(migration.sql),
                ],
            )
            .await?;
    }
    // A key inserted as the previous release's `key create` did.
    let key = "sk_0123456789abcdef0123456789abcdef0123456789abcdef";
    client
        .batch_execute(&format!(
            "INSERT INTO tenants (id, name) VALUES ('old', 'old');
             INSERT INTO api_keys (tenant_id, key_hash, key_prefix)
             VALUES ('old', '{}', 'sk_012345')",
            sift_core::hash::sha256_hex(key)
        ))
        .await?;

    let out = db.batcher(&["migrate", "--target", "postgres"]).await?;
    assert!(out.contains("postgres:"), "{out}");
    let scopes: Vec<String> = client
        .query_one(
            "SELECT scopes FROM api_keys WHERE key_prefix = 'sk_012345'",
            &[],
        )
        .await?
        .try_get(0)?;
    assert_eq!(scopes, ["ingest", "read"]);
    let listing = db.batcher(&["key", "list", "old"]).await?;
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["1", "sk_012345", "active", "ingest,read"]),
        "{listing}"
    );

    let ingest = Ingest::start(&db, &sift_e2e::redis_url(), &[]).await?;
    let http = reqwest::Client::new();
    let response = http
        .post(ingest.url("/v1/ai/events"))
        .bearer_auth(key)
        .json(&event("scopes-old-key", "Hello from an old key"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().await?["status"], "accepted");
    let response = http
        .get(ingest.url("/v1/ai/stats/dedup"))
        .bearer_auth(key)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await?;
    assert_eq!(
        (&body["tenant"], &body["received"]),
        (&json!("old"), &json!(1))
    );

    // The CHECK keeps unknown and empty scope lists out.
    for bad in ["{write}", "{}", "{read,NULL}"] {
        let error = client
            .execute(
                "UPDATE api_keys SET scopes = $1::text::text[] WHERE key_prefix = 'sk_012345'",
                &[&bad],
            )
            .await
            .expect_err(bad);
        let message = error.as_db_error().context("a database error")?.message();
        assert!(
            message.contains("api_keys_scopes_known"),
            "{bad}: {message}"
        );
    }
    sift_e2e::delete_prefix(&sift_e2e::redis_url(), &ingest.key_prefix).await
}
