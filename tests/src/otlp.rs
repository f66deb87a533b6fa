//! OTLP requests for the tests and the benchmark of `POST /v1/traces`: attribute values built
//! with the `opentelemetry-proto` messages, a request posted as an exporter posts it, and the
//! answers read back (JSON, or the `google.rpc.Status` a protobuf client gets on an error).

use anyhow::Result;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Any, AnyValue, KeyValue};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

use crate::fixtures::gzip;

/// One span or resource attribute.
pub fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A string attribute value.
pub fn text(value: &str) -> Any {
    Any::StringValue(value.into())
}

/// Posts `body` to `url` (a `/v1/traces`), gzipped or not; the status, headers and raw body.
pub async fn send(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    content_type: &str,
    gzipped: bool,
    body: Vec<u8>,
) -> Result<(StatusCode, HeaderMap, Vec<u8>)> {
    let mut request = http
        .post(url)
        .header("content-type", content_type)
        .body(if gzipped { gzip(&body) } else { body });
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    Ok((status, headers, response.bytes().await?.to_vec()))
}

/// A body as JSON, or as a JSON string of its text when it is not JSON.
pub fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// `google.rpc.Status` as the server writes it (code 1, message 2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}
