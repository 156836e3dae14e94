//! The platform's model families as data: a path, an id field, price dimensions and the rules a
//! generate body must follow. They come from the model catalog (`catalog.rs`,
//! `config/models.toml`); `Family` is a cheap `Copy` handle to one family's spec.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// One field that selects the price, and the platform's value when the request leaves it out.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceDim {
    /// Request field.
    pub field: String,
    /// Its default.
    pub default: String,
}

/// A condition on the request body that switches a rule on (`when`) or off (`unless`).
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// The field's value (string or number, as text) is one of `values`; `absent` is the answer
    /// when the field is missing.
    In {
        /// Field (aliases apply).
        field: String,
        /// Matching values.
        values: Vec<String>,
        /// Whether a missing field matches.
        absent: bool,
    },
    /// Any of the fields is given (not null; an array or string not empty).
    Present(Vec<String>),
}

/// What one rule checks. Fields are the catalog file's keys, documented in `config/models.toml`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// A string of `min..=max` characters.
    Text { field: String, required: bool, min: usize, max: usize },
    /// One of `values` (numbers too, as text, when `numbers`).
    Enum { field: String, values: Vec<String>, required: bool, numbers: bool },
    /// A number in `min..=max`.
    Number { field: String, min: f64, max: f64 },
    /// An integer in `min..=max`.
    Integer { field: String, min: i64, max: i64 },
    /// `true` or `false`.
    Boolean { field: String },
    /// An http(s) URL.
    Url { field: String },
    /// An https URL for the platform to call back (left to the webhook relay when it runs).
    CallbackUrl { field: String },
    /// A base64 image within `limits` (decoded size, declared dimensions).
    Image { field: String, limits: crate::policy::image::ImageLimits },
    /// An array of `min..=max` base64 images (or http(s) URLs, when `urls`).
    Images { field: String, min: usize, max: usize, limits: crate::policy::image::ImageLimits, urls: bool },
    /// An array of at most `max` http(s) URLs.
    Urls { field: String, max: usize },
    /// At most one of the fields.
    Exclusive { fields: Vec<String> },
    /// All of the fields or none.
    Together { fields: Vec<String> },
    /// Fields from at most one of the groups.
    Modes { groups: Vec<Vec<String>> },
    /// The arrays hold at most `max` items between them.
    MaxTotal { fields: Vec<String>, max: usize },
    /// The field must be absent.
    Forbidden { field: String },
}

/// A check, when it applies, and the message that replaces its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// What is checked.
    pub check: Check,
    /// Only when this holds.
    pub when: Option<Cond>,
    /// Not when this holds.
    pub unless: Option<Cond>,
    /// Replaces the check's own message (not those of the images inside an array).
    pub message: Option<String>,
}

/// Everything the gateway knows about one family.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySpec {
    /// Path segment(s) after `/v1/`; also the family's key in `[pricing]`.
    pub path: String,
    /// Name of the id field in the platform's answers.
    pub id_field: String,
    /// Request fields that select the price, in lookup order.
    pub price_by: Vec<PriceDim>,
    /// `(alias, field)`: rules and prices read `alias` when `field` is absent.
    pub aliases: Vec<(String, String)>,
    /// Checked in order.
    pub rules: Vec<Rule>,
    /// The platform's status path ends in `/` (Sora's does).
    pub status_trailing_slash: bool,
    /// Every body field a generate may carry: those the rules, prices and aliases name, plus the
    /// catalog's `extra_fields`. Anything else is refused, because an unknown field may change
    /// what the platform charges.
    pub known_fields: std::collections::BTreeSet<String>,
    /// Route templates for logs and metrics: generate, status, list, quote.
    templates: [String; 4],
}

impl Check {
    /// The body fields this check reads.
    pub fn fields(&self) -> Vec<&str> {
        use Check::*;
        match self {
            Text { field, .. }
            | Enum { field, .. }
            | Number { field, .. }
            | Integer { field, .. }
            | Boolean { field }
            | Url { field }
            | CallbackUrl { field } => vec![field],
            Image { field, .. } | Images { field, .. } | Urls { field, .. } | Forbidden { field } => vec![field],
            Exclusive { fields } | Together { fields } | MaxTotal { fields, .. } => {
                fields.iter().map(String::as_str).collect()
            }
            Modes { groups } => groups.iter().flatten().map(String::as_str).collect(),
        }
    }
}

