//! Examples of the normalizer and the semantic hash that the spec names.

use serde_json::json;
use sift_core::{normalize, validate::validate, Limits, QueueRecord, SemanticHash};

#[test]
fn the_seed_example_collapses_with_punctuation_case_and_spacing() {
    assert_eq!(normalize("Help me write code"), "help me write code");
    assert_eq!(normalize("  help me write CODE!  "), "help me write code");
    assert_eq!(normalize("Help me write code!"), "help me write code");
}

#[test]
fn special_tokens_are_removed_and_separate_words() {
    assert_eq!(normalize("<s>[INST] Hi there [/INST]</s>"), "hi there");
    assert_eq!(normalize("foo<|eot_id|>bar"), "foo bar");
    assert_eq!(normalize("<|im_start|>user\nHello<|im_end|>"), "user hello");
}

#[test]
fn unicode_compatibility_forms_fold() {
    assert_eq!(normalize("ＨＥＬＬＯ　ｗｏｒｌｄ！"), "hello world");
    assert_eq!(normalize("ﬁle"), "file");
    assert_eq!(normalize("Café"), normalize("Cafe\u{301}"));
    assert_eq!(normalize("¿Qué tal?"), "qué tal");
}

#[test]
fn empty_after_normalization_is_empty() {
    assert_eq!(normalize(" !!! <s> "), "");
}

#[test]
fn a_stream_is_one_intent_whatever_its_chunks_say() {
    let limits = Limits::default();
    let now = 1_790_000_000_000;
    let chunk = |i: u32, prompt: &str, fin: bool| {
        let body = json!({
            "session_id": "session-0001", "prompt_text": prompt, "model_version": "v1.0.0",
            "latency_ms": 5, "token_count": i, "stream_id": "stream-1", "chunk_index": i, "final": fin,
        });
        validate(&body, &limits, now).expect("valid chunk")
    };
    let first = SemanticHash::of("acme", &chunk(0, "Tell me", false));
    let last = SemanticHash::of("acme", &chunk(9, "Tell me a story", true));
    assert_eq!(first, last);
    assert_ne!(
        first,
        SemanticHash::of("other", &chunk(0, "Tell me", false))
    );
}

#[test]
fn queue_records_round_trip_and_refuse_unknown_versions() {
    let body = json!({
        "session_id": "session-0001", "prompt_text": "Hi", "model_version": "v1.0.0",
        "latency_ms": 5, "token_count": 3, "fallback_chain": ["v2.0.0", "v1.0.0"],
        "properties": {"feature": "chat", "beta": true},
    });
    let event = validate(&body, &Limits::default(), 1_790_000_000_000).expect("valid");
    let hash = SemanticHash::of("acme", &event);
    let record = QueueRecord::new("acme", &event, &hash, 1_790_000_000_001);
    let bytes = record.encode();
    assert!(
        bytes.starts_with(br#"{"v":1,"#),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(QueueRecord::decode(&bytes).expect("decodes"), record);
    assert!(
        !String::from_utf8_lossy(&bytes).contains("\"Hi\""),
        "the prompt itself is not queued"
    );

    let future = String::from_utf8_lossy(&bytes).replacen("\"v\":1", "\"v\":99", 1);
    assert!(matches!(
        QueueRecord::decode(future.as_bytes()),
        Err(sift_core::RecordError::UnsupportedVersion(99))
    ));
}
