//! Numbers in ClickHouse's texts: the exception code of an error answer (how the batcher and
//! the API tell a refusal, an overload or a timeout apart) and the days of a table's TTL.

/// The number right after the first `marker` in `text`.
pub fn number_after(text: &str, marker: &str) -> Option<u64> {
    let start = text.find(marker)? + marker.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The code of a ClickHouse exception text (`Code: 53. DB::Exception: …`).
pub fn exception_code(text: &str) -> Option<u32> {
    number_after(text, "Code: ").and_then(|code| u32::try_from(code).ok())
}

#[cfg(test)]
mod tests {
    use super::{exception_code, number_after};

    #[test]
    fn exception_codes_are_read_from_the_answer() {
        assert_eq!(
            exception_code("Code: 53. DB::Exception: Type mismatch"),
            Some(53)
        );
        assert_eq!(
            exception_code("bad response: Code: 210. DB::NetException"),
            Some(210)
        );
        assert_eq!(exception_code("no code here"), None);
        assert_eq!(
            number_after("TTL x + toIntervalDay(30)", "toIntervalDay("),
            Some(30)
        );
        assert_eq!(number_after("Code: abc", "Code: "), None);
    }
}
