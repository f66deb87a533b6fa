//! How an OpenTelemetry GenAI span becomes a sift event. The span is turned into the same JSON
//! object that `POST /v1/ai/events` takes, so validation, the semantic hash and every dedup
//! layer are the JSON API's own, not a second copy of them. The table of what goes where is in
//! docs/api.md (`POST /v1/traces`); it and [`event`] must be kept equal. Pure functions.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Map, Number, Value};

/// The attribute that makes a span a GenAI span (every GenAI operation span has it).
pub const OPERATION: &str = "gen_ai.operation.name";

/// A span's latency when it ended as it began (or before): sift's latency must be above 0.
pub const MIN_LATENCY_MS: f64 = 0.001;

/// Span attributes kept as they are in the event's `properties`.
const SPAN_PROPERTIES: &[&str] = &[
    "gen_ai.response.finish_reasons",
    "gen_ai.response.time_to_first_chunk",
    "error.type",
];

/// Resource attributes kept in `properties`: which service and deployment made the call.
const RESOURCE_PROPERTIES: &[&str] = &[
    "service.name",
    "service.version",
    "deployment.environment",
    "deployment.environment.name",
];

/// Span events whose content is an input message (the older GenAI conventions).
const MESSAGE_EVENTS: &[&str] = &[
    "gen_ai.system.message",
    "gen_ai.user.message",
    "gen_ai.assistant.message",
    "gen_ai.tool.message",
    "gen_ai.content.prompt",
];

/// Why a span is not made into an event at all (validation refuses the others, by field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// No `gen_ai.operation.name`: sift keeps GenAI calls only.
    NotGenAi,
    /// A trace id of other than 16 bytes, a span id of other than 8, or either all zero.
    BadIds,
    /// Neither a model name nor `sift.model_version`: the event would name no model.
    NoModel,
}

impl Skip {
    /// The reason, as the partial success's message gives it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotGenAi => "not a GenAI span (no gen_ai.operation.name attribute)",
            Self::BadIds => "invalid traceId or spanId (16 and 8 bytes, not all zero)",
            Self::NoModel => {
                "no model: gen_ai.response.model, gen_ai.request.model and sift.model_version are all missing"
            }
        }
    }
}

/// Every span of a request, with its resource's attributes, in request order.
pub fn spans(request: &ExportTraceServiceRequest) -> impl Iterator<Item = (&[KeyValue], &Span)> {
    request.resource_spans.iter().flat_map(|resource_spans| {
        let resource = resource_spans
            .resource
            .as_ref()
            .map_or(&[][..], |r| &r.attributes[..]);
        resource_spans
            .scope_spans
            .iter()
            .flat_map(move |scope| scope.spans.iter().map(move |span| (resource, span)))
    })
}

/// Where an event field comes from in a span: named in the reason a span is refused for, since
/// the exporter's owner knows the attributes, not sift's fields.
pub fn source_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "session_id" => "gen_ai.conversation.id",
        "model" => "gen_ai.response.model or gen_ai.request.model",
        "model_version" => "sift.model_version",
        "provider" => "gen_ai.provider.name or gen_ai.system",
        "operation" => OPERATION,
        "input_tokens" => "gen_ai.usage.input_tokens",
        "output_tokens" => "gen_ai.usage.output_tokens",
        "token_count" => "gen_ai.usage.input_tokens + gen_ai.usage.output_tokens",
        "latency_ms" => "endTimeUnixNano - startTimeUnixNano",
        "timestamp" => "startTimeUnixNano",
        "prompt_text" => "gen_ai.input.messages, gen_ai.prompt or the message events",
        "user_id" => "user.id",
        "properties" => "the attributes kept in properties",
        "event_id" => "traceId:spanId",
        "success" => "status.code or error.type",
        _ => return None,
    })
}

