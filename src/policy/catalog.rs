//! The model catalog: which families the platform has and what their bodies must look like,
//! read from a TOML file (`config/models.toml`, also built in) at start and on every reload.
//!
//! Every problem in the file is reported on its own line, naming the family and the rule, like
//! the rest of the config; a catalog with problems is never half-loaded.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use crate::policy::image::ImageLimits;

use super::family::{Check, Cond, Family, FamilySpec, PriceDim, Rule};

/// The catalog shipped with tollgate (`config/models.toml`), used when `[catalog]` names none.
pub const BUILTIN: &str = include_str!("../../config/models.toml");

const MIB: f64 = 1024.0 * 1024.0;

/// The families a config offers, longest path first so `kling/o1-video` wins over `kling`.
#[derive(Clone)]
pub struct Catalog {
    families: Arc<[Family]>,
    failures: Arc<crate::policy::failure::Rules>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilyEntry {
    path: String,
    id_field: String,
    #[serde(default)]
    price_by: Vec<PriceEntry>,
    #[serde(default)]
    aliases: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    rules: Vec<toml::Value>,
    #[serde(default)]
    status_trailing_slash: bool,
    /// Body fields the platform accepts that no rule checks (passed through as they are).
    #[serde(default)]
    extra_fields: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    field: String,
    default: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    check: String,
    field: Option<String>,
    fields: Option<Vec<String>>,
    groups: Option<Vec<Vec<String>>>,
    required: Option<bool>,
    min: Option<f64>,
    max: Option<f64>,
    values: Option<Vec<String>>,
    numbers: Option<bool>,
    max_mib: Option<f64>,
    max_width: Option<f64>,
    max_height: Option<f64>,
    max_megapixels: Option<f64>,
    urls: Option<bool>,
    message: Option<String>,
    when: Option<CondEntry>,
    unless: Option<CondEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CondEntry {
    field: Option<String>,
    #[serde(rename = "in")]
    values: Option<Vec<String>>,
    absent: Option<bool>,
    present: Option<Vec<String>>,
}

/// The checks and the optional keys each one reads (`field`/`fields`/`groups` aside).
const CHECKS: &[(&str, &[&str])] = &[
    ("text", &["required", "min", "max"]),
    ("enum", &["values", "required", "numbers"]),
    ("number", &["min", "max"]),
    ("integer", &["min", "max"]),
    ("boolean", &[]),
    ("url", &[]),
    ("callback_url", &[]),
    ("image", &["max_mib", "max_width", "max_height", "max_megapixels"]),
    ("images", &["min", "max", "max_mib", "max_width", "max_height", "max_megapixels", "urls"]),
    ("urls", &["max"]),
    ("exclusive", &[]),
    ("together", &[]),
    ("modes", &[]),
    ("max_total", &["max"]),
    ("forbidden", &[]),
];

fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.split('/').all(|seg| {
            !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
        && !p.split('/').any(|seg| seg == "generate" || seg == "generations" || seg == "quote")
        && !matches!(p.split('/').next(), Some("data" | "gateway"))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn usize_of(v: f64, what: &str, p: &mut Vec<String>) -> usize {
    if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
        v as usize
    } else {
        p.push(format!("{what} must be a whole number ≥ 0"));
        0
    }
}

impl RuleEntry {
    /// The keys given beyond `check`, `field(s)`, `groups`, `message`, `when`, `unless`.
    fn options(&self) -> Vec<&'static str> {
        [
            ("required", self.required.is_some()),
            ("min", self.min.is_some()),
            ("max", self.max.is_some()),
            ("values", self.values.is_some()),
            ("numbers", self.numbers.is_some()),
            ("max_mib", self.max_mib.is_some()),
            ("max_width", self.max_width.is_some()),
            ("max_height", self.max_height.is_some()),
            ("max_megapixels", self.max_megapixels.is_some()),
            ("urls", self.urls.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    /// `max_mib` (required) and the optional dimension limits of an image rule.
    fn image_limits(&self, at: &str, p: &mut Vec<String>) -> ImageLimits {
        let Some(mib) = self.max_mib else {
            p.push(format!("{at}: check {:?} needs `max_mib`", self.check));
            return ImageLimits::bytes(0);
        };
        let positive = |v: Option<f64>, key: &str, default: usize, p: &mut Vec<String>| match v {
            None => default,
            Some(x) if x > 0.0 => usize_of(x.round(), &format!("{at}: {key}"), p),
            Some(_) => {
                p.push(format!("{at}: {key} must be above 0"));
                default
            }
        };
        let mut l = ImageLimits::bytes(usize_of((mib * MIB).round(), &format!("{at}: max_mib"), p));
        l.max_width = positive(self.max_width, "max_width", l.max_width, p);
        l.max_height = positive(self.max_height, "max_height", l.max_height, p);
        l.max_pixels = positive(self.max_megapixels.map(|m| m * 1e6), "max_megapixels", l.max_pixels, p);
        l
    }

    fn into_rule(self, at: &str, p: &mut Vec<String>) -> Option<Rule> {
        let Some((_, allowed)) = CHECKS.iter().find(|(c, _)| *c == self.check) else {
            let known: Vec<&str> = CHECKS.iter().map(|(c, _)| *c).collect();
            p.push(format!("{at}: unknown check {:?} (known: {})", self.check, known.join(", ")));
            return None;
        };
        let before = p.len();
        for k in self.options() {
            if !allowed.contains(&k) {
                p.push(format!("{at}: `{k}` does not apply to check {:?}", self.check));
            }
        }
        let multi = matches!(self.check.as_str(), "exclusive" | "together" | "max_total");
        let field = match (&self.field, multi || self.check == "modes") {
            (Some(f), false) => f.clone(),
            (None, false) => {
                p.push(format!("{at}: check {:?} needs `field`", self.check));
                String::new()
            }
            (Some(_), true) => {
                p.push(format!(
                    "{at}: check {:?} takes `{}`, not `field`",
                    self.check,
                    if multi { "fields" } else { "groups" }
                ));
                String::new()
            }
            (None, true) => String::new(),
        };
        let fields = match (&self.fields, multi) {
            (Some(fs), true) if fs.len() >= 2 => fs.clone(),
            (_, true) => {
                p.push(format!("{at}: check {:?} needs `fields` with at least two names", self.check));
                Vec::new()
            }
            (Some(_), false) => {
                p.push(format!("{at}: `fields` does not apply to check {:?}", self.check));
                Vec::new()
            }
            (None, false) => Vec::new(),
        };
        if self.groups.is_some() && self.check != "modes" {
            p.push(format!("{at}: `groups` does not apply to check {:?}", self.check));
        }
        let need = |v: Option<f64>, key: &str, p: &mut Vec<String>| -> f64 {
            v.unwrap_or_else(|| {
                p.push(format!("{at}: check {:?} needs `{key}`", self.check));
                0.0
            })
        };
        let required = self.required.unwrap_or(false);
        let check = match self.check.as_str() {
            "text" => {
                let min = usize_of(self.min.unwrap_or(0.0), &format!("{at}: min"), p);
                let max = self.max.map(|m| usize_of(m, &format!("{at}: max"), p)).unwrap_or(usize::MAX);
                Check::Text { field, required, min, max }
            }
            "enum" => {
                let values = self.values.clone().unwrap_or_default();
                if values.is_empty() {
                    p.push(format!("{at}: check \"enum\" needs a non-empty `values`"));
                }
                Check::Enum { field, values, required, numbers: self.numbers.unwrap_or(false) }
            }
            "number" => Check::Number { field, min: self.min.unwrap_or(f64::MIN), max: self.max.unwrap_or(f64::MAX) },
            "integer" => {
                let whole = |v: Option<f64>, d: i64| v.filter(|x| x.fract() == 0.0).map(|x| x as i64).unwrap_or(d);
                if self.min.is_some_and(|x| x.fract() != 0.0) || self.max.is_some_and(|x| x.fract() != 0.0) {
                    p.push(format!("{at}: an integer's min and max must be whole numbers"));
                }
                Check::Integer { field, min: whole(self.min, i64::MIN), max: whole(self.max, i64::MAX) }
            }
            "boolean" => Check::Boolean { field },
            "url" => Check::Url { field },
            "callback_url" => Check::CallbackUrl { field },
            "image" => Check::Image { field, limits: self.image_limits(at, p) },
            "images" => Check::Images {
                field,
                min: usize_of(self.min.unwrap_or(0.0), &format!("{at}: min"), p),
                max: usize_of(need(self.max, "max", p), &format!("{at}: max"), p),
                limits: self.image_limits(at, p),
                urls: self.urls.unwrap_or(false),
            },
            "urls" => Check::Urls { field, max: usize_of(need(self.max, "max", p), &format!("{at}: max"), p) },
            "exclusive" => Check::Exclusive { fields },
            "together" => Check::Together { fields },
            "max_total" => {
                Check::MaxTotal { fields, max: usize_of(need(self.max, "max", p), &format!("{at}: max"), p) }
            }
            "modes" => match &self.groups {
                Some(g) if g.len() >= 2 && g.iter().all(|grp| !grp.is_empty()) => Check::Modes { groups: g.clone() },
                _ => {
                    p.push(format!("{at}: check \"modes\" needs `groups`: at least two non-empty lists of fields"));
                    Check::Modes { groups: Vec::new() }
                }
            },
            _ => Check::Forbidden { field },
        };
        let when = self.when.and_then(|c| c.into_cond(&format!("{at}: when"), p));
        let unless = self.unless.and_then(|c| c.into_cond(&format!("{at}: unless"), p));
        (p.len() == before).then_some(Rule { check, when, unless, message: self.message })
    }
}

impl CondEntry {
    fn into_cond(self, at: &str, p: &mut Vec<String>) -> Option<Cond> {
        match (self.field, self.values, self.present) {
            (Some(field), Some(values), None) => Some(Cond::In { field, values, absent: self.absent.unwrap_or(false) }),
            (None, None, Some(fields)) if !fields.is_empty() && self.absent.is_none() => Some(Cond::Present(fields)),
            _ => {
                p.push(format!("{at} must be {{ field = \"…\", in = [\"…\"] }} (absent = true optional) or {{ present = [\"…\"] }}"));
                None
            }
        }
    }
}

fn family(i: usize, value: &toml::Value, p: &mut Vec<String>) -> Option<FamilySpec> {
    let name =
        value.get("path").and_then(|v| v.as_str()).map(|s| format!("{s:?}")).unwrap_or_else(|| format!("#{}", i + 1));
    let at = format!("catalog family {name}");
    let entry = match FamilyEntry::deserialize(value.clone()) {
        Ok(e) => e,
        Err(e) => {
            p.push(format!("{at}: {}", one_line(e.message())));
            return None;
        }
    };
    let before = p.len();
    if !valid_path(&entry.path) {
        p.push(format!("{at}: path must be lowercase segments of a-z, 0-9, '.', '_', '-' joined by '/' (not generate/generations/quote, not under data/ or gateway/)"));
    }
    if entry.id_field.is_empty() {
        p.push(format!("{at}: id_field must not be empty"));
    }
    let mut rules = Vec::new();
    for (j, v) in entry.rules.iter().enumerate() {
        let label = v.get("field").and_then(|f| f.as_str()).map(|f| format!(" ({f})")).unwrap_or_default();
        let rat = format!("{at} rules[{j}]{label}");
        match RuleEntry::deserialize(v.clone()) {
            Ok(r) => rules.extend(r.into_rule(&rat, p)),
            Err(e) => p.push(format!("{rat}: {}", one_line(e.message()))),
        }
    }
    let price_by = entry.price_by.into_iter().map(|d| PriceDim { field: d.field, default: d.default }).collect();
    let aliases = entry.aliases.into_iter().collect();
    let slash = entry.status_trailing_slash;
    let extra = entry.extra_fields.clone();
    (p.len() == before).then(|| {
        let mut spec = FamilySpec::new(entry.path, entry.id_field, price_by, aliases, rules);
        spec.status_trailing_slash = slash;
        spec.known_fields.extend(extra);
        spec
    })
}

/// `[failure_reasons]`: `people` and `policy`, each a list of phrases (compared without case).
fn failure_rules(v: Option<&toml::Value>, p: &mut Vec<String>) -> crate::policy::failure::Rules {
    let mut rules = crate::policy::failure::Rules::default();
    let Some(v) = v else { return rules };
    let Some(t) = v.as_table() else {
        p.push("catalog: failure_reasons must be a table of phrase lists (people = [..], policy = [..])".into());
        return rules;
    };
    for (k, v) in t {
        let slot = match k.as_str() {
            "people" => &mut rules.people,
            "policy" => &mut rules.policy,
            _ => {
                p.push(format!("catalog: failure_reasons.{k}: unknown class (people and policy are matched; everything else is other)"));
                continue;
            }
        };
        match v.as_array().map(|a| {
            a.iter()
                .map(|x| x.as_str().filter(|s| !s.trim().is_empty()).map(str::to_lowercase))
                .collect::<Option<Vec<_>>>()
        }) {
            Some(Some(phrases)) => *slot = phrases,
            _ => p.push(format!("catalog: failure_reasons.{k}: must be a list of non-empty strings")),
        }
    }
    rules
}

// === impl Catalog ===

impl Catalog {
    /// Reads a catalog file's text; `Err` lists every problem, one per line.
    pub fn parse(text: &str) -> Result<Catalog, Vec<String>> {
        let table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| vec![format!("catalog: {}", toml_syntax_error(text, &e))])?;
        let mut p = Vec::new();
        for key in table.keys().filter(|k| *k != "family" && *k != "failure_reasons") {
            p.push(format!(
                "catalog: unknown key `{key}` (families are [[family]] tables, failure classes [failure_reasons])"
            ));
        }
        let failures = failure_rules(table.get("failure_reasons"), &mut p);
        let entries = match table.get("family") {
            Some(toml::Value::Array(a)) if !a.is_empty() => a.as_slice(),
            _ => {
                p.push("catalog: no families ([[family]] tables)".into());
                &[]
            }
        };
        let specs: Vec<FamilySpec> = entries.iter().enumerate().filter_map(|(i, v)| family(i, v, &mut p)).collect();
        let mut seen = HashSet::new();
        for s in &specs {
            if !seen.insert(s.path.as_str()) {
                p.push(format!("catalog: family {:?} is listed twice", s.path));
            }
        }
        if !p.is_empty() {
            return Err(p);
        }
        let mut families: Vec<Family> = specs.into_iter().map(Family::intern).collect();
        families.sort_by_key(|f| std::cmp::Reverse(f.path().len()));
        Ok(Catalog { families: families.into(), failures: Arc::new(failures) })
    }

    /// Reads a catalog file.
    pub fn load(path: &std::path::Path) -> Result<Catalog, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("catalog: cannot read {}: {e}", path.display())])?;
        Catalog::parse(&text).map_err(|ps| {
            ps.into_iter().map(|p| p.replacen("catalog", &format!("catalog {}", path.display()), 1)).collect()
        })
    }

    /// The catalog built into the binary (`config/models.toml` as shipped).
    ///
    /// # Panics
    /// Never in a released build: a test parses the built-in file.
    pub fn builtin() -> &'static Catalog {
        static BUILT_IN: OnceLock<Catalog> = OnceLock::new();
        BUILT_IN.get_or_init(|| {
            Catalog::parse(BUILTIN).unwrap_or_else(|p| panic!("the built-in catalog is broken: {}", p.join("; ")))
        })
    }

