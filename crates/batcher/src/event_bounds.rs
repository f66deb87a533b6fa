//! Time bounds on `ai_events` as SQL conditions, shared by the session recomputation and the
//! rollups: each is written on the sort key's `toStartOfHour(event_time)` as well as on
//! `event_time`, so that ClickHouse skips the granules outside the bound (on `event_time`
//! alone it reads every granule: it skips by the key only for a condition on the key's own
//! expression; measured on 26.9). Hours are in UTC, as the key's.

/// `event_time >= {since}`, written on the sort key too.
pub(crate) fn events_since(since: &str) -> String {
    format!("toStartOfHour(event_time) >= toStartOfHour({since}, 'UTC') AND event_time >= {since}")
}

/// `{from} <= event_time < {to}`, written on the sort key too.
pub(crate) fn events_between(from: &str, to: &str) -> String {
    format!(
        "{} AND toStartOfHour(event_time) <= toStartOfHour({to}, 'UTC') AND event_time < {to}",
        events_since(from)
    )
}

/// `event_time` in `[from_ms, to_ms)`, written on the sort key too.
pub(crate) fn events_between_ms(from_ms: i64, to_ms: i64) -> String {
    events_between(&utc(from_ms), &utc(to_ms))
}

/// Epoch milliseconds as a UTC time expression (whatever the server's time zone).
pub(crate) fn utc(ms: i64) -> String {
    format!("fromUnixTimestamp64Milli({ms}, 'UTC')")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_range_bounds_both_the_hour_of_the_sort_key_and_the_time() {
        assert_eq!(
            super::events_between_ms(1_000, 2_000),
            "toStartOfHour(event_time) >= toStartOfHour(fromUnixTimestamp64Milli(1000, 'UTC'), 'UTC') \
             AND event_time >= fromUnixTimestamp64Milli(1000, 'UTC') \
             AND toStartOfHour(event_time) <= toStartOfHour(fromUnixTimestamp64Milli(2000, 'UTC'), 'UTC') \
             AND event_time < fromUnixTimestamp64Milli(2000, 'UTC')"
        );
    }
}
