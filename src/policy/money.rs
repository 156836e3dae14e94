//! Money as integer micro-dollars. Prices and balances arrive as decimal strings of any scale
//! (`"0.1200"`, `"0.30"`, `12.34`); floats never touch them.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::str::FromStr;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

const MICROS_PER_USD: i64 = 1_000_000;

/// The largest amount any input may name: one billion dollars. Far above any real price, budget
/// or balance, and far enough below `i64::MAX` micro-dollars (9.2 trillion dollars) that sums of
/// millions of amounts stay exact. Anything larger is refused as not an amount, so a platform or
/// an operator writing 23 digits gets an error, never a panic.
pub const MAX: Usd = Usd(1_000_000_000 * MICROS_PER_USD);

/// An amount of US dollars, stored as micro-dollars (1e-6 USD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(i64);

/// A string that is not a usable amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a decimal USD amount: {0:?}")]
pub struct MoneyError(pub String);

// === impl Usd ===

impl Usd {
    /// Zero dollars.
    pub const ZERO: Usd = Usd(0);

    /// From micro-dollars.
    pub const fn from_micros(micros: i64) -> Usd {
        Usd(micros)
    }

    /// The amount in micro-dollars.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Parses a decimal string (`"0.1200"`, `"12"`, `"1e-2"`). Sub-micro digits round up, so a
    /// hold is never smaller than the real price.
    pub fn parse(s: &str) -> Result<Usd, MoneyError> {
        let t = s.trim();
        let d = Decimal::from_str(t).or_else(|_| Decimal::from_scientific(t)).map_err(|_| MoneyError(s.to_string()))?;
        Self::from_decimal(d).ok_or_else(|| MoneyError(s.to_string()))
    }

    /// Parses a JSON string or number (the platform's `price` and `balance` come as either).
    pub fn from_json(v: &serde_json::Value) -> Option<Usd> {
        match v {
            serde_json::Value::String(s) => Usd::parse(s).ok(),
            // Number's Display is its exact source text (no float round trip for integers and
            // plain decimals).
            serde_json::Value::Number(n) => Usd::parse(&n.to_string()).ok(),
            _ => None,
        }
    }

    fn from_decimal(d: Decimal) -> Option<Usd> {
        // Checked: `Decimal`'s `*` panics past 28 digits.
        let micros = d
            .checked_mul(Decimal::from(MICROS_PER_USD))?
            .round_dp_with_strategy(0, RoundingStrategy::AwayFromZero)
            .to_i64()?;
        (micros.unsigned_abs() <= MAX.0.unsigned_abs()).then_some(Usd(micros))
    }

    /// Never below zero.
    pub fn max_zero(self) -> Usd {
        Usd(self.0.max(0))
    }

    /// In dollars, for metrics gauges only (never for arithmetic).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_USD as f64
    }
}

impl fmt::Display for Usd {
    /// Four decimals like the platform (`"0.1200"`), six when the amount needs them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / MICROS_PER_USD as u64;
        let frac = abs % MICROS_PER_USD as u64;
        if frac % 100 == 0 {
            write!(f, "{sign}{whole}.{:04}", frac / 100)
        } else {
            write!(f, "{sign}{whole}.{frac:06}")
        }
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, o: Usd) -> Usd {
        Usd(self.0.saturating_add(o.0))
    }
}

impl Sub for Usd {
    type Output = Usd;
    fn sub(self, o: Usd) -> Usd {
        Usd(self.0.saturating_sub(o.0))
    }
}

impl AddAssign for Usd {
    fn add_assign(&mut self, o: Usd) {
        *self = *self + o;
    }
}

impl SubAssign for Usd {
    fn sub_assign(&mut self, o: Usd) {
        *self = *self - o;
    }
}

impl std::iter::Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_platform_prices_of_any_scale() {
        assert_eq!(Usd::parse("0.1200").unwrap().micros(), 120_000);
        assert_eq!(Usd::parse("0.30").unwrap().micros(), 300_000);
        assert_eq!(Usd::parse("12").unwrap().micros(), 12_000_000);
        assert_eq!(Usd::parse(" 0.0123 ").unwrap().micros(), 12_300);
        assert_eq!(Usd::parse("1e-2").unwrap().micros(), 10_000);
        // Sub-micro digits round up: holds never undershoot.
        assert_eq!(Usd::parse("0.0000001").unwrap().micros(), 1);
    }

    #[test]
    fn rejects_non_amounts() {
        for bad in ["", "calculating", "1,20", "0x10", "NaN"] {
            assert!(Usd::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absurd_amounts_are_errors_not_panics() {
        for bad in [
            "99999999999999999999999",
            "-99999999999999999999999",
            "79228162514264337593543950335",
            "1e30",
            "1000000000.000001",
        ] {
            assert!(Usd::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Usd::parse("1000000000").unwrap(), MAX);
        let v: serde_json::Value =
            serde_json::from_str(r#"{"p":99999999999999999999999,"q":"99999999999999999999999"}"#).unwrap();
        assert_eq!(Usd::from_json(&v["p"]), None);
        assert_eq!(Usd::from_json(&v["q"]), None);
    }

    #[test]
    fn reads_json_strings_and_numbers_without_floats() {
        let v: serde_json::Value = serde_json::from_str(r#"{"a":"12.3400","b":12.34,"c":7,"d":null}"#).unwrap();
        assert_eq!(Usd::from_json(&v["a"]), Some(Usd::from_micros(12_340_000)));
        assert_eq!(Usd::from_json(&v["b"]), Some(Usd::from_micros(12_340_000)));
        assert_eq!(Usd::from_json(&v["c"]), Some(Usd::from_micros(7_000_000)));
        assert_eq!(Usd::from_json(&v["d"]), None);
    }

    #[test]
    fn displays_like_the_platform() {
        assert_eq!(Usd::from_micros(120_000).to_string(), "0.1200");
        assert_eq!(Usd::from_micros(12_345_600).to_string(), "12.3456");
        assert_eq!(Usd::from_micros(1).to_string(), "0.000001");
        assert_eq!(Usd::from_micros(-50_000).to_string(), "-0.0500");
        assert_eq!(Usd::ZERO.to_string(), "0.0000");
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Usd::from_micros(i64::MAX) + Usd::from_micros(1), Usd::from_micros(i64::MAX));
        assert_eq!((Usd::from_micros(1) - Usd::from_micros(3)).max_zero(), Usd::ZERO);
    }
}