    /// The family at exactly `path`.
    pub fn get(&self, path: &str) -> Option<Family> {
        self.families.iter().copied().find(|f| f.path() == path)
    }

    /// The family whose path starts `rest` (`/v1/` stripped), and what follows its `/`.
    pub fn split<'a>(&self, rest: &'a str) -> Option<(Family, &'a str)> {
        self.families
            .iter()
            .find_map(|f| rest.strip_prefix(f.path()).and_then(|t| t.strip_prefix('/')).map(|t| (*f, t)))
    }

    /// The rules that class a failed generation's message (`[failure_reasons]`).
    pub fn failure_rules(&self) -> &crate::policy::failure::Rules {
        &self.failures
    }

    /// Every family, longest path first.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// Their paths, sorted, joined by `, ` (for messages).
    pub fn paths(&self) -> String {
        let mut v: Vec<&str> = self.families.iter().map(|f| f.path()).collect();
        v.sort_unstable();
        v.join(", ")
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::builtin().clone()
    }
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.families.iter()).finish()
    }
}

impl PartialEq for Catalog {
    /// Same families with the same specs, and the same failure rules.
    fn eq(&self, other: &Catalog) -> bool {
        self.families.len() == other.families.len()
            && self.families.iter().zip(other.families.iter()).all(|(a, b)| std::ptr::eq(a.spec(), b.spec()))
            && self.failures == other.failures
    }
}

