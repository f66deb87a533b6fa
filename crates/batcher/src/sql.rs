//! Names bound into SQL text: the one place that fills a template's `{name}` placeholders
//! (the database, a table, a TTL, a condition built by the caller). ClickHouse cannot bind a
//! database or table name as a query parameter, so those are written into the text; doing it
//! here, in one pass, means a value is never scanned again for placeholders, and a
//! placeholder that ClickHouse binds itself (`{name:Type}`, with `.param(...)`) is left as it
//! is.

/// `template` with each `{name}` of `names` replaced by its value, in one pass over the
/// template: values are written as they are (a `{…}` inside one is not filled in), and every
/// other brace, including a placeholder not given here and ClickHouse's own `{name:Type}`
/// parameters, is kept.
pub fn render(template: &str, names: &[(&str, &str)]) -> String {
    debug_assert!(
        names.iter().all(|(name, _)| is_identifier(name)),
        "placeholder names are identifiers: {names:?}"
    );
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let filled = after.find('}').and_then(|close| {
            let name = &after[..close];
            names
                .iter()
                .find(|(given, _)| *given == name)
                .map(|(_, value)| (close, *value))
        });
        match filled {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `name` may be written into SQL as a database or table name without quoting: ASCII
/// letters, digits and `_`, at least one.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A ClickHouse string literal of `text` (quotes and backslashes escaped).
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::{is_identifier, render};

    #[test]
    fn every_given_placeholder_is_filled_wherever_it_appears() {
        let sql = render(
            "INSERT INTO {database}.{table} SELECT * FROM {database}.{source}",
            &[
                ("database", "db"),
                ("table", "ai_events_copy"),
                ("source", "ai_events_old"),
            ],
        );
        assert_eq!(
            sql,
            "INSERT INTO db.ai_events_copy SELECT * FROM db.ai_events_old"
        );
    }

    #[test]
    fn placeholders_not_given_are_kept_for_a_later_render() {
        let sql = render(
            "CREATE TABLE {database}.{table} TTL x + INTERVAL {raw_ttl_days} DAY",
            &[("database", "db"), ("raw_ttl_days", "30")],
        );
        assert_eq!(sql, "CREATE TABLE db.{table} TTL x + INTERVAL 30 DAY");
        assert_eq!(
            render(&sql, &[("table", "ai_events_old")]),
            "CREATE TABLE db.ai_events_old TTL x + INTERVAL 30 DAY"
        );
    }

    #[test]
    fn clickhouse_query_parameters_are_left_for_the_server() {
        let template =
            "SELECT * FROM {db}.t WHERE tenant_id = {tenant:String} AND x IN {keys:Array(String)}";
        assert_eq!(
            render(template, &[("db", "d"), ("tenant", "t"), ("keys", "k")]),
            "SELECT * FROM d.t WHERE tenant_id = {tenant:String} AND x IN {keys:Array(String)}"
        );
    }

    #[test]
    fn values_are_not_scanned_again_and_stray_braces_stay() {
        assert_eq!(
            render("{a} {b}", &[("a", "{b}"), ("b", "2")]),
            "{b} 2",
            "a value holding a placeholder is written as it is"
        );
        assert_eq!(render("{{a}} { a } {a", &[("a", "1")]), "{1} { a } {a");
        assert_eq!(render("no placeholders", &[("a", "1")]), "no placeholders");
        assert_eq!(render("{a}", &[]), "{a}");
    }

    #[test]
    fn identifiers_are_letters_digits_and_underscores() {
        for good in ["ai_analytics", "sift_test_42", "_", "A1"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "a-b", "db.t", "a b", "db;DROP", "`db`", "é"] {
            assert!(!is_identifier(bad), "{bad:?}");
        }
    }
}
