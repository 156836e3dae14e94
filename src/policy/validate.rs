//! The paid path's validate phase (policy half): parse the JSON body and check it per family.
//!
//! The body is parsed once (`json.rs`) into values whose strings borrow from it, so large
//! strings (base64 images) are validated in place without being copied.
//! Unknown fields pass through untouched; what is forwarded is always the original bytes.

use std::borrow::Cow;
use std::collections::HashMap;

use super::family::{Check, Cond, Family, FamilySpec, Rule};
use super::image::{check_base64_image_marked, ImageError};
use super::json::{self, Json};
use super::scan::Marks;

/// Longest URL accepted in `image_url`, `callback_url` and image arrays.
pub const MAX_URL_LEN: usize = 2048;

/// The body is not a JSON object (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON at all (or not UTF-8).
    #[error("Invalid JSON body: {0}")]
    InvalidJson(String),
    /// JSON, but not an object.
    #[error("Request body must be a JSON object")]
    NotAnObject,
}

/// A field breaks a family rule (422). Shown to the client as `field: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Field path, e.g. `prompt` or `images_base64[2]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// What validation learnt that later stages need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Validated {
    /// Values of the family's price dimensions, defaults filled in.
    pub price_key: Vec<String>,
    /// Base64 images checked.
    pub images: usize,
    /// Their decoded bytes (logged; the images themselves never are).
    pub image_bytes: usize,
}

/// The top-level fields of a JSON object body.
pub struct Fields<'a> {
    // foldhash: seeded per process like std's, several times cheaper for these short keys.
    map: HashMap<Cow<'a, str>, Json<'a>, foldhash::fast::RandomState>,
    body: &'a [u8],
    marks: Option<&'a Marks>,
    /// Some key appeared more than once.
    repeated: bool,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError { field: field.into(), message: message.into() }
}

/// Parses the request body as a JSON object, borrowing its strings. A repeated key keeps its
/// last value, as the platform's parser does.
pub fn parse_object(body: &[u8]) -> Result<Fields<'_>, BodyError> {
    parse_object_marked(body, None)
}

/// As `parse_object`, with the body's scan marks (`scan.rs`), which spare large strings the
/// passes that would read them back from memory.
pub fn parse_object_marked<'a>(body: &'a [u8], marks: Option<&'a Marks>) -> Result<Fields<'a>, BodyError> {
    match json::parse_marked(body, marks) {
        Ok(Json::Obj(entries)) => {
            let n = entries.len();
            let map: HashMap<_, _, _> = entries.into_iter().collect();
            let repeated = map.len() != n;
            Ok(Fields { map, body, marks, repeated })
        }
        Ok(_) => Err(BodyError::NotAnObject),
        Err(e) => Err(BodyError::InvalidJson(e.to_string())),
    }
}

// === impl Fields ===

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.map.get(name).filter(|v| **v != Json::Null)
    }

    /// The top-level scalar fields not in `skip`: strings as they are, numbers and booleans as
    /// their JSON text. Strings over 256 bytes are left out (free text, not a setting).
    pub fn scalars(&self, skip: &[&str]) -> std::collections::BTreeMap<String, String> {
        self.map
            .iter()
            .filter(|(k, _)| !skip.contains(&k.as_ref()))
            .filter_map(|(k, v)| match v {
                Json::Str(s) if s.len() <= 256 => Some((k.to_string(), s.to_string())),
                Json::Num(n) => Some((k.to_string(), n.to_string())),
                Json::Bool(b) => Some((k.to_string(), b.to_string())),
                _ => None,
            })
            .collect()
    }

    /// Where a string field's value sits in the body, quotes included, when it can be replaced
    /// in place: written without escapes (so the parsed value borrows the body) in a body with no
    /// repeated key.
    pub fn str_span(&self, name: &str) -> Option<std::ops::Range<usize>> {
        let Some(Json::Str(Cow::Borrowed(s))) = self.get(name) else { return None };
        let start = (s.as_ptr() as usize).checked_sub(self.body.as_ptr() as usize)?;
        let end = start + s.len();
        let quoted = start >= 1 && self.body.get(start - 1) == Some(&b'"') && self.body.get(end) == Some(&b'"');
        (!self.repeated && quoted).then(|| start - 1..end + 1)
    }

    /// A string field, borrowed from the body when it has no escapes.
    pub fn str(&self, name: &str) -> Result<Option<&str>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Str(s)) => Ok(Some(s)),
            Some(_) => Err(err(name, "must be a string")),
        }
    }
}

/// Running totals while one body is checked.
struct Checker<'f, 'a> {
    f: &'f Fields<'a>,
    spec: &'static FamilySpec,
    out: Validated,
    /// `callback_url` is checked by the webhook relay instead (it has its own, stricter policy).
    relayed_callbacks: bool,
}