/// A TOML syntax error with its line and column.
pub fn toml_syntax_error(text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map(|sp| {
        let before = &text[..sp.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        format!(" at line {line}, column {col}")
    });
    format!("TOML syntax{}: {}", at.unwrap_or_default(), e.message().trim())
}

// The family lookups that need the built-in catalog live here, beside it, so `family` never
// reaches back up to `catalog`.
impl Family {
    /// The current family at `path`, for records and outcomes the store kept: a family since
    /// removed from the catalog still names its path (and platform id field), with no rules.
    pub fn named(path: &str) -> Family {
        Catalog::builtin();
        match Family::find_interned(path) {
            Some(f) => f,
            None => Family::intern(FamilySpec::new(
                path.to_string(),
                "generation_id".into(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            )),
        }
    }

    /// The built-in catalog's family at `path` (tests and the simulated platform).
    ///
    /// # Panics
    /// When the built-in catalog has no such family.
    pub fn builtin(path: &str) -> Family {
        Catalog::builtin().get(path).unwrap_or_else(|| panic!("no built-in family {path:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_with_longest_paths_first() {
        let c = Catalog::builtin();
        assert_eq!(c.families().len(), 10);
        let pos = |p: &str| c.families().iter().position(|f| f.path() == p).unwrap();
        assert!(pos("kling/o1-video") < pos("kling"));
        assert_eq!(
            c.split("kling/o1-video/generate").map(|(f, t)| (f.path(), t)),
            Some(("kling/o1-video", "generate"))
        );
        assert_eq!(c.split("kling/generations/x").map(|(f, t)| (f.path(), t)), Some(("kling", "generations/x")));
        assert!(c.get("midjourney").is_none());
        assert_eq!(c.get("veo").unwrap().spec().aliases, vec![("model_type".to_string(), "model".to_string())]);
    }

    #[test]
    fn failure_reasons_class_the_platforms_messages() {
        use crate::policy::failure::Reason;
        let r = Catalog::builtin().failure_rules();
        assert_eq!(
            r.classify("Image contains photorealistic people. Please try with a different image."),
            Reason::People
        );
        assert_eq!(r.classify("Your prompt violates our content policy"), Reason::Policy);
        assert_eq!(r.classify("Task timed out"), Reason::Other);
        let bad =
            "[failure_reasons]\npeople = [\"\"]\nweather = [\"rain\"]\n[[family]]\npath = \"x\"\nid_field = \"id\"\n";
        let p = Catalog::parse(bad).unwrap_err();
        assert!(p.iter().any(|l| l.contains("failure_reasons.people: must be a list of non-empty strings")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("failure_reasons.weather: unknown class")), "{p:?}");
    }

    #[test]
    fn reparsing_the_same_text_reuses_the_same_specs() {
        let again = Catalog::parse(BUILTIN).unwrap();
        assert_eq!(&again, Catalog::builtin());
    }

    #[test]
    fn every_problem_is_reported_with_its_family_and_rule() {
        let text = r#"
            stray = 1
            [[family]]
            path = "Bad Path"
            id_field = "generation_id"
            rules = [
              { field = "prompt", check = "txt" },
              { field = "n", check = "integer", min = 1.5 },
              { check = "images", field = "images", max_mib = 10 },
              { fields = ["a"], check = "exclusive" },
              { field = "x", check = "boolean", values = ["a"] },
              { field = "y", check = "enum", values = ["a"], when = { field = "m" } },
            ]
            [[family]]
            path = "ok"
            id_field = "generation_id"
            colour = "blue"
            [[family]]
            path = "dup"
            id_field = "id"
            [[family]]
            path = "dup"
            id_field = "id"
        "#;
        let p = Catalog::parse(text).unwrap_err();
        let has = |s: &str| assert!(p.iter().any(|l| l.contains(s)), "no line with {s:?} in {p:#?}");
        has("unknown key `stray`");
        has("family \"Bad Path\": path must be");
        has("rules[0] (prompt): unknown check \"txt\"");
        has("rules[1] (n): an integer's min and max must be whole numbers");
        has("rules[2] (images): check \"images\" needs `max`");
        has("rules[3]: check \"exclusive\" needs `fields` with at least two names");
        has("rules[4] (x): `values` does not apply to check \"boolean\"");
        has("rules[5] (y): when must be");
        has("family \"ok\": unknown field `colour`");
        has("family \"dup\" is listed twice");
        assert_eq!(p.len(), 10, "{p:#?}");
        assert!(Catalog::parse("[[family]\n").unwrap_err()[0].contains("line 1"));
    }
}
