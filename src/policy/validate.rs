//! Stage 4 of the paid path (policy half): parse the JSON body and check it per family.
//!
//! The body is parsed once (`json.rs`) into values whose strings borrow from it, so large
//! strings (base64 images) are validated in place without being copied.
//! Unknown fields pass through untouched; what is forwarded is always the original bytes.

use std::borrow::Cow;
use std::collections::HashMap;

use super::family::Family;
use super::json::{self, Json};
use super::image::{check_base64_image, ImageError};

const MIB: usize = 1024 * 1024;
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
    map: HashMap<Cow<'a, str>, Json<'a>>,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError { field: field.into(), message: message.into() }
}

/// Parses the request body as a JSON object, borrowing its strings. A repeated key keeps its
/// last value, as the platform's parser does.
pub fn parse_object(body: &[u8]) -> Result<Fields<'_>, BodyError> {
    match json::parse(body) {
        Ok(Json::Obj(entries)) => Ok(Fields { map: entries.into_iter().collect() }),
        Ok(_) => Err(BodyError::NotAnObject),
        Err(e) => Err(BodyError::InvalidJson(e.to_string())),
    }
}

// === impl Fields ===

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.map.get(name).filter(|v| **v != Json::Null)
    }

    /// True when the field is present and not null.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A string field, borrowed from the body when it has no escapes.
    pub fn str(&self, name: &str) -> Result<Option<&str>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Str(s)) => Ok(Some(s)),
            Some(_) => Err(err(name, "must be a string")),
        }
    }

    /// A string or a number, as text (`duration` comes as either).
    pub fn scalar_text(&self, name: &str) -> Result<Option<String>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Str(s)) => Ok(Some(s.to_string())),
            Some(Json::Num(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(err(name, "must be a string or a number")),
        }
    }

    /// A number field.
    pub fn number(&self, name: &str) -> Result<Option<f64>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Num(n)) => n.as_f64().map(Some).ok_or_else(|| err(name, "must be a number")),
            Some(_) => Err(err(name, "must be a number")),
        }
    }

    /// An integer field.
    pub fn integer(&self, name: &str) -> Result<Option<i64>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Num(n)) => n.as_i64().map(Some).ok_or_else(|| err(name, "must be an integer")),
            Some(_) => Err(err(name, "must be an integer")),
        }
    }

    /// A boolean field.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(err(name, "must be true or false")),
        }
    }

    /// An array of strings.
    pub fn str_array(&self, name: &str) -> Result<Option<Vec<&str>>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Arr(items)) => items
                .iter()
                .map(|i| match i {
                    Json::Str(s) => Ok(s.as_ref()),
                    _ => Err(err(name, "must be an array of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(err(name, "must be an array of strings")),
        }
    }
}

/// Running totals while one body is checked.
struct Check<'f, 'a> {
    f: &'f Fields<'a>,
    out: Validated,
    /// `callback_url` is checked by the webhook relay instead (it has its own, stricter policy).
    relayed_callbacks: bool,
}

impl<'f, 'a> Check<'f, 'a> {
    fn prompt(&mut self, required: bool, min: usize, max: usize) -> Result<(), ValidationError> {
        self.text("prompt", required, min, max)
    }

    fn text(&mut self, name: &str, required: bool, min: usize, max: usize) -> Result<(), ValidationError> {
        match self.f.str(name)? {
            None if required => Err(err(name, "is required")),
            None => Ok(()),
            Some(s) => {
                let n = s.chars().count();
                if n < min || n > max {
                    Err(err(name, format!("must be between {min} and {max} characters (got {n})")))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn one_of(&mut self, name: &str, allowed: &[&str], required: bool) -> Result<Option<String>, ValidationError> {
        let v = match self.f.str(name)? {
            None if required => return Err(err(name, "is required")),
            None => return Ok(None),
            Some(v) => v,
        };
        if allowed.contains(&v) {
            Ok(Some(v.to_string()))
        } else {
            Err(err(name, format!("must be one of {}", quoted(allowed))))
        }
    }

    fn range(&mut self, name: &str, min: f64, max: f64) -> Result<(), ValidationError> {
        match self.f.number(name)? {
            Some(x) if !(min..=max).contains(&x) => Err(err(name, format!("must be between {min} and {max}"))),
            _ => Ok(()),
        }
    }

    fn int_range(&mut self, name: &str, min: i64, max: i64) -> Result<(), ValidationError> {
        match self.f.integer(name)? {
            Some(x) if !(min..=max).contains(&x) => Err(err(name, format!("must be between {min} and {max}"))),
            _ => Ok(()),
        }
    }

    fn boolean(&mut self, name: &str) -> Result<(), ValidationError> {
        self.f.boolean(name).map(|_| ())
    }

    fn callback_url(&mut self) -> Result<(), ValidationError> {
        if self.relayed_callbacks {
            self.f.str("callback_url")?;
            return Ok(());
        }
        if let Some(u) = self.f.str("callback_url")? {
            check_url("callback_url", u, true)?;
        }
        Ok(())
    }

    fn image_url(&mut self, name: &str) -> Result<(), ValidationError> {
        if let Some(u) = self.f.str(name)? {
            check_url(name, u, false)?;
        }
        Ok(())
    }

    fn image_b64(&mut self, name: &str, value: &str, max: usize) -> Result<(), ValidationError> {
        let info = check_base64_image(value, max).map_err(|e: ImageError| err(name, e.to_string()))?;
        self.out.images += 1;
        self.out.image_bytes += info.decoded_len;
        Ok(())
    }

    fn image_field(&mut self, name: &str, max: usize) -> Result<(), ValidationError> {
        if let Some(s) = self.f.str(name)? {
            self.image_b64(name, s, max)?;
        }
        Ok(())
    }

    /// An array of base64 images (`url_ok`: elements may also be http(s) URLs).
    fn image_array(&mut self, name: &str, max_count: usize, max_bytes: usize, url_ok: bool) -> Result<usize, ValidationError> {
        let Some(items) = self.f.str_array(name)? else { return Ok(0) };
        if items.len() > max_count {
            return Err(err(name, format!("at most {max_count} images allowed, got {}", items.len())));
        }
        for (i, item) in items.iter().enumerate() {
            let field = format!("{name}[{i}]");
            if url_ok && (item.starts_with("http://") || item.starts_with("https://")) {
                check_url(&field, item, false)?;
            } else {
                self.image_b64(&field, item, max_bytes)?;
            }
        }
        Ok(items.len())
    }

    fn url_array(&mut self, name: &str, max_count: usize) -> Result<usize, ValidationError> {
        let Some(items) = self.f.str_array(name)? else { return Ok(0) };
        if items.len() > max_count {
            return Err(err(name, format!("at most {max_count} images allowed, got {}", items.len())));
        }
        for (i, item) in items.iter().enumerate() {
            check_url(&format!("{name}[{i}]"), item, false)?;
        }
        Ok(items.len())
    }

    fn exclusive(&mut self, a: &str, b: &str) -> Result<(), ValidationError> {
        if self.f.has(a) && self.f.has(b) {
            Err(err(a, format!("cannot be combined with {b}; provide one of them")))
        } else {
            Ok(())
        }
    }

    /// Fills in the price key from the family's dimensions.
    fn price_key(&mut self, family: Family) -> Result<(), ValidationError> {
        for (field, default) in family.price_dimensions() {
            let v = if *field == "model" && family == Family::Veo {
                // Veo's two doc versions name it `model` and `model_type`.
                match self.f.scalar_text("model")? {
                    Some(v) => Some(v),
                    None => self.f.scalar_text("model_type")?,
                }
            } else {
                self.f.scalar_text(field)?
            };
            self.out.price_key.push(v.unwrap_or_else(|| default.to_string()));
        }
        Ok(())
    }
}

fn quoted(allowed: &[&str]) -> String {
    allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ")
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
    Ok(())
}

const ASPECT_VIDEO: &[&str] = &["16:9", "9:16", "1:1"];

/// Checks `fields` against the rules of `family`.
pub fn validate(family: Family, f: &Fields<'_>) -> Result<Validated, ValidationError> {
    validate_with(family, f, false)
}

/// [`validate`], leaving `callback_url` (beyond being a string) to the webhook relay when
/// `relayed_callbacks`.
pub fn validate_with(family: Family, f: &Fields<'_>, relayed_callbacks: bool) -> Result<Validated, ValidationError> {
    let mut c = Check { f, out: Validated::default(), relayed_callbacks };
    match family {
        Family::Sora => {
            c.prompt(true, 1, 4000)?;
            c.one_of("orientation", &["9:16", "16:9"], false)?;
            if let Some(d) = f.scalar_text("duration")? {
                if d != "10" && d != "15" {
                    return Err(err("duration", "must be 10 or 15"));
                }
            }
            c.callback_url()?;
            c.exclusive("image_base64", "image_url")?;
            c.image_field("image_base64", 10 * MIB)?;
            c.image_url("image_url")?;
        }
        Family::Veo => {
            c.prompt(true, 10, 4000)?;
            let models = ["veo-3-fast", "veo-3-quality"];
            let model = match c.one_of("model", &models, false)? {
                Some(m) => Some(m),
                None => c.one_of("model_type", &models, false)?,
            };
            c.one_of("aspect_ratio", &["16:9", "9:16"], false)?;
            c.int_range("seed", 0, 1_000_000_000)?;
            c.text("watermark_text", false, 3, 14)?;
            c.one_of("filter_text", &["moderate", "translate", "moderate_translate"], false)?;
            c.callback_url()?;
            let modes = [f.has("bytes_image"), f.has("start_frame") || f.has("end_frame"), f.has("reference_images")];
            if modes.iter().filter(|m| **m).count() > 1 {
                return Err(err("bytes_image", "bytes_image, start_frame/end_frame and reference_images cannot be combined"));
            }
            if f.has("start_frame") != f.has("end_frame") {
                let missing = if f.has("start_frame") { "end_frame" } else { "start_frame" };
                return Err(err(missing, "is required when the other frame is given"));
            }
            c.image_field("bytes_image", 20 * MIB)?;
            c.image_field("start_frame", 20 * MIB)?;
            c.image_field("end_frame", 20 * MIB)?;
            if f.has("reference_images") {
                if model.as_deref() == Some("veo-3-quality") {
                    return Err(err("reference_images", "only supported by veo-3-fast"));
                }
                if c.image_array("reference_images", 3, 20 * MIB, false)? == 0 {
                    return Err(err("reference_images", "must hold 1 to 3 images"));
                }
            }
        }
        Family::Kling => {
            c.prompt(false, 1, 2500)?;
            c.text("negative_prompt", false, 0, 2500)?;
            let model = c.one_of(
                "model",
                &[
                    "kling_3", "kling_3_pro", "kling_3_motion", "kling_3_motion_pro", "kling_2.6_motion",
                    "kling_2.6_motion_pro", "kling_2.6", "kling_2.5_turbo", "kling_2.5_turbo_pro", "kling_2.1",
                    "kling_2.1_pro", "kling_2.1_master", "kling_1.6", "kling_1.6_pro",
                ],
                false,
            )?;
            if let Some(d) = f.scalar_text("duration")? {
                let per_second = matches!(model.as_deref(), Some("kling_3") | Some("kling_3_pro"));
                let ok = if per_second {
                    d.parse::<u32>().is_ok_and(|n| (3..=15).contains(&n))
                } else {
                    d == "5" || d == "10"
                };
                if !ok {
                    let want = if per_second { "an integer from 3 to 15" } else { "\"5\" or \"10\"" };
                    return Err(err("duration", format!("must be {want}")));
                }
            }
            c.one_of("aspect_ratio", ASPECT_VIDEO, false)?;
            c.range("cfg_scale", 0.0, 1.0)?;
            c.int_range("seed", 0, 2_147_483_647)?;
            c.callback_url()?;
            c.exclusive("image_base64", "image_url")?;
            c.image_field("image_base64", 10 * MIB)?;
            c.image_url("image_url")?;
        }
        Family::KlingO1Video => {
            c.prompt(true, 1, 2500)?;
            c.one_of("aspect_ratio", ASPECT_VIDEO, true)?;
            c.exclusive("images_base64", "images_urls")?;
            let images = c.image_array("images_base64", 5, 10 * MIB, false)? + c.url_array("images_urls", 5)?;
            let allowed: &[&str] = if images > 0 {
                &["3", "4", "5", "6", "7", "8", "9", "10"]
            } else {
                &["5", "10"]
            };
            match f.scalar_text("duration")? {
                None => return Err(err("duration", "is required")),
                Some(d) if !allowed.contains(&d.as_str()) => {
                    return Err(err("duration", format!("must be one of {}", quoted(allowed))))
                }
                Some(_) => {}
            }
            c.boolean("keep_original_sound")?;
            c.callback_url()?;
        }
        Family::KlingO3Video => {
            c.prompt(true, 1, 2500)?;
            c.exclusive("images_base64", "images_url")?;
            c.image_array("images_base64", 5, 10 * MIB, false)?;
            c.url_array("images_url", 5)?;
            if let Some(d) = f.scalar_text("duration")? {
                if !["5", "10", "15"].contains(&d.as_str()) {
                    return Err(err("duration", "must be 5, 10 or 15 seconds"));
                }
            }
            c.one_of("aspect_ratio", ASPECT_VIDEO, false)?;
            c.one_of("model", &["kling_o3", "kling_o3_pro"], false)?;
            c.boolean("keep_original_sound")?;
            c.callback_url()?;
        }
        Family::KlingO1Photo => {
            c.prompt(true, 1, 2500)?;
            let n = c.image_array("images_base64", 5, 10 * MIB, false)? + c.url_array("images_url", 5)?;
            if n > 5 {
                return Err(err("images_base64", format!("at most 5 images allowed in total, got {n}")));
            }
            c.one_of("img_resolution", &["1k", "2k"], false)?;
            c.one_of("aspect_ratio", &["9:16", "2:3", "3:4", "1:1", "4:3", "3:2", "16:9", "21:9"], false)?;
            c.callback_url()?;
        }
        Family::KlingO3Photo => {
            c.prompt(true, 1, 2500)?;
            c.exclusive("images_base64", "images_url")?;
            c.image_array("images_base64", 10, 10 * MIB, false)?;
            c.url_array("images_url", 10)?;
            c.one_of("img_resolution", &["1k", "2k", "4k"], false)?;
            c.one_of("aspect_ratio", &["1:1", "auto", "9:16", "2:3", "3:4", "4:3", "3:2", "16:9", "21:9"], false)?;
            c.boolean("prefer_multi_shots")?;
            c.callback_url()?;
        }
        Family::Gemini => {
            c.prompt(true, 1, 4000)?;
            let model = c.one_of("model", &["standard", "pro", "v2", "v2_lite", "pro_vip", "v2_vip"], false)?;
            let quality = c.one_of("quality", &["standard", "2k", "4k"], false)?;
            let standard = model.as_deref().is_none_or(|m| m == "standard");
            if standard && quality.as_deref().is_some_and(|q| q != "standard") {
                return Err(err("quality", "2k and 4k need the pro or v2 model"));
            }
            c.one_of(
                "aspect_ratio",
                &["auto", "21:9", "16:9", "4:3", "3:2", "1:1", "9:16", "3:4", "2:3", "5:4", "4:5"],
                false,
            )?;
            c.range("temperature", 0.0, 1.0)?;
            c.image_array("images", if standard { 4 } else { 8 }, 20 * MIB, true)?;
            c.callback_url()?;
        }
        Family::ChatgptImages => {
            c.prompt(true, 1, 4000)?;
            c.one_of("aspect_ratio", &["1:1", "4:3", "3:4"], false)?;
            c.image_array("images", 4, 20 * MIB, true)?;
            c.callback_url()?;
        }
        Family::Seedance => {
            c.prompt(false, 1, 4000)?;
            c.callback_url()?;
        }
    }
    c.price_key(family)?;
    Ok(c.out)
}

#[cfg(test)]
mod tests;