impl FamilySpec {
    /// A spec; the route templates are derived from the path.
    pub fn new(
        path: String,
        id_field: String,
        price_by: Vec<PriceDim>,
        aliases: Vec<(String, String)>,
        rules: Vec<Rule>,
    ) -> Self {
        let templates = [
            format!("/v1/{path}/generate"),
            format!("/v1/{path}/generations/{{id}}"),
            format!("/v1/{path}/generations"),
            format!("/v1/{path}/quote"),
        ];
        let mut known: std::collections::BTreeSet<String> =
            ["prompt", "callback_url"].iter().map(|s| s.to_string()).collect();
        known.extend(price_by.iter().map(|d| d.field.clone()));
        known.extend(aliases.iter().flat_map(|(a, f)| [a.clone(), f.clone()]));
        for r in &rules {
            known.extend(r.check.fields().into_iter().map(str::to_string));
            for c in [&r.when, &r.unless].into_iter().flatten() {
                match c {
                    Cond::In { field, .. } => {
                        known.insert(field.clone());
                    }
                    Cond::Present(fields) => known.extend(fields.iter().cloned()),
                }
            }
        }
        FamilySpec {
            path,
            id_field,
            price_by,
            aliases,
            rules,
            status_trailing_slash: false,
            known_fields: known,
            templates,
        }
    }
}

/// A model family of the platform (`/v1/{family}/...`): a handle to its spec.
///
/// Specs are interned for the life of the process, so a handle is `Copy`, its strings are
/// `'static` (route labels), and a request keeps the rules it started with across a reload.
/// Reloading an unchanged catalog reuses the interned specs; each edited family adds one spec
/// of a few hundred bytes. Two handles are equal when their paths are.
#[derive(Clone, Copy)]
pub struct Family(&'static FamilySpec);

/// Every spec interned so far; the last one with a path is that path's current spec.
static INTERNED: Mutex<Vec<&'static FamilySpec>> = Mutex::new(Vec::new());

// === impl Family ===

impl Family {
    /// The latest family interned at `path`, if any.
    pub(super) fn find_interned(path: &str) -> Option<Family> {
        INTERNED.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().find(|s| s.path == path).copied().map(Family)
    }

    /// The interned handle for `spec`, which becomes its path's current spec.
    pub fn intern(spec: FamilySpec) -> Family {
        let mut all = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
        let s = match all.iter().position(|s| **s == spec) {
            Some(i) => all.remove(i),
            None => Box::leak(Box::new(spec)),
        };
        all.push(s);
        Family(s)
    }

    /// Path segment(s) after `/v1/`; also the key of this family in `[pricing]`.
    pub fn path(self) -> &'static str {
        &self.0.path
    }

    /// Name of the id field in the platform's responses.
    pub fn id_field(self) -> &'static str {
        &self.0.id_field
    }

    /// Request fields that select the price, in lookup order, with the platform's defaults.
    pub fn price_dimensions(self) -> &'static [PriceDim] {
        &self.0.price_by
    }

    /// The whole spec.
    pub fn spec(self) -> &'static FamilySpec {
        self.0
    }

    /// The platform's path for the status of generation `id`.
    pub fn status_path(self, id: &str) -> String {
        let slash = if self.0.status_trailing_slash { "/" } else { "" };
        format!("/v1/{}/generations/{id}{slash}", self.0.path)
    }

    /// `/v1/{path}/generate`, `/v1/{path}/generations/{id}` and `/v1/{path}/generations`.
    pub fn templates(self) -> &'static [String; 4] {
        &self.0.templates
    }
}

impl PartialEq for Family {
    fn eq(&self, other: &Family) -> bool {
        std::ptr::eq(self.0, other.0) || self.0.path == other.0.path
    }
}

impl Eq for Family {}

impl Hash for Family {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.path.hash(state)
    }
}

impl fmt::Debug for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Family({})", self.0.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_fields_follow_the_platform() {
        assert_eq!(Family::builtin("sora").id_field(), "generation_id");
        assert_eq!(Family::builtin("kling/o3-photo").id_field(), "generation_id");
        assert_eq!(Family::builtin("gemini").id_field(), "task_uuid");
        assert_eq!(Family::builtin("chatgpt-images").id_field(), "task_uuid");
    }

    #[test]
    fn interning_reuses_equal_specs_and_the_latest_names_the_path() {
        let spec = |id: &str| FamilySpec::new("intern-test".into(), id.into(), Vec::new(), Vec::new(), Vec::new());
        let a = Family::intern(spec("generation_id"));
        assert!(std::ptr::eq(a.spec(), Family::intern(spec("generation_id")).spec()));
        let b = Family::intern(spec("task_uuid"));
        assert_eq!(a, b, "same path, same family");
        assert_eq!(Family::named("intern-test").id_field(), "task_uuid");
        assert_eq!(a.id_field(), "generation_id", "a handle keeps its spec");
        // A path no catalog has is still a family (a record outliving its catalog entry).
        assert_eq!(Family::named("gone/model").templates()[2], "/v1/gone/model/generations");
    }
}
