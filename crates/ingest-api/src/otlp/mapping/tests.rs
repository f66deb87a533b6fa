//! The mapping of spans to events, span by span: every field of the table in docs/api.md.

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
    let error =
        sift_core::validate::validate(&negative, &Limits::default(), (START / 1_000_000) as i64)
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
