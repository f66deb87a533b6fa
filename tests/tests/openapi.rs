//! End-to-end test of the OpenAPI document: `sift-ingest` serves it, without a key, exactly
//! as checked in (`docs/openapi.json`; unit tests of `sift-ingest-api` keep that copy current
//! and complete).

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::Value;
use sift_e2e::Fixture;

/// The OpenAPI document is served as checked in (`docs/openapi.json`), without a key.
#[tokio::test]
async fn the_openapi_document_is_served_as_checked_in() -> Result<()> {
    let f = Fixture::new(&[]).await?;
    let response = f.http.get(f.ingest.url("/openapi.json")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = response.text().await?;
    let checked_in = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
    )?;
    assert!(
        served == checked_in,
        "the served document differs from docs/openapi.json"
    );
    let value: Value = serde_json::from_str(&served)?;
    assert_eq!(value["openapi"], "3.1.0");
    assert!(value["paths"]["/v1/ai/events/batch"]["post"].is_object());
    f.cleanup().await
}