impl<'f, 'a> Checker<'f, 'a> {
    /// The field's name as sent and its value: `name` itself, else an alias of it.
    fn field<'n>(&self, name: &'n str) -> (&'n str, Option<&'f Json<'a>>) {
        let (f, spec): (&'f Fields<'a>, &'static FamilySpec) = (self.f, self.spec);
        if let Some(v) = f.get(name) {
            return (name, Some(v));
        }
        for (alias, of) in &spec.aliases {
            if of == name {
                if let Some(v) = f.get(alias) {
                    return (alias.as_str(), Some(v));
                }
            }
        }
        (name, None)
    }

    fn holds(&self, c: &Cond) -> bool {
        match c {
            Cond::In { field, values, absent } => match self.field(field).1 {
                None => *absent,
                Some(v) => scalar(v, &mut NumText::default()).is_some_and(|t| values.iter().any(|x| x == t)),
            },
            Cond::Present(fields) => fields.iter().any(|n| match self.field(n).1 {
                None => false,
                Some(Json::Arr(items)) => !items.is_empty(),
                Some(Json::Str(s)) => !s.is_empty(),
                Some(_) => true,
            }),
        }
    }

    fn rule(&mut self, r: &Rule) -> Result<(), ValidationError> {
        if r.when.as_ref().is_some_and(|c| !self.holds(c)) || r.unless.as_ref().is_some_and(|c| self.holds(c)) {
            return Ok(());
        }
        self.check(&r.check).map_err(|e| match (&r.message, e) {
            (Some(m), Own(field, _)) => err(field, m.clone()),
            (_, Own(field, m)) | (_, Inner(field, m)) => err(field, m),
        })
    }

    fn check(&mut self, c: &Check) -> Result<(), Failure> {
        match c {
            Check::Text { field, required, min, max } => {
                let (name, v) = self.field(field);
                match v {
                    None if *required => Err(Own(name.into(), "is required".into())),
                    None => Ok(()),
                    Some(Json::Str(s)) => {
                        let n = s.chars().count();
                        if n < *min || n > *max {
                            let m = if *max == usize::MAX {
                                format!("must be at least {min} characters (got {n})")
                            } else {
                                format!("must be between {min} and {max} characters (got {n})")
                            };
                            Err(Own(name.into(), m))
                        } else {
                            Ok(())
                        }
                    }
                    Some(_) => Err(Inner(name.into(), "must be a string".into())),
                }
            }
            Check::Enum { field, values, required, numbers } => {
                let (name, v) = self.field(field);
                let mut buf = NumText::default();
                let text = match v {
                    None if *required => return Err(Own(name.into(), "is required".into())),
                    None => return Ok(()),
                    Some(Json::Num(_)) if !*numbers => return Err(Inner(name.into(), "must be a string".into())),
                    Some(v) => match scalar(v, &mut buf) {
                        Some(t) => t,
                        None if *numbers => return Err(Inner(name.into(), "must be a string or a number".into())),
                        None => return Err(Inner(name.into(), "must be a string".into())),
                    },
                };
                if values.iter().any(|x| x == text) {
                    Ok(())
                } else {
                    Err(Own(name.into(), format!("must be one of {}", quoted(values))))
                }
            }
            Check::Number { field, min, max } => {
                self.in_range(field, *min, *max, serde_json::Number::as_f64, "must be a number")
            }
            Check::Integer { field, min, max } => {
                self.in_range(field, *min, *max, serde_json::Number::as_i64, "must be an integer")
            }
            Check::Boolean { field } => match self.field(field) {
                (_, None | Some(Json::Bool(_))) => Ok(()),
                (name, Some(_)) => Err(Inner(name.into(), "must be true or false".into())),
            },
            Check::Url { field } => match self.string(field)? {
                Some((name, u)) => check_url(name, u, false).map_err(Failure::own),
                None => Ok(()),
            },
            Check::CallbackUrl { field } => match self.string(field)? {
                Some((name, u)) if !self.relayed_callbacks => check_url(name, u, true).map_err(Failure::own),
                _ => Ok(()),
            },
            Check::Image { field, limits } => match self.string(field)? {
                Some((name, s)) => self.image_b64(name, s, limits),
                None => Ok(()),
            },
            Check::Images { field, min, max, limits, urls } => {
                let Some((name, items)) = self.strings(field)? else { return Ok(()) };
                if items.len() > *max {
                    return Err(Own(name.into(), format!("at most {max} images allowed, got {}", items.len())));
                }
                if items.len() < *min {
                    return Err(Own(name.into(), format!("at least {min} images required, got {}", items.len())));
                }
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{name}[{i}]");
                    if *urls && (item.starts_with("http://") || item.starts_with("https://")) {
                        check_url(&at, item, false).map_err(Failure::inner)?;
                    } else {
                        self.image_b64(&at, item, limits)?;
                    }
                }
                Ok(())
            }
            Check::Urls { field, max } => {
                let Some((name, items)) = self.strings(field)? else { return Ok(()) };
                if items.len() > *max {
                    return Err(Own(name.into(), format!("at most {max} images allowed, got {}", items.len())));
                }
                for (i, item) in items.iter().enumerate() {
                    check_url(&format!("{name}[{i}]"), item, false).map_err(Failure::inner)?;
                }
                Ok(())
            }
            Check::Exclusive { fields } => {
                let mut given = fields.iter().filter(|n| self.field(n).1.is_some());
                match (given.next(), given.next()) {
                    (Some(a), Some(b)) => {
                        Err(Own(a.clone(), format!("cannot be combined with {b}; provide one of them")))
                    }
                    _ => Ok(()),
                }
            }
            Check::Together { fields } => {
                let given: Vec<&String> = fields.iter().filter(|n| self.field(n).1.is_some()).collect();
                match fields.iter().find(|n| self.field(n).1.is_none()) {
                    Some(missing) if !given.is_empty() => {
                        let names: Vec<&str> = given.iter().map(|s| s.as_str()).collect();
                        Err(Own(missing.clone(), format!("is required when {} is given", names.join(", "))))
                    }
                    _ => Ok(()),
                }
            }
            Check::Modes { groups } => {
                let used: Vec<&Vec<String>> =
                    groups.iter().filter(|g| g.iter().any(|n| self.field(n).1.is_some())).collect();
                if used.len() > 1 {
                    let names: Vec<String> = used.iter().map(|g| g.join("/")).collect();
                    Err(Own(groups[0][0].clone(), format!("{} cannot be combined", names.join(", "))))
                } else {
                    Ok(())
                }
            }
            Check::MaxTotal { fields, max } => {
                let n: usize = fields
                    .iter()
                    .map(|name| match self.field(name).1 {
                        Some(Json::Arr(items)) => items.len(),
                        _ => 0,
                    })
                    .sum();
                if n > *max {
                    Err(Own(fields[0].clone(), format!("at most {max} images allowed in total, got {n}")))
                } else {
                    Ok(())
                }
            }
            Check::Forbidden { field } => match self.field(field) {
                (name, Some(_)) => Err(Own(name.into(), "is not accepted here".into())),
                (_, None) => Ok(()),
            },
        }
    }

    /// A number field within `min..=max`, read as `T` (`not_t`: the complaint when it is not one).
    fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
        &self,
        field: &str,
        min: T,
        max: T,
        read: fn(&serde_json::Number) -> Option<T>,
        not_t: &str,
    ) -> Result<(), Failure> {
        let (name, v) = self.field(field);
        match v.map(|j| match j {
            Json::Num(n) => read(n),
            _ => None,
        }) {
            None => Ok(()),
            Some(None) => Err(Inner(name.into(), not_t.into())),
            Some(Some(x)) if !(min..=max).contains(&x) => {
                Err(Own(name.into(), format!("must be between {min} and {max}")))
            }
            Some(Some(_)) => Ok(()),
        }
    }

    /// A string field (aliases applied), borrowed from the body.
    fn string<'n>(&self, name: &'n str) -> Result<Option<(&'n str, &'f str)>, Failure> {
        match self.field(name) {
            (_, None) => Ok(None),
            (n, Some(Json::Str(s))) => Ok(Some((n, s.as_ref()))),
            (n, Some(_)) => Err(Inner(n.into(), "must be a string".into())),
        }
    }

    /// An array of strings.
    fn strings<'n>(&self, name: &'n str) -> Result<Option<(&'n str, Vec<&'f str>)>, Failure> {
        let bad = |n: &str| Inner(n.into(), "must be an array of strings".into());
        match self.field(name) {
            (_, None) => Ok(None),
            (n, Some(Json::Arr(items))) => items
                .iter()
                .map(|i| match i {
                    Json::Str(s) => Ok(s.as_ref()),
                    _ => Err(bad(n)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Some((n, v))),
            (n, Some(_)) => Err(bad(n)),
        }
    }

    fn image_b64(&mut self, name: &str, value: &str, max: &crate::policy::image::ImageLimits) -> Result<(), Failure> {
        let f = self.f;
        let alphabet_only = |payload: &[u8]| f.marks.is_some_and(|m| m.alphabet_only(f.body, payload));
        let info = check_base64_image_marked(value, max, alphabet_only)
            .map_err(|e: ImageError| Inner(name.into(), e.to_string()))?;
        self.out.images += 1;
        self.out.image_bytes += info.decoded_len;
        Ok(())
    }

    /// Fills in the price key from the family's dimensions (aliases applied).
    fn price_key(&mut self) -> Result<(), ValidationError> {
        for d in &self.spec.price_by {
            let v = match self.field(&d.field) {
                (_, None) => d.default.clone(),
                (name, Some(v)) => scalar(v, &mut NumText::default())
                    .ok_or_else(|| err(name, "must be a string or a number"))?
                    .to_string(),
            };
            self.out.price_key.push(v);
        }
        Ok(())
    }
}

/// A string, or a number's JSON text (`duration` comes as either); `None` for other types.
fn scalar<'v>(v: &'v Json<'_>, buf: &'v mut NumText) -> Option<&'v str> {
    match v {
        Json::Str(s) => Some(s),
        Json::Num(n) => Some(buf.of(n)),
        _ => None,
    }
}

