//! The prompt normalizer: maps cosmetic variants of one prompt to one string.
//!
//! normalize(prompt) = Unicode NFKC, lowercase, remove model special tokens (`<|...|>`,
//! `[INST]`, `[/INST]`, `<s>`, `</s>`), remove punctuation, collapse whitespace runs to one
//! space, trim. The rules are versioned by [`NORMALIZER_VERSION`], stored with every event, so
//! a change of rules shows in the data instead of silently splitting intents.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// Bump whenever [`normalize`] can map some input to a different output.
/// 2: ASCII symbols (`$ + < = > ^ ` | ~`) are kept, as Unicode's are: only punctuation goes
/// (1 removed them, so "is a < b" and "is a > b" were one intent).
pub const NORMALIZER_VERSION: u16 = 2;

/// Special tokens of common chat templates, matched after lowercasing.
const SPECIAL_TOKENS: [&str; 4] = ["[inst]", "[/inst]", "<s>", "</s>"];

/// Removing a character can let NFKC compose its neighbours anew (`e` `.` `U+0301`), so the
/// pipeline runs until it reaches a fixed point; real text settles in two passes.
const MAX_PASSES: usize = 8;

/// Normalizes a prompt; idempotent: `normalize(&normalize(x)) == normalize(x)`.
pub fn normalize(prompt: &str) -> String {
    if prompt.is_ascii() {
        ascii(prompt)
    } else {
        general(prompt)
    }
}

/// The same result as [`general`] for ASCII text, cheaply: NFKC leaves ASCII as it is and
/// lowercasing is bytewise. Removing punctuation can form a token anew (`<.s>`); only `<s>`
/// and `<|...|>` can be formed (the others hold punctuation), so another pass is needed only
/// when a `<` is left. The hot path of ingest (most prompts are ASCII), checked against
/// [`general`] by property tests.
fn ascii(prompt: &str) -> String {
    if !prompt.bytes().any(|b| b == b'<' || b == b'[') {
        // Every special token starts with `<` or `[`: none is in the text, and removing
        // punctuation cannot form one. Lowercasing, stripping and collapsing in one pass then
        // give what the passes below give (the common case: one String, no second pass).
        return strip_and_collapse_lowercase_ascii(prompt);
    }
    let mut current = strip_and_collapse(&remove_special_tokens(&prompt.to_ascii_lowercase()));
    for _ in 1..MAX_PASSES {
        if !current.contains('<') {
            break;
        }
        let next = strip_and_collapse(&remove_special_tokens(&current));
        if next == current {
            break;
        }
        current = next;
    }
    current
}

fn general(prompt: &str) -> String {
    let mut current = pass(prompt);
    for _ in 1..MAX_PASSES {
        let next = pass(&current);
        if next == current {
            break;
        }
        current = next;
    }
    current
}

fn pass(input: &str) -> String {
    let lowered: String = input.nfkc().flat_map(char::to_lowercase).collect();
    let out = strip_and_collapse(&remove_special_tokens(&lowered));
    // Lowercasing after composition can yield sequences NFKC would compose again.
    out.nfkc().collect()
}

/// Removes punctuation, collapses whitespace runs to one space, trims.
fn strip_and_collapse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else if is_punctuation(c) {
            // Removed outright, so "code!" and "code" agree.
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

/// [`strip_and_collapse`] of the ASCII lowercase of `text` (ASCII), in one pass over bytes
/// (letters are never punctuation nor whitespace, so lowercasing first or on the way gives
/// the same).
fn strip_and_collapse_lowercase_ascii(text: &str) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    let mut pending_space = false;
    for &b in text.as_bytes() {
        match ASCII_CLASS[usize::from(b & 0x7f)] {
            Class::Space => pending_space = !out.is_empty(),
            Class::Punctuation => {}
            Class::Kept => {
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                out.push(b.to_ascii_lowercase());
            }
        }
    }
    // Only ASCII bytes were pushed.
    String::from_utf8(out).unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Space,
    Punctuation,
    Kept,
}

