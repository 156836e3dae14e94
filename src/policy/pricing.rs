//! The paid path's price phase: what a generation will cost, before the platform says so.
//!
//! The estimate only sizes the hold; the hold is settled at the `price` the platform charges.

use std::collections::HashMap;

use super::family::Family;
use super::money::Usd;

/// Prices of one family: lookup key → USD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyPrices {
    by_key: HashMap<String, Usd, foldhash::fast::RandomState>,
    max: Usd,
}

/// `[pricing]` of the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    families: HashMap<Family, FamilyPrices, foldhash::fast::RandomState>,
}

// === impl FamilyPrices ===

impl FamilyPrices {
    /// From `(key, price)` pairs; a flat family price uses the key `default`.
    pub fn new(entries: impl IntoIterator<Item = (String, Usd)>) -> Self {
        let by_key: HashMap<String, Usd, foldhash::fast::RandomState> = entries.into_iter().collect();
        let max = by_key.values().copied().max().unwrap_or_default();
        FamilyPrices { by_key, max }
    }

    /// Most specific match first: all dimensions joined with `/` (`kling_3_pro/10`), then each
    /// dimension alone, then `default`; an unlisted combination is held at the family's highest
    /// price so a hold never undershoots.
    pub fn estimate(&self, key: &[String]) -> Usd {
        let joined = key.join("/");
        std::iter::once(joined.as_str())
            .chain(key.iter().map(String::as_str))
            .chain(std::iter::once("default"))
            .find_map(|k| self.by_key.get(k).copied())
            .unwrap_or(self.max)
    }
}

// === impl PriceTable ===

impl PriceTable {
    /// Builds the table.
    pub fn new(families: HashMap<Family, FamilyPrices>) -> Self {
        PriceTable { families: families.into_iter().collect() }
    }

    /// The hold for a request of `family` with price key `key`; `None` when the family has no
    /// prices configured.
    pub fn estimate(&self, family: Family, key: &[String]) -> Option<Usd> {
        self.families.get(&family).map(|p| p.estimate(key))
    }

    /// Does this config price (and so offer) `family`?
    pub fn offers(&self, family: Family) -> bool {
        self.families.contains_key(&family)
    }

    /// The families priced.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.families.keys().copied()
    }
}

/// A charged price above this many times the quote is not believed.
pub const UNTRUSTED_FACTOR: i64 = 3;

/// The price to settle at: the platform's, unless it is missing (`"calculating"`), negative, or
/// more than [`UNTRUSTED_FACTOR`] × the quote. `Err` carries the quote and why the reported
/// price was refused (to be logged as an error).
pub fn settle_price(quoted: Usd, reported: Option<Usd>) -> Result<Usd, (Usd, &'static str)> {
    match reported {
        None => Ok(quoted),
        Some(p) if p < Usd::ZERO => Err((quoted, "negative")),
        Some(p) if quoted > Usd::ZERO && p.micros() > quoted.micros().saturating_mul(UNTRUSTED_FACTOR) => {
            Err((quoted, "far above the quote"))
        }
        Some(p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_prices_are_sanity_checked() {
        let q = Usd::parse("0.12").unwrap();
        assert_eq!(settle_price(q, None), Ok(q));
        assert_eq!(settle_price(q, Some(Usd::parse("0.10").unwrap())), Ok(Usd::parse("0.10").unwrap()));
        assert_eq!(settle_price(q, Some(Usd::parse("0.36").unwrap())), Ok(Usd::parse("0.36").unwrap()));
        assert_eq!(settle_price(q, Some(Usd::parse("-5.0000").unwrap())), Err((q, "negative")));
        assert_eq!(settle_price(q, Some(Usd::parse("120").unwrap())), Err((q, "far above the quote")));
    }

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_most_specific_then_single_then_default_then_max() {
        let p = FamilyPrices::new([
            ("kling_3_pro/10".to_string(), usd("0.90")),
            ("kling_3_pro".to_string(), usd("0.50")),
            ("5".to_string(), usd("0.25")),
            ("default".to_string(), usd("0.30")),
        ]);
        assert_eq!(p.estimate(&keys(&["kling_3_pro", "10"])), usd("0.90"));
        assert_eq!(p.estimate(&keys(&["kling_3_pro", "7"])), usd("0.50"));
        assert_eq!(p.estimate(&keys(&["kling_2.1", "5"])), usd("0.25"));
        assert_eq!(p.estimate(&keys(&["kling_2.1", "10"])), usd("0.30"));
        let no_default = FamilyPrices::new([("10".to_string(), usd("0.12")), ("15".to_string(), usd("0.18"))]);
        assert_eq!(no_default.estimate(&keys(&["20"])), usd("0.18"));
    }

    #[test]
    fn unpriced_family_has_no_estimate() {
        let t = PriceTable::new(HashMap::from([(
            Family::builtin("sora"),
            FamilyPrices::new([("10".into(), usd("0.12"))]),
        )]));
        assert_eq!(t.estimate(Family::builtin("sora"), &keys(&["10"])), Some(usd("0.12")));
        assert_eq!(t.estimate(Family::builtin("veo"), &keys(&["veo-3-fast"])), None);
    }
}
