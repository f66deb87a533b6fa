//! Validation rules: each refusal names its field.

use serde_json::{json, Value};
use sift_core::{validate::validate, Limits};

const NOW_MS: i64 = 1_790_000_000_000;

fn base() -> Value {
    json!({
        "session_id": "session-0001", "prompt_text": "Help me write code",
        "model_version": "v1.2.3", "latency_ms": 120.5, "token_count": 42,
    })
}

fn refused(patch: Value) -> (String, String) {
    let mut body = base();
    for (k, v) in patch.as_object().expect("object") {
        if v.is_null() {
            body.as_object_mut().expect("object").remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    let err = validate(&body, &Limits::default(), NOW_MS).expect_err("must be refused");
    (err.field, err.reason)
}

#[test]
fn a_minimal_event_is_valid_with_defaults() {
    let event = validate(&base(), &Limits::default(), NOW_MS).expect("valid");
    assert!(event.success);
    assert_eq!(event.timestamp_ms, NOW_MS);
    assert_eq!(event.token_count, 42);
}

/// `gen_ai.request.model` names the application's version when it is one (`v1.2.3`, as API
/// v1 clients send it), and the provider's model name otherwise.
#[test]
fn the_request_model_alias_names_a_version_or_a_model() {
    let mut body = base();
    let object = body.as_object_mut().expect("object");
    object.remove("model_version");
    object.insert("gen_ai.request.model".into(), json!("v2.0.0"));
    let event = validate(&body, &Limits::default(), NOW_MS).expect("valid");
    assert_eq!(
        (event.model_version.as_str(), event.model),
        ("v2.0.0", None)
    );
    body["gen_ai.request.model"] = json!("gpt-4o-mini");
    let event = validate(&body, &Limits::default(), NOW_MS).expect("valid");
    assert_eq!(
        (event.model_version.as_str(), event.model.as_deref()),
        ("", Some("gpt-4o-mini"))
    );
    body["model"] = json!("gpt-4o");
    let err = validate(&body, &Limits::default(), NOW_MS).expect_err("twice");
    assert_eq!(err.field, "model");
}

/// An event that names its provider's model may leave `model_version` out: it is empty.
#[test]
fn a_model_name_stands_in_for_the_version() {
    let mut body = base();
    body.as_object_mut()
        .expect("object")
        .remove("model_version");
    body["model"] = json!("anthropic.claude-3-5-sonnet-20240620-v1:0");
    let event = validate(&body, &Limits::default(), NOW_MS).expect("valid");
    assert_eq!(event.model_version, "");
    assert_eq!(
        event.model.as_deref(),
        Some("anthropic.claude-3-5-sonnet-20240620-v1:0")
    );
}

#[test]
fn each_rule_names_its_field() {
    let cases = [
        (json!({"session_id": "short"}), "session_id"),
        (json!({"session_id": "x".repeat(129)}), "session_id"),
        (json!({"session_id": null}), "session_id"),
        (json!({"session_id": 1234567890}), "session_id"),
        (json!({"prompt_text": "   "}), "prompt_text"),
        (json!({"prompt_text": "x".repeat(40_000)}), "prompt_text"),
        (json!({"model_version": "1.2.3"}), "model_version"),
        (json!({"model_version": "v1.2"}), "model_version"),
        (json!({"model_version": "v1.2.3-beta"}), "model_version"),
        (json!({"model_version": ""}), "model_version"),
        (json!({"model_version": null}), "model_version"),
        (
            json!({"model_version": "", "model": "gpt-4o"}),
            "model_version",
        ),
        (json!({"model": "gpt 4o"}), "model"),
        (json!({"model": ""}), "model"),
        (json!({"latency_ms": 0}), "latency_ms"),
        (json!({"latency_ms": -3}), "latency_ms"),
        (json!({"token_count": -1}), "token_count"),
        (json!({"token_count": 1.5}), "token_count"),
        (json!({"token_count": null}), "token_count"),
        (json!({"success": "yes"}), "success"),
        (json!({"timestamp": (NOW_MS / 1000) + 3600}), "timestamp"),
        (json!({"timestamp": "yesterday"}), "timestamp"),
        (json!({"timestamp": 1_000}), "timestamp"),
        (json!({"chunk_index": 2}), "chunk_index"),
        (json!({"fallback_chain": "v1.0.0"}), "fallback_chain"),
        (json!({"properties": {"nested": {"a": 1}}}), "properties"),
        (json!({"properties": [1, 2]}), "properties"),
        (json!({"sesion_id": "session-0001"}), "sesion_id"),
        (json!({"gen_ai.request.model": "v1.0.0"}), "model_version"),
    ];
    for (patch, field) in cases {
        let (got, reason) = refused(patch.clone());
        assert_eq!(got, field, "patch {patch} gave {got}: {reason}");
        assert!(!reason.is_empty());
    }
}

#[test]
fn timestamps_take_epoch_seconds_and_rfc3339() {
    let mut body = base();
    body["timestamp"] = json!(1_789_999_000.5);
    assert_eq!(
        validate(&body, &Limits::default(), NOW_MS)
            .expect("valid")
            .timestamp_ms,
        1_789_999_000_500
    );
    body["timestamp"] = json!("2026-09-21T13:20:00Z");
    assert_eq!(
        validate(&body, &Limits::default(), NOW_MS)
            .expect("valid")
            .timestamp_ms,
        1_789_996_800_000
    );
}

#[test]
fn opentelemetry_names_are_aliases() {
    let body = json!({
        "gen_ai.conversation.id": "session-0001", "prompt_text": "hi",
        "gen_ai.request.model": "v1.0.0", "latency_ms": 3,
        "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5,
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
    });
    let event = validate(&body, &Limits::default(), NOW_MS).expect("valid");
    assert_eq!(event.session_id, "session-0001");
    assert_eq!(event.token_count, 15, "derived from input + output");
    assert_eq!(event.provider.as_deref(), Some("openai"));
    assert_eq!(event.operation.as_deref(), Some("chat"));
}

#[test]
fn properties_are_bounded() {
    let big: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
    let (field, _) = refused(json!({"properties": big}));
    assert_eq!(field, "properties");
    let (field, _) = refused(json!({"properties": {"k": "x".repeat(9000)}}));
    assert_eq!(field, "properties");
}
