//! The prompts of the intents, and their variants: the same intent rendered otherwise.
//!
//! A variant must normalize (in sift's normalizer) to exactly its original's form, and two
//! distinct intents never to the same one: else the expected `duplicate_intent` and
//! `accepted` answers would be wrong. The texts and the rendering live here, with the tests
//! that hold them to sift-core's own normalizer.

use rand::Rng;

use crate::body::{EventFields, Prompt};

use super::Intent;

/// Prompts of the intents: what AI features are asked. Each intent adds its run id and number.
pub(super) const TEMPLATES: [&str; 12] = [
    "Summarize the attached incident report and list the follow-up actions",
    "Write a SQL query that returns the top ten customers by revenue this quarter",
    "Explain this stack trace and suggest a fix",
    "Translate the release notes into German",
    "Draft a polite reply to the customer's refund request",
    "Generate unit tests for the date parser module",
    "What are the main risks in this contract clause?",
    "Refactor this function to avoid the nested loops",
    "Classify the sentiment of the following product review",
    "Extract the invoice number, total and due date from this email",
    "Suggest three subject lines for the onboarding newsletter",
    "Rewrite this paragraph in plain language for a general audience",
];

pub(super) fn plain_fields(tenant: usize, intent: &Intent) -> EventFields<'static> {
    EventFields {
        tenant: tenant as u32,
        session: intent.session,
        prompt: Prompt::Original {
            template: TEMPLATES[usize::from(intent.template)],
            id: intent.id,
        },
        model: intent.model,
        latency_tenths: intent.latency_tenths,
        input_tokens: intent.input_tokens,
        output_tokens: intent.output_tokens,
        success: intent.success,
        timestamp_ms: intent.timestamp_ms,
        event_id: Some(intent.id),
        stream: None,
    }
}

/// The same prompt as a person or another SDK would render it: other case, punctuation next
/// to the spaces (never inside a word: removed punctuation must not join two words) and other
/// whitespace. sift's normalizer (NFKC, lowercase, no punctuation, single spaces, trimmed) maps
/// it back to the original's normal form.
pub(super) fn render_variant(rng: &mut impl Rng, original: &str) -> String {
    const PREFIXES: [&str; 5] = ["", "", " ", "¡", "“"];
    const SUFFIXES: [&str; 7] = ["?", "!!", "...", "…", " ?", "!?", "”"];
    const SEPARATORS: [&str; 4] = ["  ", " \t", "\n", "   "];
    let case = rng.random_range(0..4u8);
    let mut out = String::with_capacity(original.len() + 16);
    out.push_str(PREFIXES[rng.random_range(0..PREFIXES.len())]);
    for (i, word) in original.split(' ').enumerate() {
        if i > 0 {
            if rng.random_bool(0.1) {
                out.push(',');
            }
            if rng.random_bool(0.2) {
                out.push_str(SEPARATORS[rng.random_range(0..SEPARATORS.len())]);
            } else {
                out.push(' ');
            }
        }
        match case {
            0 => out.push_str(&word.to_uppercase()),
            1 => out.push_str(&word.to_lowercase()),
            2 => {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(&chars.as_str().to_lowercase());
                }
            }
            _ if rng.random_bool(0.3) => out.push_str(&word.to_uppercase()),
            _ => out.push_str(word),
        }
    }
    out.push_str(SUFFIXES[rng.random_range(0..SUFFIXES.len())]);
    if rng.random_bool(0.3) {
        out.push_str("  ");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use sift_core::normalize::normalize;

    use crate::body::original_prompt;

    #[test]
    fn variants_normalize_to_the_original() {
        let mut rng = StdRng::seed_from_u64(1);
        for (i, template) in TEMPLATES.iter().enumerate() {
            let original = original_prompt(template, "abc123", i as u64 * 1000 + 17);
            for _ in 0..200 {
                let variant = render_variant(&mut rng, &original);
                assert_ne!(variant, original);
                assert_eq!(normalize(&variant), normalize(&original), "{variant:?}");
            }
        }
    }

    #[test]
    fn distinct_intents_never_normalize_alike() {
        let mut seen = HashSet::new();
        for template in TEMPLATES {
            for id in [1u64, 12, 121, 1_211, 11, 112] {
                assert!(seen.insert(normalize(&original_prompt(template, "abc123", id))));
            }
        }
    }
}