/// A number's JSON text, written on the stack (enum values like `duration: 10` are compared as
/// text on every request).
struct NumText {
    buf: [u8; 40],
}

impl Default for NumText {
    fn default() -> Self {
        NumText { buf: [0; 40] }
    }
}

impl NumText {
    fn of(&mut self, n: &serde_json::Number) -> &str {
        use std::io::Write;
        let mut w = &mut self.buf[..];
        let room = w.len();
        // Longer than 40 bytes (no enum value is): compared as empty, so it never matches.
        let len = if write!(w, "{n}").is_ok() { room - w.len() } else { 0 };
        std::str::from_utf8(&self.buf[..len]).unwrap_or("")
    }
}

/// A failed check: the rule's own complaint (a catalog `message` replaces it), or one about a
/// field's type or an image inside it (kept as is).
enum Failure {
    Own(String, String),
    Inner(String, String),
}
use Failure::{Inner, Own};

impl Failure {
    fn own(e: ValidationError) -> Failure {
        Own(e.field, e.message)
    }

    fn inner(e: ValidationError) -> Failure {
        Inner(e.field, e.message)
    }
}

fn quoted(allowed: &[impl AsRef<str>]) -> String {
    allowed.iter().map(|a| format!("'{}'", a.as_ref())).collect::<Vec<_>>().join(", ")
}

