//! Sizes as written in the config: `512B`, `64KiB`, `10MiB`, `1GiB`.

use serde::{Deserialize, Deserializer, de};

/// A byte count parsed from `<number><unit>`; like durations, a bare number
/// is refused so that nobody has to guess the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as 64KiB")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Size, E> {
                parse(text).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Parse `<digits><B|KiB|MiB|GiB>`.
pub fn parse(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "invalid size `{text}`: expected a whole number followed by B, KiB, MiB or GiB (e.g. 10MiB)"
        )
    };
    let (n, unit) = super::duration::number_and_unit(text).ok_or_else(bad)?;
    let scale: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_read() {
        assert_eq!(parse("512B"), Ok(512));
        assert_eq!(parse("64KiB"), Ok(64 << 10));
        assert_eq!(parse("10MiB"), Ok(10 << 20));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
    }

    #[test]
    fn a_number_without_unit_or_a_strange_unit_is_refused() {
        for bad in [
            "30",
            "KiB",
            "",
            "1.5MiB",
            "3MB",
            "-1B",
            "10 KiB",
            "99999999999GiB",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
