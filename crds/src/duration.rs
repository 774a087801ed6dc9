//! Gateway API duration strings (GEP-2257): one to four `<number><unit>`
//! pairs, units `h`, `m`, `s`, `ms`, numbers of at most five digits, e.g.
//! `5s`, `1h30m`, `500ms`.

use std::time::Duration;

/// The regular expression the CRD schema uses to validate durations.
pub const DURATION_PATTERN: &str = "^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// A CEL rule list (`x-kubernetes-validations`) for a duration field: the
/// duration is at least `min`. CEL's `duration()` reads Go durations, a
/// superset of ours; values that do not match [`DURATION_PATTERN`] are left
/// to the pattern's own error rather than failing inside the rule.
pub(crate) fn at_least(min: &str, message: &str) -> serde_json::Value {
    let rule = format!("!self.matches('{DURATION_PATTERN}') || duration(self) >= duration('{min}')");
    serde_json::json!([{ "rule": rule, "message": message }])
}

/// Parses a Gateway API duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: expected e.g. 5s, 500ms, 1h30m");
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h1m1s1ms"), Ok(Duration::from_millis(3_661_001)));
        for bad in ["", "5", "s", "1.5s", "-1s", "100000s", "1d", "1h1m1s1ms1h", " 5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
