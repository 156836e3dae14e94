//! Property tests standing in for fuzz targets (stable toolchain): the request validator, the
//! image checker and the upstream-error normaliser never panic on arbitrary input, and their
//! answers keep their invariants. Bounded: a few thousand cases each, seconds in CI.

use http::StatusCode;
use proptest::prelude::*;
use tollgate::policy::family::Family;
use tollgate::policy::image::fixtures::{b64, png};
use tollgate::policy::image::{check_base64_image, ImageLimits};
use tollgate::policy::validate::{parse_object, validate};
use tollgate::upstream::normalize::normalize;

fn family() -> impl Strategy<Value = Family> {
    prop::sample::select(tollgate::policy::catalog::Catalog::builtin().families().to_vec())
}

/// JSON-ish bodies: mostly objects with the fields the rules read, of any type.
fn body() -> impl Strategy<Value = String> {
    let field = prop::sample::select(vec![
        "prompt",
        "duration",
        "orientation",
        "image_base64",
        "image_url",
        "callback_url",
        "model",
        "model_type",
        "images",
        "images_base64",
        "images_url",
        "images_urls",
        "aspect_ratio",
        "quality",
        "temperature",
        "seed",
        "bytes_image",
        "start_frame",
        "end_frame",
        "reference_images",
        "img_resolution",
        "cfg_scale",
        "keep_original_sound",
    ]);
    let value = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        ".{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        prop::collection::vec(".{0,20}", 0..8).prop_map(|v| serde_json::to_string(&v).unwrap()),
        "[A-Za-z0-9+/=]{0,64}".prop_map(|s| format!("\"{s}\"")),
        Just(format!("\"{}\"", b64(&png(2, 2, 0)))),
        Just(format!("\"data:image/png;base64,{}\"", b64(&png(2, 2, 0)))),
        Just("{\"nested\": [1, {\"x\": null}]}".to_string()),
    ];
    prop::collection::vec((field, value), 0..8).prop_map(|fields| {
        let inner: Vec<String> = fields.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", inner.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

    #[test]
    fn validator_never_panics_on_structured_bodies(f in family(), b in body()) {
        if let Ok(fields) = parse_object(b.as_bytes()) {
            match validate(f, &fields) {
                Ok(v) => prop_assert_eq!(v.price_key.len(), f.price_dimensions().len()),
                // Every refusal names a field.
                Err(e) => prop_assert!(!e.field.is_empty()),
            }
        }
    }

    #[test]
    fn validator_never_panics_on_bytes(f in family(), bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(fields) = parse_object(&bytes) {
            let _ = validate(f, &fields);
        }
    }

    #[test]
    fn image_checker_never_panics_and_bounds_size(s in ".{0,300}", max in 0usize..2048) {
        if let Ok(info) = check_base64_image(&s, &ImageLimits::bytes(max)) {
            prop_assert!(info.decoded_len <= max);
            prop_assert!(info.width > 0 && info.height > 0);
        }
    }

    #[test]
    fn image_checker_on_mutated_images(flip in 0usize..200, byte in any::<u8>(), w in 0u32..5000, h in 0u32..5000) {
        let mut img = png(w, h, 100);
        let i = flip % img.len();
        img[i] = byte;
        let _ = check_base64_image(&b64(&img), &ImageLimits::bytes(10 * 1024 * 1024));
    }

    #[test]
    fn normaliser_always_yields_a_detail(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..256), retry in proptest::option::of(".{0,12}")) {
        let status = StatusCode::from_u16(status).unwrap();
        let n = normalize(status, retry.as_deref(), &body);
        prop_assert!(!n.detail.is_empty());
        prop_assert!(n.status.as_u16() >= 400);
        prop_assert!(n.status != StatusCode::UNAUTHORIZED && n.status != StatusCode::FORBIDDEN);
        if n.status == StatusCode::SERVICE_UNAVAILABLE { prop_assert!(n.retry_after.is_some()); }
    }

    #[test]
    fn normaliser_on_json_envelopes(status in 400u16..600, key in prop::sample::select(vec!["detail", "message", "error", "msg"]), text in ".{0,64}") {
        let body = serde_json::json!({ key: text }).to_string();
        let n = normalize(StatusCode::from_u16(status).unwrap(), None, body.as_bytes());
        prop_assert!(!n.detail.is_empty());
    }
}
