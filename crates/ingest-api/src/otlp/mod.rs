//! OTLP/HTTP trace intake, the protocol side: which encoding a request uses, decoding its
//! `ExportTraceServiceRequest`, and encoding the answers an exporter reads (the
//! `ExportTraceServiceResponse`, and `google.rpc.Status` for errors to a protobuf client).
//! The messages and their JSON mapping are `opentelemetry-proto`'s (prost and serde), not ours:
//! a hand-written decoder would drift from the spec. How a span becomes an event is [`mapping`].

pub mod mapping;

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

use crate::error::ApiError;

/// The two encodings of OTLP/HTTP, named by the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// The encoding of a media type (without parameters, lowercased); `None` for any other.
    pub fn of_media_type(media_type: Option<&str>) -> Option<Self> {
        match media_type? {
            "application/x-protobuf" | "application/protobuf" => Some(Self::Protobuf),
            "application/json" => Some(Self::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

/// A body that is not an `ExportTraceServiceRequest` in its declared encoding.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a protobuf ExportTraceServiceRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not an OTLP JSON ExportTraceServiceRequest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not an OTLP JSON ExportTraceServiceRequest: it must be a JSON object")]
    NotAnObject,
}

/// Decodes a request body (already gunzipped) in `encoding`.
///
/// OTLP JSON is the protobuf JSON mapping with OTLP's exceptions: trace and span ids as hex
/// strings, enums as numbers, lowerCamelCase keys, 64-bit integers as strings or numbers.
/// `opentelemetry-proto`'s serde reads exactly that (checked by the tests below); unknown
/// fields are ignored, as the spec asks of receivers. Two gaps are closed here:
/// - a few of the crate's messages require fields that the JSON mapping lets a writer leave
///   out when empty (`"arrayValue": {}` for an empty array, as Go's protojson writes it; a
///   `KeyValue` without `key`; an `EntityRef`'s lists). A body that fails to decode is read
///   again with those fields filled in ([`complete`]), so the usual body is parsed once;
/// - serde would also read a JSON array as the message's fields in order, which no OTLP
///   client sends: it is refused.
pub fn decode(encoding: Encoding, body: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    Ok(match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body)?,
        Encoding::Json => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            if first.is_some_and(|b| *b != b'{') {
                return Err(DecodeError::NotAnObject);
            }
            match serde_json::from_slice(body) {
                Ok(request) => request,
                Err(error) => {
                    // Not JSON, or still wrong once completed: the first error, which has
                    // the position.
                    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
                        return Err(error.into());
                    };
                    complete(&mut value, "");
                    serde_json::from_value(value).map_err(|_| error)?
                }
            }
        }
    })
}

/// A field and its empty value.
type EmptyField = (&'static str, fn() -> serde_json::Value);

/// Fills in the empty fields that a JSON writer may leave out and `opentelemetry-proto`'s serde
/// requires, by the name of the field that holds each object (`within`).
fn complete(value: &mut serde_json::Value, within: &str) {
    use serde_json::Value;
    let defaults: &[EmptyField] = match within {
        // ArrayValue and KeyValueList.
        "arrayValue" | "kvlistValue" => &[("values", || Value::Array(Vec::new()))],
        // KeyValue (in every attribute list and in a KeyValueList).
        "attributes" | "kvlistValue.values" => &[("key", || Value::String(String::new()))],
        "entityRefs" => &[
            ("schemaUrl", || Value::String(String::new())),
            ("type", || Value::String(String::new())),
            ("idKeys", || Value::Array(Vec::new())),
            ("descriptionKeys", || Value::Array(Vec::new())),
        ],
        _ => &[],
    };
    match value {
        Value::Object(object) => {
            for (name, default) in defaults {
                object.entry(*name).or_insert_with(default);
            }
            let kvlist = within == "kvlistValue";
            for (name, child) in object.iter_mut() {
                let inner = if kvlist && name == "values" {
                    "kvlistValue.values"
                } else {
                    name.as_str()
                };
                complete(child, inner);
            }
        }
        // The items of a list are completed as the list's field says.
        Value::Array(items) => items.iter_mut().for_each(|item| complete(item, within)),
        _ => {}
    }
}

/// The `ExportTraceServiceResponse` of a request of which `rejected` spans were refused, for
/// `message`'s reasons, in `encoding`. Nothing refused: an empty response (full success).
///
/// JSON is written here rather than by the crate's serde so that `rejectedSpans`, an int64,
/// is a decimal string as the protobuf JSON mapping writes it (readers take either).
pub fn response(encoding: Encoding, rejected: u64, message: &str) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    match encoding {
        Encoding::Protobuf => ExportTraceServiceResponse {
            partial_success: (rejected > 0 || !message.is_empty()).then(|| {
                ExportTracePartialSuccess {
                    rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
                    error_message: message.to_owned(),
                }
            }),
        }
        .encode_to_vec(),
        Encoding::Json => {
            let answer = if rejected > 0 || !message.is_empty() {
                json!({"partialSuccess": {
                    "rejectedSpans": rejected.to_string(), "errorMessage": message,
                }})
            } else {
                json!({})
            };
            answer.to_string().into_bytes()
        }
    }
}