/// What [`strip_and_collapse`] does with each ASCII character: `char::is_whitespace` first,
/// then [`is_punctuation`] (checked equal to them by a test).
const ASCII_CLASS: [Class; 128] = {
    let mut table = [Class::Kept; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        table[b] = if matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            Class::Space
        } else if c.is_ascii_punctuation()
            && !matches!(
                c,
                b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~'
            )
        {
            Class::Punctuation
        } else {
            Class::Kept
        };
        b += 1;
    }
    table
};

/// Replaces each special token with a space (tokens separate words; they never join them).
fn remove_special_tokens(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    'scan: while let Some(pos) = rest.find(['<', '[']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(inner) = tail.strip_prefix("<|") {
            if let Some(end) = inner.find("|>") {
                out.push(' ');
                rest = &inner[end + 2..];
                continue 'scan;
            }
        }
        for token in SPECIAL_TOKENS {
            if let Some(after) = tail.strip_prefix(token) {
                out.push(' ');
                rest = after;
                continue 'scan;
            }
        }
        let first = tail.chars().next().map_or(1, char::len_utf8);
        out.push_str(&tail[..first]);
        rest = &tail[first..];
    }
    out.push_str(rest);
    out
}

/// Unicode punctuation (general category P*). Symbols (S*) stay: `<` and `>`, `+` and `=`
/// change what a prompt asks.
fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        // ASCII punctuation but its symbols, which is ASCII's P*; spares the table lookup.
        c.is_ascii_punctuation()
            && !matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|' | '~')
    } else {
        c.general_category_group() == GeneralCategoryGroup::Punctuation
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[test]
    fn ascii_punctuation_is_exactly_unicode_p() {
        use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
        for c in (0u8..128).map(char::from) {
            let p = c.general_category_group() == GeneralCategoryGroup::Punctuation;
            assert_eq!(super::is_punctuation(c), p, "{c:?}");
        }
    }

    #[test]
    fn the_ascii_table_classifies_as_strip_and_collapse_does() {
        use super::{is_punctuation, Class, ASCII_CLASS};
        for c in (0u8..128).map(char::from) {
            let expected = if c.is_whitespace() {
                Class::Space
            } else if is_punctuation(c) {
                Class::Punctuation
            } else {
                Class::Kept
            };
            assert_eq!(ASCII_CLASS[c as usize], expected, "{c:?}");
        }
    }

    #[test]
    fn symbols_keep_intents_apart() {
        assert_ne!(super::normalize("is a < b?"), super::normalize("is a > b?"));
        assert_ne!(
            super::normalize("what is 2+2"),
            super::normalize("what is 2=2")
        );
        assert_eq!(super::normalize("Is a < b?!"), "is a < b");
        assert_eq!(super::normalize("<.s>hello"), "hello");
    }

    proptest! {
        #[test]
        fn the_ascii_path_equals_the_general_one(text in "[\\x00-\\x7f]{0,80}") {
            prop_assert_eq!(super::ascii(&text), super::general(&text));
        }

        #[test]
        fn the_ascii_path_equals_the_general_one_on_tokens_and_spacing(
            text in prop::collection::vec(prop::sample::select(vec![
                "a", "B", " ", "\t", "\u{b}", "\u{c}", "\r\n", "\u{0}", "\u{7f}", ".", "!", "|",
                "<", ">", "[", "]", "/", "<|", "|>", "<s>", "</s>", "[INST]", "[/inst]", "<S>",
                "[Inst]", "<<s>s>", "x]", "$", "~", "<.s>", "<|", "<!|x|!>", "+", "=", "^",
                "`",
            ]), 0..30).prop_map(|parts| parts.concat())
        ) {
            prop_assert_eq!(super::ascii(&text), super::general(&text));
        }
    }
}
