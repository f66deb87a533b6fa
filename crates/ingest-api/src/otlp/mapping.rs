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
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::span::Event as SpanEvent;
    use opentelemetry_proto::tonic::trace::v1::Status;
    use serde_json::json;
    use sift_core::Limits;

    use super::*;

    const TRACE: &str = "5b8efff798038103d269b633813fc60c";
    const SPAN: &str = "eee19b7ec3c1b174";
    /// 2026-12-07T03:00:00.123Z, and 1.5 s later.
    const START: u64 = 1_796_612_400_123_000_000;
    const END: u64 = START + 1_500_250_000;

    fn kv(key: &str, value: Any) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(text: &str) -> Any {
        Any::StringValue(text.into())
    }

    fn span(attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: hex::decode(TRACE).unwrap(),
            span_id: hex::decode(SPAN).unwrap(),
            name: "chat gpt-4o-mini".into(),
            start_time_unix_nano: START,
            end_time_unix_nano: END,
            attributes,
            ..Default::default()
        }
    }

    fn chat() -> Vec<KeyValue> {
        vec![
            kv(OPERATION, s("chat")),
            kv("gen_ai.provider.name", s("openai")),
            kv("gen_ai.request.model", s("gpt-4o")),
            kv("gen_ai.response.model", s("gpt-4o-2024-08-06")),
            kv("gen_ai.usage.input_tokens", Any::IntValue(120)),
            kv("gen_ai.usage.output_tokens", Any::IntValue(30)),
        ]
    }

    #[test]
    fn a_genai_span_maps_to_every_field() {
        let mut attributes = chat();
        attributes.extend([
            kv("gen_ai.conversation.id", s("conversation-0001")),
            kv("user.id", s("user-span")),
            kv("sift.model_version", s("v1.2.3")),
            kv("gen_ai.usage.cache_read.input_tokens", Any::IntValue(100)),
            kv("gen_ai.usage.cache_creation.input_tokens", Any::IntValue(7)),
            kv("gen_ai.usage.reasoning.output_tokens", Any::IntValue(12)),
            kv(
                "gen_ai.response.finish_reasons",
                Any::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(s("stop")),
                        },
                        AnyValue {
                            value: Some(s("length")),
                        },
                    ],
                }),
            ),
            kv("gen_ai.response.time_to_first_chunk", Any::DoubleValue(0.25)),
            kv("gen_ai.input.messages", s(r#"[{"role":"system","parts":[{"type":"text","content":"Be brief."}]},{"role":"user","parts":[{"type":"text","content":"Help me write code"},{"type":"image","uri":"x"}]}]"#)),
            kv("http.method", s("POST")),
        ]);
        let resource = vec![
            kv("service.name", s("chat-api")),
            kv("service.version", s("2.4.0")),
            kv("deployment.environment.name", s("prod")),
            kv("user.id", s("user-resource")),
            kv("host.name", s("web-1")),
        ];
        let event = event(&resource, &span(attributes)).expect("a GenAI span");
        assert_eq!(
            event,
            json!({
                "operation": "chat",
                "event_id": format!("{TRACE}:{SPAN}"),
                "model": "gpt-4o-2024-08-06",
                "model_version": "v1.2.3",
                "provider": "openai",
                "input_tokens": 120,
                "output_tokens": 30,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 7,
                "reasoning_output_tokens": 12,
                "session_id": "conversation-0001",
                "user_id": "user-span",
                "latency_ms": 1500.25,
                "timestamp": "2026-12-07T03:00:00.123Z",
                "success": true,
                "prompt_text": "Be brief.\nHelp me write code",
                "properties": {
                    "gen_ai.response.finish_reasons": "stop,length",
                    "gen_ai.response.time_to_first_chunk": 0.25,
                    "service.name": "chat-api",
                    "service.version": "2.4.0",
                    "deployment.environment.name": "prod",
                },
            })
        );
        // And it is an event the JSON API takes, tokens added up.
        let now = (START / 1_000_000) as i64 + 60_000;
        let valid =
            sift_core::validate::validate(&event, &Limits::default(), now).expect("a valid event");
        assert_eq!(valid.token_count, 150);
        assert_eq!(valid.timestamp_ms, (START / 1_000_000) as i64);
        assert_eq!(valid.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(valid.event_id.as_deref(), Some(&*format!("{TRACE}:{SPAN}")));
    }

    #[test]
    fn a_span_without_prompt_or_conversation_is_identified_by_its_ids() {
        let event = event(&[], &span(chat())).expect("a GenAI span");
        assert_eq!(event["prompt_text"], format!("span {TRACE}:{SPAN}"));
        assert_eq!(event["session_id"], format!("trace-{TRACE}"));
        assert_eq!(event["event_id"], format!("{TRACE}:{SPAN}"));
        assert_eq!(event.get("model_version"), None);
        assert_eq!(event.get("properties"), None);
        assert_eq!(event.get("user_id"), None);
        let now = (START / 1_000_000) as i64;
        let valid =
            sift_core::validate::validate(&event, &Limits::default(), now).expect("a valid event");
        assert_eq!(valid.model_version, "");
        assert_eq!(valid.session_id.len(), 38);
    }

    #[test]
    fn other_spans_are_skipped_with_their_reason() {
        let plain = span(vec![kv("http.method", s("GET"))]);
        assert_eq!(event(&[], &plain), Err(Skip::NotGenAi));
        let mut zero = span(chat());
        zero.trace_id = vec![0; 16];
        assert_eq!(event(&[], &zero), Err(Skip::BadIds));
        let mut short = span(chat());
        short.span_id = vec![1; 4];
        assert_eq!(event(&[], &short), Err(Skip::BadIds));
        let no_model = span(vec![
            kv(OPERATION, s("chat")),
            kv("gen_ai.request.model", s("")),
        ]);
        assert_eq!(event(&[], &no_model), Err(Skip::NoModel));
        // sift.model_version alone names a model (the resource's too).
        let versioned = event(&[kv("sift.model_version", s("v2.0.0"))], &no_model).unwrap();
        assert_eq!(versioned["model_version"], "v2.0.0");
        assert_eq!(versioned.get("model"), None);
    }

    #[test]
    fn failures_and_their_type() {
        let mut errored = span(chat());
        errored.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "rate limited".into(),
        });
        let event_of = |span: &Span| event(&[], span).expect("a GenAI span");
        let failed = event_of(&errored);
        assert_eq!(failed["success"], false);
        assert_eq!(failed.get("properties"), None);

        let mut typed = chat();
        typed.push(kv("error.type", s("timeout")));
        let failed = event_of(&span(typed));
        assert_eq!(failed["success"], false);
        assert_eq!(failed["properties"], json!({"error.type": "timeout"}));

        let mut ok = span(chat());
        ok.status = Some(Status {
            code: StatusCode::Ok as i32,
            message: String::new(),
        });
        assert_eq!(event_of(&ok)["success"], true);
    }

    #[test]
    fn tokens_latency_and_model_fallbacks() {
        let attributes = vec![
            kv(OPERATION, s("embeddings")),
            kv("gen_ai.system", s("cohere")),
            kv("gen_ai.request.model", s("embed-v4")),
            kv("gen_ai.usage.input_tokens", Any::DoubleValue(64.0)),
        ];
        let mut instant = span(attributes);
        instant.end_time_unix_nano = instant.start_time_unix_nano;
        let event = event(&[], &instant).expect("a GenAI span");
        assert_eq!(event["model"], "embed-v4");
        assert_eq!(event["provider"], "cohere");
        assert_eq!(event["input_tokens"], 64);
        assert_eq!(event["token_count"], 64);
        assert_eq!(event.get("output_tokens"), None);
        assert_eq!(event["latency_ms"], MIN_LATENCY_MS);

        let bare = span(vec![
            kv(OPERATION, s("chat")),
            kv("gen_ai.request.model", s("m")),
        ]);
        let bare = super::event(&[], &bare).expect("a GenAI span");
        assert_eq!(bare["token_count"], 0);

        // A negative count is passed on, for validation to refuse naming the field.
        let negative = span(vec![
            kv(OPERATION, s("chat")),
            kv("gen_ai.request.model", s("m")),
            kv("gen_ai.usage.input_tokens", Any::IntValue(-1)),
            kv("gen_ai.usage.output_tokens", Any::IntValue(2)),
        ]);
        let negative = super::event(&[], &negative).expect("a GenAI span");
        let error = sift_core::validate::validate(
            &negative,
            &Limits::default(),
            (START / 1_000_000) as i64,
        )
        .expect_err("refused");
        assert_eq!(error.field, "input_tokens");
        assert_eq!(source_of(&error.field), Some("gen_ai.usage.input_tokens"));
    }

    fn prompt_of(attributes: Vec<KeyValue>, events: Vec<SpanEvent>) -> Option<String> {
        let mut span = span(attributes);
        span.events = events;
        prompt(&span)
    }

    #[test]
    fn prompts_from_each_convention() {
        // Structured messages (an array of maps), OpenAI-style content parts, a plain string.
        let map = |pairs: Vec<KeyValue>| AnyValue {
            value: Some(Any::KvlistValue(KeyValueList { values: pairs })),
        };
        let array = |values: Vec<AnyValue>| Any::ArrayValue(ArrayValue { values });
        let structured = array(vec![map(vec![
            kv("role", s("user")),
            kv(
                "parts",
                array(vec![map(vec![
                    kv("type", s("text")),
                    kv("content", s("Structured hello")),
                ])]),
            ),
        ])]);
        assert_eq!(
            prompt_of(vec![kv("gen_ai.input.messages", structured)], vec![]),
            Some("Structured hello".into())
        );
        assert_eq!(
            prompt_of(
                vec![kv(
                    "gen_ai.prompt",
                    s(
                        r#"[{"role":"user","content":[{"type":"text","text":"Hello"},{"type":"image_url","image_url":"u"}]},{"role":"user","content":"again"}]"#
                    )
                )],
                vec![]
            ),
            Some("Hello\nagain".into())
        );
        assert_eq!(
            prompt_of(vec![kv("gen_ai.prompt", s("just text"))], vec![]),
            Some("just text".into())
        );
        // Indexed attributes (OpenLLMetry), in order.
        assert_eq!(
            prompt_of(
                vec![
                    kv("gen_ai.prompt.1.content", s("second")),
                    kv("gen_ai.prompt.0.content", s("first")),
                ],
                vec![]
            ),
            Some("first\nsecond".into())
        );
        // Span events, input messages only.
        let message = |name: &str, key: &str, text: &str| SpanEvent {
            name: name.into(),
            attributes: vec![kv(key, s(text))],
            ..Default::default()
        };
        assert_eq!(
            prompt_of(
                vec![],
                vec![
                    message("gen_ai.system.message", "content", "Be brief."),
                    message("gen_ai.user.message", "content", "Hi"),
                    message("gen_ai.choice", "content", "Hello!"),
                ]
            ),
            Some("Be brief.\nHi".into())
        );
        assert_eq!(
            prompt_of(
                vec![],
                vec![message(
                    "gen_ai.content.prompt",
                    "gen_ai.prompt",
                    r#"[{"role":"user","content":"Hi there"}]"#
                )]
            ),
            Some("Hi there".into())
        );
        // Messages with no text (tool calls only) are hashed as their JSON.
        let tools = prompt_of(
            vec![kv(
                "gen_ai.input.messages",
                s(r#"[{"role":"assistant","parts":[{"type":"tool_call","name":"f"}]}]"#),
            )],
            vec![],
        )
        .expect("a prompt");
        assert_eq!(
            serde_json::from_str::<Value>(&tools).unwrap(),
            json!([{"role": "assistant", "parts": [{"type": "tool_call", "name": "f"}]}])
        );
        assert_eq!(prompt_of(vec![kv("gen_ai.prompt", s("  "))], vec![]), None);
        assert_eq!(prompt_of(vec![], vec![]), None);
    }

    #[test]
    fn every_field_an_event_gets_names_its_source() {
        let event = event(&[kv("user.id", s("u-1"))], &span(chat())).unwrap();
        for field in event.as_object().unwrap().keys() {
            assert!(source_of(field).is_some(), "{field}");
        }
    }
}