/// `google.rpc.Status`, the body OTLP/HTTP gives a protobuf client on a 4xx or 5xx. Its
/// `details` (field 3, `Any` messages) are left out: sift has none to give.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The gRPC code of an HTTP error status, as the gRPC HTTP mapping pairs them.
pub fn grpc_code(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 | 413 | 415 | 422 => 3, // INVALID_ARGUMENT
        401 => 16,                  // UNAUTHENTICATED
        403 => 7,                   // PERMISSION_DENIED
        404 => 5,                   // NOT_FOUND
        429 => 8,                   // RESOURCE_EXHAUSTED
        503 => 14,                  // UNAVAILABLE
        504 => 4,                   // DEADLINE_EXCEEDED
        _ => 13,                    // INTERNAL
    }
}

/// The answer to a failed request. A protobuf client gets its status, headers (`Retry-After`
/// on 429 and 503) and a `google.rpc.Status` body, as OTLP/HTTP asks; a JSON client (or one
/// whose content type is neither) gets sift's JSON error, `{"error":…,"message":…}`.
pub fn error_response(error: &ApiError, encoding: Option<Encoding>) -> HttpResponse {
    let mut response = error.error_response(); // also logs it, as on every route
    if encoding == Some(Encoding::Protobuf) {
        let body = Status {
            code: grpc_code(response.status()),
            message: error.public_message(),
        }
        .encode_to_vec();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(Encoding::Protobuf.content_type()),
        );
        return response
            .set_body(bytes::Bytes::from(body))
            .map_into_boxed_body();
    }
    response
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    use opentelemetry_proto::tonic::common::v1::KeyValue;

    use super::*;

    fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    /// A request as the spec's JSON mapping writes it: hex ids (upper and lower case), 64-bit
    /// integers as strings and as numbers, enums as numbers, camelCase keys, an unknown field,
    /// empty arrays and values left out.
    const SPEC_JSON: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [
          {"key": "service.name", "value": {"stringValue": "chat-api"}},
          {"key": "empty"}
        ], "entityRefs": [{"type": "service", "idKeys": ["service.name"]}]},
        "scopeSpans": [{
          "scope": {"name": "openai-instrumentation", "version": "1.0.0"},
          "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "",
            "name": "chat gpt-4o-mini",
            "kind": 3,
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": 1544712661250000000,
            "attributes": [
              {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
              {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "120"}},
              {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 30}},
              {"key": "gen_ai.response.time_to_first_chunk", "value": {"doubleValue": 0.25}},
              {"key": "gen_ai.request.stream", "value": {"boolValue": true}},
              {"key": "gen_ai.response.finish_reasons", "value": {"arrayValue": {"values": [{"stringValue": "stop"}]}}},
              {"key": "bytes", "value": {"bytesValue": "AQI="}},
              {"key": "empty.array", "value": {"arrayValue": {}}},
              {"key": "empty.map", "value": {"kvlistValue": {}}},
              {"key": "empty.value", "value": {}},
              {"key": "map", "value": {"kvlistValue": {"values": [{"value": {"intValue": "1"}}]}}},
              {"value": {"stringValue": "no key"}}
            ],
            "events": [{"timeUnixNano": "1544712660500000000", "name": "gen_ai.user.message",
                        "attributes": [{"key": "content", "value": {"stringValue": "hi"}}]}],
            "status": {"code": 2, "message": "boom"},
            "flags": 257,
            "someFutureField": {"x": 1}
          }]
        }]
      }]
    }"#;

    #[test]
    fn spec_json_decodes_hex_ids_integers_enums_and_left_out_fields() {
        let request = decode(Encoding::Json, SPEC_JSON.as_bytes()).expect("spec JSON");
        let resource_spans = &request.resource_spans[0];
        let resource = resource_spans.resource.as_ref().expect("resource");
        assert_eq!(
            attribute(&resource.attributes, "service.name"),
            Some(&AnyValue::StringValue("chat-api".into()))
        );
        assert_eq!(resource.attributes[1].value, None);
        assert_eq!(resource.entity_refs[0].r#type, "service");
        assert_eq!(resource.entity_refs[0].id_keys, ["service.name"]);
        assert!(resource.entity_refs[0].description_keys.is_empty());
        let span = &resource_spans.scope_spans[0].spans[0];
        assert_eq!(
            hex::encode(&span.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(hex::encode(&span.span_id), "eee19b7ec3c1b174");
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.kind, 3);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_250_000_000);
        assert_eq!(span.flags, 257);
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
        let attrs = &span.attributes;
        assert_eq!(
            attribute(attrs, "gen_ai.usage.input_tokens"),
            Some(&AnyValue::IntValue(120))
        );
        assert_eq!(
            attribute(attrs, "gen_ai.usage.output_tokens"),
            Some(&AnyValue::IntValue(30))
        );
        assert_eq!(
            attribute(attrs, "gen_ai.response.time_to_first_chunk"),
            Some(&AnyValue::DoubleValue(0.25))
        );
        assert_eq!(
            attribute(attrs, "gen_ai.request.stream"),
            Some(&AnyValue::BoolValue(true))
        );
        assert_eq!(
            attribute(attrs, "bytes"),
            Some(&AnyValue::BytesValue(vec![1, 2]))
        );
        let Some(AnyValue::ArrayValue(reasons)) =
            attribute(attrs, "gen_ai.response.finish_reasons")
        else {
            panic!("finish_reasons is not an array");
        };
        assert_eq!(reasons.values.len(), 1);
        assert_eq!(
            attribute(attrs, "empty.array"),
            Some(&AnyValue::ArrayValue(Default::default()))
        );
        assert_eq!(
            attribute(attrs, "empty.map"),
            Some(&AnyValue::KvlistValue(Default::default()))
        );
        assert_eq!(attribute(attrs, "empty.value"), None);
        let Some(AnyValue::KvlistValue(map)) = attribute(attrs, "map") else {
            panic!("map is not a map");
        };
        assert_eq!(map.values[0].key, "");
        assert_eq!(
            attribute(attrs, ""),
            Some(&AnyValue::StringValue("no key".into()))
        );
        assert_eq!(span.events[0].name, "gen_ai.user.message");
        assert_eq!(span.events[0].time_unix_nano, 1_544_712_660_500_000_000);
    }

    /// Why [`complete`] exists: the crate's serde alone refuses an empty array written without
    /// its empty `values` (when this fails, the crate has closed the gap).
    #[test]
    fn the_crates_serde_alone_refuses_left_out_empty_fields() {
        let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"a","value":{"arrayValue":{}}}]}}]}"#;
        assert!(serde_json::from_str::<ExportTraceServiceRequest>(body).is_err());
        let request = decode(Encoding::Json, body.as_bytes()).expect("completed");
        let resource = request.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource");
        assert_eq!(
            attribute(&resource.attributes, "a"),
            Some(&AnyValue::ArrayValue(Default::default()))
        );
    }

    #[test]
    fn protobuf_and_json_decode_to_the_same_request() {
        let from_json = decode(Encoding::Json, SPEC_JSON.as_bytes()).expect("spec JSON");
        let bytes = from_json.encode_to_vec();
        let from_protobuf = decode(Encoding::Protobuf, &bytes).expect("protobuf");
        assert_eq!(from_protobuf, from_json);
    }

    #[test]
    fn empty_bodies_are_empty_requests_and_garbage_is_refused() {
        assert_eq!(
            decode(Encoding::Protobuf, b"")
                .expect("empty")
                .resource_spans
                .len(),
            0
        );
        assert_eq!(
            decode(Encoding::Json, b"{}")
                .expect("empty")
                .resource_spans
                .len(),
            0
        );
        assert!(matches!(
            decode(Encoding::Protobuf, b"\xff\xff\xff\xff garbage"),
            Err(DecodeError::Protobuf(_))
        ));
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "not hex"}]}]}]}"#,
            br#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}"#,
        ] {
            assert!(
                matches!(
                    decode(Encoding::Json, bad),
                    Err(DecodeError::Json(_) | DecodeError::NotAnObject)
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn answers_carry_partial_success_only_when_spans_were_refused() {
        assert_eq!(response(Encoding::Json, 0, ""), b"{}");
        let json: serde_json::Value =
            serde_json::from_slice(&response(Encoding::Json, 2, "2 of 3 spans rejected: …"))
                .expect("JSON");
        assert_eq!(
            json,
            json!({"partialSuccess": {"rejectedSpans": "2", "errorMessage": "2 of 3 spans rejected: …"}})
        );
        assert!(response(Encoding::Protobuf, 0, "").is_empty());
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
        let decoded =
            ExportTraceServiceResponse::decode(&response(Encoding::Protobuf, 2, "why")[..])
                .expect("protobuf");
        let partial = decoded.partial_success.expect("partial success");
        assert_eq!(partial.rejected_spans, 2);
        assert_eq!(partial.error_message, "why");
    }

    #[test]
    fn media_types_name_the_encoding() {
        assert_eq!(
            Encoding::of_media_type(Some("application/x-protobuf")),
            Some(Encoding::Protobuf)
        );
        assert_eq!(
            Encoding::of_media_type(Some("application/json")),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::of_media_type(Some("text/plain")), None);
        assert_eq!(Encoding::of_media_type(None), None);
    }
}