/// The event of a span whose resource has `resource` attributes, as a JSON event object.
pub fn event(resource: &[KeyValue], span: &Span) -> Result<Value, Skip> {
    let attributes = &span.attributes[..];
    let operation = find(attributes, OPERATION).ok_or(Skip::NotGenAi)?;
    let (trace_id, span_id) = ids(span).ok_or(Skip::BadIds)?;
    let identity = format!("{trace_id}:{span_id}");

    let mut event = Map::new();
    let mut put = |name: &str, value: Value| {
        event.insert(name.to_owned(), value);
    };
    put("operation", field(operation));
    // The span's own id: an exporter's retry of a batch is collapsed as duplicate_event_id.
    put("event_id", Value::String(identity.clone()));

    let model = find(attributes, "gen_ai.response.model")
        .or_else(|| find(attributes, "gen_ai.request.model"));
    let version =
        find(attributes, "sift.model_version").or_else(|| find(resource, "sift.model_version"));
    if model.is_none() && version.is_none() {
        return Err(Skip::NoModel);
    }
    if let Some(model) = model {
        put("model", field(model));
    }
    if let Some(version) = version {
        put("model_version", field(version));
    }
    if let Some(provider) =
        find(attributes, "gen_ai.provider.name").or_else(|| find(attributes, "gen_ai.system"))
    {
        put("provider", field(provider));
    }

    // Both counts: validation adds them up (and refuses a sum past u32). One: it is the total.
    let input = find(attributes, "gen_ai.usage.input_tokens").map(count);
    let output = find(attributes, "gen_ai.usage.output_tokens").map(count);
    match (&input, &output) {
        (Some(_), Some(_)) => {}
        (Some(one), None) | (None, Some(one)) => put("token_count", one.clone()),
        (None, None) => put("token_count", Value::from(0)),
    }
    if let Some(input) = input {
        put("input_tokens", input);
    }
    if let Some(output) = output {
        put("output_tokens", output);
    }
    // The token details, each in its own column.
    for (field, names) in [
        (
            "cache_read_input_tokens",
            &["gen_ai.usage.cache_read.input_tokens"][..],
        ),
        (
            "cache_creation_input_tokens",
            &[
                "gen_ai.usage.cache_creation.input_tokens",
                "gen_ai.usage.cache_write.input_tokens",
            ][..],
        ),
        (
            "reasoning_output_tokens",
            &["gen_ai.usage.reasoning.output_tokens"][..],
        ),
    ] {
        if let Some(value) = names.iter().find_map(|name| find(attributes, name)) {
            put(field, count(value));
        }
    }

    put(
        "session_id",
        find(attributes, "gen_ai.conversation.id")
            .map_or_else(|| Value::String(format!("trace-{trace_id}")), field),
    );
    if let Some(user) = find(attributes, "user.id").or_else(|| find(resource, "user.id")) {
        put("user_id", field(user));
    }

    let nanos = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano);
    put(
        "latency_ms",
        number((nanos as f64 / 1e6).max(MIN_LATENCY_MS)),
    );
    let start_ms = i64::try_from(span.start_time_unix_nano / 1_000_000).unwrap_or(i64::MAX);
    put(
        "timestamp",
        Value::String(sift_core::clock::format_rfc3339_ms(start_ms)),
    );

    let failed = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32)
        || find(attributes, "error.type").is_some();
    put("success", Value::Bool(!failed));

    // Without the prompt the span's identity stands for it, so spans are never one intent
    // because they lack a prompt.
    put(
        "prompt_text",
        Value::String(prompt(span).unwrap_or_else(|| format!("span {identity}"))),
    );

    let mut properties = Map::new();
    for (names, attributes) in [
        (SPAN_PROPERTIES, attributes),
        (RESOURCE_PROPERTIES, resource),
    ] {
        for name in names {
            if let Some(value) = find(attributes, name) {
                properties.insert((*name).to_owned(), property(value));
            }
        }
    }
    if !properties.is_empty() {
        put("properties", Value::Object(properties));
    }
    Ok(Value::Object(event))
}

/// The value of the attribute `key`; an empty string counts as absent (it carries nothing).
fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .filter(|v| !matches!(v, Any::StringValue(s) if s.is_empty()))
}

/// The trace and span ids in lowercase hex, if they are valid.
fn ids(span: &Span) -> Option<(String, String)> {
    let valid = |id: &[u8], len: usize| id.len() == len && id.iter().any(|b| *b != 0);
    (valid(&span.trace_id, 16) && valid(&span.span_id, 8))
        .then(|| (hex::encode(&span.trace_id), hex::encode(&span.span_id)))
}

