//! Reading request bodies: content type, size limits, gzip, JSON and NDJSON.
//! Every event object is parsed by [`crate::json::Checked`], so one that repeats a key is
//! refused on its own (the copies disagree on what the event is), never read as its last copy.
//!
//! sift decodes gzip itself (not the framework) so that the decompressed size is bounded
//! exactly: a small gzip bomb is answered 413 after reading at most the limit plus one byte.

use std::io::Read;

use actix_web::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::ApiError;
use crate::json::Checked;

#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Bytes on the wire (compressed or not).
    pub max_body_bytes: usize,
    /// Bytes after gzip decoding.
    pub max_decompressed_bytes: usize,
    pub max_batch_events: usize,
}

/// One item of a batch: a parsed event, a line of NDJSON that is not JSON (kept raw), or an
/// event object that repeats a key (kept raw, with the key's path).
pub enum Item {
    Event(Value),
    Unparseable { raw: String, reason: String },
    DuplicateKey { raw: String, key: String },
}

impl Item {
    /// The item of one event's parsed text: `raw` is called for its text only when the event
    /// is refused.
    fn of(checked: Checked, raw: impl FnOnce() -> String) -> Self {
        match checked.duplicate {
            None => Item::Event(checked.value),
            Some(key) => Item::DuplicateKey { raw: raw(), key },
        }
    }
}

/// Reads the whole body within the limits and decodes `Content-Encoding: gzip`.
pub async fn read(
    request: &HttpRequest,
    mut payload: web::Payload,
    limits: &BodyLimits,
) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("the body exceeds {} bytes", limits.max_body_bytes));
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(8 * 1024));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the body failed: {e}")))?;
        if body.len() + chunk.len() > limits.max_body_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let encoding = request
        .headers()
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok(body.freeze()),
        Some("gzip" | "x-gzip") => gunzip(&body, limits.max_decompressed_bytes),
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {other:?} is not supported; use gzip or none"
        ))),
    }
}

/// Decodes every member of a gzip stream (shippers that compress each flush send several).
fn gunzip(compressed: &[u8], max: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(max));
    flate2::read::MultiGzDecoder::new(compressed)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadRequest(format!("gzip body cannot be decoded: {e}")))?;
    if out.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "the decompressed body exceeds {max} bytes"
        )));
    }
    Ok(out.into())
}

/// The media type without parameters, lowercased (`application/json; charset=utf-8` → `application/json`).
pub(crate) fn media_type(request: &HttpRequest) -> Option<String> {
    let value = request.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Checks that the single-event endpoint got JSON.
pub fn expect_json(request: &HttpRequest) -> Result<(), ApiError> {
    match media_type(request).as_deref() {
        Some("application/json") => Ok(()),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/json (got {})",
            other.unwrap_or("none")
        ))),
    }
}

/// Parses a single event's body.
pub fn parse_event(body: &[u8]) -> Result<Item, ApiError> {
    let checked: Checked = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    Ok(Item::of(checked, || {
        String::from_utf8_lossy(body).into_owned()
    }))
}

/// Parses a batch: a JSON array (`application/json`) or one event per line (NDJSON).
pub fn parse_batch(
    request: &HttpRequest,
    body: &[u8],
    limits: &BodyLimits,
) -> Result<Vec<Item>, ApiError> {
    let items = match media_type(request).as_deref() {
        Some("application/json") => {
            let events: Vec<Checked> = serde_json::from_slice(body).map_err(|e| {
                // Any value parses as a Checked: a data error is the body not being an array.
                if e.classify() == serde_json::error::Category::Data {
                    ApiError::BadRequest("a JSON batch must be an array of events".into())
                } else {
                    ApiError::BadRequest(format!("the body is not JSON: {e}"))
                }
            })?;
            check_count(events.len(), limits)?;
            // The text of each event, read again only when one of them is refused.
            let mut texts: Option<Vec<&RawValue>> = None;
            events
                .into_iter()
                .enumerate()
                .map(|(i, checked)| {
                    Item::of(checked, || {
                        let texts = texts.get_or_insert_with(|| {
                            serde_json::from_slice(body).unwrap_or_default()
                        });
                        texts
                            .get(i)
                            .map_or_else(String::new, |t| t.get().to_owned())
                    })
                })
                .collect()
        }
        Some(
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines",
        ) => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            check_count(lines.len(), limits)?;
            lines
                .into_iter()
                .map(|line| match serde_json::from_str(line) {
                    Ok(checked) => Item::of(checked, || line.to_owned()),
                    Err(e) => Item::Unparseable {
                        raw: line.to_owned(),
                        reason: format!("the line is not JSON: {e}"),
                    },
                })
                .collect()
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type must be application/json (an array) or application/x-ndjson (got {})",
                other.unwrap_or("none")
            )))
        }
    };
    Ok(items)
}

fn check_count(count: usize, limits: &BodyLimits) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::BadRequest("the batch holds no events".into()));
    }
    if count > limits.max_batch_events {
        return Err(ApiError::PayloadTooLarge(format!(
            "the batch holds {count} events; at most {} are allowed",
            limits.max_batch_events
        )));
    }
    Ok(())
}
