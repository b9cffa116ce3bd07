//! Durations as written in the config: `500ms`, `30s`, `5m`, `2h`, `7d`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration parsed from `<number><unit>`; a bare number is refused so that
/// nobody has to guess the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that serde_yaml reports errors at the value itself
        // rather than at the enclosing mapping.
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as 30s")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Seconds, E> {
                parse(text).map(Seconds).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// `<digits><unit>` as a number and its unit (sizes are written alike).
pub(super) fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit))
}

/// Parse `<digits><ms|s|m|h|d>`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "invalid duration `{text}`: expected a whole number followed by ms, s, m, h or d (e.g. 30s)"
        )
    };
    let (n, unit) = number_and_unit(text).ok_or_else(bad)?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(bad()),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_read() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn a_number_without_unit_or_a_strange_unit_is_refused() {
        for bad in ["30", "s", "", "1.5s", "3x", "-1s", "10 s"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
