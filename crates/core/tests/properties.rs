//! Property tests of the normalizer and the semantic hash: the guarantees dedup relies on.

use proptest::prelude::*;
use serde_json::json;
use sift_core::{normalize, validate::validate, Event, Limits, SemanticHash};

const NOW_MS: i64 = 1_790_000_000_000;

fn event(session: &str, prompt: &str, model: &str, turn: Option<u32>) -> Event {
    let mut body = json!({
        "session_id": session, "prompt_text": prompt, "model_version": model,
        "latency_ms": 12.5, "token_count": 40,
    });
    if let Some(turn) = turn {
        body["turn_index"] = json!(turn);
    }
    validate(&body, &Limits::default(), NOW_MS).expect("valid event")
}

fn session() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{10,40}"
}

fn model() -> impl Strategy<Value = String> {
    (0u32..20, 0u32..20, 0u32..20).prop_map(|(a, b, c)| format!("v{a}.{b}.{c}"))
}

/// Prompts of words, so that a cosmetic variant keeps the words apart.
fn words() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z0-9\u{e9}\u{df}\u{4e2d}]{1,8}", 1..8)
}

/// A cosmetic variant: case changes, extra spacing, punctuation, special tokens and Unicode
/// compatibility forms (fullwidth letters, ligature-free NFKC variants) around the same words.
fn cosmetic(words: &[String], seed: &[u8]) -> String {
    let mut out = String::new();
    let pick = |i: usize| seed.get(i % seed.len().max(1)).copied().unwrap_or(0);
    if pick(0) % 3 == 0 {
        out.push_str("<s>[INST] ");
    }
    for (i, word) in words.iter().enumerate() {
        let s = pick(i + 1);
        let spaced = match s % 4 {
            0 => "  ",
            1 => "\t",
            2 => " \n ",
            _ => " ",
        };
        if i > 0 {
            out.push_str(spaced);
        }
        for c in word.chars() {
            let variant = match s % 5 {
                // Upper case, where lowercasing gives the letter back (not "ß" -> "SS").
                0 if c
                    .to_uppercase()
                    .flat_map(char::to_lowercase)
                    .eq(std::iter::once(c)) =>
                {
                    c.to_uppercase().collect::<String>()
                }
                // Fullwidth forms of ASCII letters and digits (NFKC maps them back).
                1 if c.is_ascii_alphanumeric() => char::from_u32(c as u32 - 0x21 + 0xFF01)
                    .map(String::from)
                    .unwrap_or_default(),
                _ => c.to_string(),
            };
            out.push_str(&variant);
        }
        match s % 6 {
            0 => out.push(','),
            1 => out.push_str("!!"),
            2 => out.push('\u{3002}'), // ideographic full stop
            3 => out.push_str(" <|eot_id|>"),
            _ => {}
        }
    }
    if pick(2) % 2 == 0 {
        out.push_str("? [/INST]</s>");
    }
    out
}

proptest! {
    #[test]
    fn normalization_is_idempotent(text in "\\PC{0,60}") {
        let once = normalize(&text);
        prop_assert_eq!(normalize(&once), once);
    }

    #[test]
    fn normalization_is_idempotent_on_tricky_unicode(
        text in prop::collection::vec(prop::sample::select(vec![
            "e", "\u{301}", ".", "İ", "ﬁ", "Ⅸ", "ß", "<|", "|>", "[INST]", "</s>", " ", "\u{3000}",
            "ｆ", "，", "Σ", "ς", "\u{345}", "ǅ", "ﾞ", "ｶ",
        ]), 0..24).prop_map(|parts| parts.concat())
    ) {
        let once = normalize(&text);
        prop_assert_eq!(normalize(&once), once);
    }

    #[test]
    fn cosmetic_variants_hash_equal(
        session in session(), model in model(), words in words(),
        seed in prop::collection::vec(any::<u8>(), 1..16),
        turn in prop::option::of(0u32..50),
    ) {
        let plain = words.join(" ");
        let variant = cosmetic(&words, &seed);
        let a = SemanticHash::of("acme", &event(&session, &plain, &model, turn));
        let b = SemanticHash::of("acme", &event(&session, &variant, &model, turn));
        prop_assert_eq!(a, b, "{:?} vs {:?}", plain, variant);
    }

    #[test]
    fn different_sessions_models_turns_and_tenants_hash_differently(
        s1 in session(), s2 in session(), m1 in model(), m2 in model(),
        words in words(), t1 in 0u32..100, t2 in 0u32..100,
    ) {
        let prompt = words.join(" ");
        let base = SemanticHash::of("acme", &event(&s1, &prompt, &m1, Some(t1)));
        if s1 != s2 {
            prop_assert_ne!(base, SemanticHash::of("acme", &event(&s2, &prompt, &m1, Some(t1))));
        }
        if m1 != m2 {
            prop_assert_ne!(base, SemanticHash::of("acme", &event(&s1, &prompt, &m2, Some(t1))));
        }
        if t1 != t2 {
            prop_assert_ne!(base, SemanticHash::of("acme", &event(&s1, &prompt, &m1, Some(t2))));
        }
        prop_assert_ne!(base, SemanticHash::of("acme", &event(&s1, &prompt, &m1, None)));
        prop_assert_ne!(base, SemanticHash::of("globex", &event(&s1, &prompt, &m1, Some(t1))));
    }
}