fn check_url(field: &str, u: &str, https_only: bool) -> Result<(), ValidationError> {
    if u.len() > MAX_URL_LEN {
        return Err(err(field, format!("must be at most {MAX_URL_LEN} characters")));
    }
    let rest = if let Some(r) = u.strip_prefix("https://") {
        r
    } else if let Some(r) = u.strip_prefix("http://").filter(|_| !https_only) {
        r
    } else if https_only {
        return Err(err(field, "must be a valid HTTPS URL"));
    } else {
        return Err(err(field, "must be an http(s) URL"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(field, "must be a valid URL with a host"));
    }
    // A port, when given, is 1-65535 (`:0` reaches nothing, and was charged for).
    let port = if host.ends_with(']') { None } else { host.rsplit_once(':').map(|(_, p)| p) };
    if port.is_some_and(|p| !p.is_empty() && p.parse::<u16>().map_or(true, |n| n == 0)) {
        return Err(err(field, "must name a port from 1 to 65535"));
    }
    Ok(())
}

/// Checks `fields` against the rules of `family`.
pub fn validate(family: Family, f: &Fields<'_>) -> Result<Validated, ValidationError> {
    validate_with(family, f, false)
}

/// [`validate`], leaving `callback_url` (beyond being a string) to the webhook relay when
/// `relayed_callbacks`.
pub fn validate_with(family: Family, f: &Fields<'_>, relayed_callbacks: bool) -> Result<Validated, ValidationError> {
    let spec = family.spec();
    let mut c = Checker { f, spec, out: Validated::default(), relayed_callbacks };
    for r in &spec.rules {
        c.rule(r)?;
    }
    c.price_key()?;
    // Only fields the catalog knows for this family: an unknown one may change what the
    // platform charges, and was never priced or checked.
    if !spec.rules.is_empty() {
        let mut unknown: Vec<&str> =
            f.map.keys().map(|k| k.as_ref()).filter(|k| !spec.known_fields.contains(*k)).collect();
        unknown.sort_unstable();
        if let Some(k) = unknown.first() {
            return Err(err(*k, format!("is not a field of {} (unknown fields may change the price; the model catalog lists what a family accepts)", spec.path)));
        }
    }
    Ok(c.out)
}

#[cfg(test)]
mod tests;
