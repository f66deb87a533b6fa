//! The normalizer and semantic hash examples of docs/design.md.

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
        "properties": {"feature": "chat", "beta": true}, "event_id": "evt-1",
        "user.id": "user-42", "model": "gpt-4o-mini",
        "gen_ai.usage.cache_read.input_tokens": 2, "reasoning_output_tokens": 1,
    });
    let event = validate(&body, &Limits::default(), 1_790_000_000_000).expect("valid");
    let record = QueueRecord::new("acme", &event, 1_790_000_000_001);
    assert_eq!(record.semantic_hash, SemanticHash::of("acme", &event));
    assert_eq!(record.user_id.as_deref(), Some("user-42"));
    assert_eq!(record.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(
        (
            record.cache_read_input_tokens,
            record.cache_creation_input_tokens,
            record.reasoning_output_tokens
        ),
        (Some(2), None, Some(1))
    );
    let bytes = record.encode();
    assert_eq!(bytes[0], 4, "version 4: binary");
    // Every field set (a user, a model name, token details): still a couple hundred bytes.
    assert!(bytes.len() < 230, "{} bytes", bytes.len());
    let decoded = QueueRecord::decode(&bytes).expect("decodes");
    assert_eq!(decoded, record);
    assert!(
        matches!(decoded.session_id, std::borrow::Cow::Borrowed(_)),
        "strings are read in place"
    );
    assert!(
        !String::from_utf8_lossy(&bytes).contains("Hi"),
        "the prompt itself is not queued"
    );

    let mut future = bytes.clone();
    future[0] = 99;
    assert!(matches!(
        QueueRecord::decode(&future),
        Err(sift_core::RecordError::UnsupportedVersion(99))
    ));
    let mut truncated = bytes.clone();
    truncated.truncate(bytes.len() - 3);
    assert!(QueueRecord::decode(&truncated).is_err());
}

/// Records of version 2, queued by an API without `user_id`, are read as records without a
/// user: version 4 is version 2 with `user_id` appended.
#[test]
fn version_2_records_are_read_without_a_user() {
    let body = json!({
        "session_id": "session-0001", "prompt_text": "Hi", "model_version": "v1.0.0",
        "latency_ms": 5, "token_count": 3, "event_id": "evt-1",
    });
    let event = validate(&body, &Limits::default(), 1_790_000_000_000).expect("valid");
    let record = QueueRecord::new("acme", &event, 1_790_000_000_001);
    let v4 = record.encode();
    assert_eq!(
        v4[v4.len() - 5..],
        [0; 5],
        "no user, model or token details: postcard's None five times"
    );
    let mut v2 = v4[..v4.len() - 5].to_vec();
    v2[0] = 2;
    let read = QueueRecord::decode(&v2).expect("a version 2 record");
    assert_eq!(read, record);
    assert_eq!(read.user_id, None);
    let mut v2_cut = v2.clone();
    v2_cut.pop();
    assert!(QueueRecord::decode(&v2_cut).is_err());
}

/// Records queued by an older ingest API (JSON, version 1, hex digests) are still read: the
/// batcher drains them after an upgrade.
#[test]
fn version_1_json_records_are_still_read() {
    let v1 = br#"{"v":1,"tenant_id":"acme","semantic_hash":"554a3ba1af1e69bbd9bd1a06cb2e2d9f5a4ffdc9b6b6ef9b22d9a8b39e5fc50e","normalizer_version":2,"prompt_hash":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","session_id":"session-0001","model_version":"v1.2.3","latency_ms":120.5,"token_count":42,"input_tokens":null,"output_tokens":7,"success":true,"timestamp_ms":1790000000000,"event_id":"e\u00e9","turn_index":3,"stream_id":null,"chunk_index":null,"is_final":false,"fallback_chain":["v2.0.0"],"provider":"openai","operation":null,"properties":"{\"a\":1}","ingested_at_ms":1790000000001}"#;
    let record = QueueRecord::decode(v1).expect("a version 1 record");
    assert_eq!(
        record.semantic_hash.to_hex(),
        "554a3ba1af1e69bbd9bd1a06cb2e2d9f5a4ffdc9b6b6ef9b22d9a8b39e5fc50e"
    );
    assert_eq!(record.event_id.as_deref(), Some("e\u{e9}"));
    assert_eq!(record.properties.as_deref(), Some(r#"{"a":1}"#));
    assert_eq!(record.output_tokens, Some(7));
    assert_eq!(record.turn_index, Some(3));
    assert_eq!(record.fallback_chain, vec!["v2.0.0"]);
    // Written again, it is a version 4 record with the same content.
    let again = record.encode();
    assert_eq!(QueueRecord::decode(&again).expect("v4"), record);

    let bad_digest = String::from_utf8_lossy(v1).replacen("554a", "zz4a", 1);
    assert!(matches!(
        QueueRecord::decode(bad_digest.as_bytes()),
        Err(sift_core::RecordError::BadDigest("semantic_hash"))
    ));
    let future = String::from_utf8_lossy(v1).replacen("\"v\":1", "\"v\":99", 1);
    assert!(matches!(
        QueueRecord::decode(future.as_bytes()),
        Err(sift_core::RecordError::UnsupportedVersion(99))
    ));
}

/// A frame holds the records of one request; an element that is no frame is one record.
#[test]
fn frames_hold_records_and_refuse_to_be_cut() {
    let (a, b) = (b"\x02first".as_slice(), b"\x02second record".as_slice());
    let framed = sift_core::frame(&[a, b]);
    assert_eq!(framed[..3], [3, 0, 2]);
    assert_eq!(sift_core::records_of(&framed).expect("a frame"), vec![a, b]);
    assert_eq!(sift_core::records_of(a).expect("one record"), vec![a]);
    assert_eq!((sift_core::rows_in(&framed), sift_core::rows_in(a)), (2, 1));
    for cut in [1, 3, 8, framed.len() - 1] {
        assert!(
            sift_core::records_of(&framed[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut longer = framed.clone();
    longer.push(0);
    assert!(sift_core::records_of(&longer).is_err());
}