/// An attribute as the JSON value of an event field: validation then refuses a wrong type
/// naming the field, as it does for a JSON event.
fn field(value: &Any) -> Value {
    match value {
        Any::StringValue(s) => Value::String(s.clone()),
        Any::BoolValue(b) => Value::Bool(*b),
        Any::IntValue(i) => Value::from(*i),
        Any::DoubleValue(d) => number(*d),
        Any::ArrayValue(array) => Value::Array(
            array
                .values
                .iter()
                .map(|v| v.value.as_ref().map_or(Value::Null, field))
                .collect(),
        ),
        Any::KvlistValue(list) => Value::Object(
            list.values
                .iter()
                .map(|kv| {
                    let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                    (kv.key.clone(), value.map_or(Value::Null, field))
                })
                .collect(),
        ),
        Any::BytesValue(bytes) => Value::String(hex::encode(bytes)),
        Any::StringValueStrindex(_) => Value::Null,
    }
}

/// A token count: a whole double (some SDKs send every number as one) is taken as an integer.
fn count(value: &Any) -> Value {
    match value {
        Any::DoubleValue(d) if d.fract() == 0.0 && (0.0..9.0e15).contains(d) => {
            Value::from(*d as u64)
        }
        other => field(other),
    }
}

/// A number; NaN and infinities, which JSON lacks, as their names.
fn number(value: f64) -> Value {
    Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number)
}

/// An attribute as a value of the flat `properties` object: scalars as they are, an array as
/// its items joined by commas (`stop,length`), a map as its JSON text.
fn property(value: &Any) -> Value {
    match value {
        Any::ArrayValue(array) => Value::String(
            array
                .values
                .iter()
                .filter_map(|v| v.value.as_ref())
                .map(|v| match field(v) {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        Any::KvlistValue(_) => Value::String(field(value).to_string()),
        other => field(other),
    }
}

/// The prompt's text, when the span carries it (content capture is opt-in): the text of every
/// input message, in order, one per line. Sources, first found wins: `gen_ai.input.messages`,
/// `gen_ai.prompt`, `gen_ai.prompt.<n>.content`, then the message span events.
fn prompt(span: &Span) -> Option<String> {
    let attributes = &span.attributes[..];
    let text = if let Some(value) =
        find(attributes, "gen_ai.input.messages").or_else(|| find(attributes, "gen_ai.prompt"))
    {
        messages_text(value)
    } else if find(attributes, "gen_ai.prompt.0.content").is_some() {
        (0..)
            .map_while(|i| find(attributes, &format!("gen_ai.prompt.{i}.content")))
            .map(messages_text)
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        span.events
            .iter()
            .filter(|e| MESSAGE_EVENTS.contains(&e.name.as_str()))
            .filter_map(|e| {
                find(&e.attributes, "content").or_else(|| find(&e.attributes, "gen_ai.prompt"))
            })
            .map(messages_text)
            .collect::<Vec<_>>()
            .join("\n")
    };
    (!text.trim().is_empty()).then_some(text)
}

/// The text of messages given as an attribute: a JSON string or a structured value, in the
/// current conventions' shape (`[{"role":…,"parts":[{"type":"text","content":…}]}]`) or the
/// older ones' (`content` a string, or a list of `{"type":"text","text":…}`). Anything else is
/// taken as its text, so the prompt is still hashed whole.
fn messages_text(value: &Any) -> String {
    let json = match value {
        Any::StringValue(s) => match serde_json::from_str::<Value>(s) {
            Ok(json @ (Value::Array(_) | Value::Object(_))) => json,
            _ => return s.clone(),
        },
        other => field(other),
    };
    let mut texts = Vec::new();
    collect_texts(&json, &mut texts);
    if texts.is_empty() {
        json.to_string()
    } else {
        texts.join("\n")
    }
}

fn collect_texts<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|item| collect_texts(item, out)),
        Value::Object(object) => {
            if let Some(parts) = object.get("parts") {
                return collect_texts(parts, out);
            }
            // A typed part other than text (a tool call, an image) has no prompt text.
            if object
                .get("type")
                .is_some_and(|t| t.as_str() != Some("text"))
            {
                return;
            }
            match (object.get("content"), object.get("text")) {
                (Some(content), _) => collect_texts(content, out),
                (None, Some(Value::String(text))) => out.push(text),
                _ => {}
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
