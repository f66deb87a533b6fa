//! The wall clock and the time formats people type, in one place: every timestamp sift writes
//! or compares is epoch milliseconds, and every flag or query parameter that names an instant
//! takes RFC 3339 or epoch seconds.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The latest instant a time given in epoch seconds may name: 2100-01-01T00:00:00Z. A larger
/// number is far more likely milliseconds given by mistake than a date.
pub const MAX_EPOCH_SECS: i64 = 4_102_444_800;

/// An instant that is neither RFC 3339 nor epoch seconds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is neither an RFC 3339 date-time nor epoch seconds")]
pub struct TimeError {
    pub text: String,
}

/// Now, in epoch milliseconds (0 on a clock set before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now, in whole epoch seconds.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

/// An RFC 3339 date-time as epoch milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Epoch milliseconds as RFC 3339 in UTC, to the millisecond (empty if out of range).
pub fn format_rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// An instant given as RFC 3339 or as whole epoch seconds (0 to [`MAX_EPOCH_SECS`]), as epoch
/// milliseconds.
pub fn parse_time_ms(text: &str) -> Result<i64, TimeError> {
    let epoch = text
        .parse::<i64>()
        .ok()
        .filter(|secs| (0..=MAX_EPOCH_SECS).contains(secs));
    epoch
        .map(|secs| secs * 1000)
        .or_else(|| parse_rfc3339_ms(text))
        .ok_or_else(|| TimeError {
            text: text.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seconds_and_rfc3339_name_the_same_instant() {
        assert_eq!(parse_time_ms("1700000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time_ms("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time_ms("2023-11-14T23:13:20.250+01:00"),
            Ok(1_700_000_000_250)
        );
        assert_eq!(parse_time_ms("0"), Ok(0));
    }

    #[test]
    fn other_text_and_out_of_range_epochs_are_refused() {
        for text in [
            "",
            "yesterday",
            "-1",
            "4102444801",
            "1700000000000",
            "2023-11-14",
        ] {
            let error = parse_time_ms(text).expect_err(text);
            assert_eq!(
                error.to_string(),
                format!("{text:?} is neither an RFC 3339 date-time nor epoch seconds")
            );
        }
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
        assert!((now_secs() - now_ms() / 1000).abs() <= 1);
    }
}
