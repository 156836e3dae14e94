use super::*;
use crate::policy::image::fixtures::{b64, jpeg, png};

fn check(family: Family, body: &str) -> Result<Validated, String> {
    let fields = parse_object(body.as_bytes()).map_err(|e| format!("body: {e}"))?;
    validate(family, &fields).map_err(|e| e.to_string())
}

fn field_of(family: Family, body: &str) -> String {
    let fields = parse_object(body.as_bytes()).unwrap();
    validate(family, &fields).unwrap_err().field
}

#[test]
fn body_must_be_a_json_object() {
    assert!(matches!(parse_object(b"{"), Err(BodyError::InvalidJson(_))));
    assert!(matches!(parse_object(b""), Err(BodyError::InvalidJson(_))));
    assert!(matches!(parse_object(b"\xff\xfe"), Err(BodyError::InvalidJson(_))));
    assert_eq!(parse_object(b"[1,2]").err(), Some(BodyError::NotAnObject));
    assert_eq!(parse_object(b"\"x\"").err(), Some(BodyError::NotAnObject));
    assert!(parse_object(b"{}").is_ok());
}

#[test]
fn sora_accepts_documented_bodies_and_fills_price_key() {
    let v = check(Family::builtin("sora"), r#"{"prompt":"A sunset","orientation":"16:9","duration":15}"#).unwrap();
    assert_eq!(v.price_key, vec!["15"]);
    // A field the catalog does not know may change the price: refused, named.
    let e = check(Family::builtin("sora"), r#"{"prompt":"A sunset","colour":"red","unknown":{"x":1}}"#).unwrap_err();
    assert!(e.starts_with("colour: is not a field of sora"), "{e}");
    let v = check(Family::builtin("sora"), r#"{"prompt":"A sunset"}"#).unwrap();
    assert_eq!(v.price_key, vec!["10"]);
    let img = b64(&png(32, 32, 0));
    let v = check(
        Family::builtin("sora"),
        &format!(r#"{{"prompt":"p","image_base64":"{img}","callback_url":"https://x.io/h"}}"#),
    )
    .unwrap();
    assert_eq!((v.images, v.image_bytes), (1, png(32, 32, 0).len()));
}

#[test]
fn sora_names_the_offending_field() {
    let img = b64(&png(32, 32, 0));
    let cases = [
        (r#"{}"#.to_string(), "prompt"),
        (r#"{"prompt":""}"#.to_string(), "prompt"),
        (format!(r#"{{"prompt":"{}"}}"#, "x".repeat(4001)), "prompt"),
        (r#"{"prompt":5}"#.to_string(), "prompt"),
        (r#"{"prompt":"p","orientation":"4:3"}"#.to_string(), "orientation"),
        (r#"{"prompt":"p","duration":5}"#.to_string(), "duration"),
        (r#"{"prompt":"p","duration":[10]}"#.to_string(), "duration"),
        (r#"{"prompt":"p","callback_url":"http://x.io/h"}"#.to_string(), "callback_url"),
        (r#"{"prompt":"p","callback_url":"https://"}"#.to_string(), "callback_url"),
        (r#"{"prompt":"p","callback_url":"https://example.com:0/h"}"#.to_string(), "callback_url"),
        (r#"{"prompt":"p","image_url":"https://example.com:0/a.png"}"#.to_string(), "image_url"),
        (format!(r#"{{"prompt":"p","image_base64":"{img}","image_url":"https://x.io/a.png"}}"#), "image_base64"),
        (r#"{"prompt":"p","image_base64":"not base64!"}"#.to_string(), "image_base64"),
        (r#"{"prompt":"p","image_url":"ftp://x.io/a.png"}"#.to_string(), "image_url"),
        (format!(r#"{{"prompt":"p","image_url":"https://x.io/{}"}}"#, "a".repeat(MAX_URL_LEN)), "image_url"),
    ];
    for (body, field) in cases {
        assert_eq!(field_of(Family::builtin("sora"), &body), field, "{body:.80}");
    }
}

#[test]
fn prompt_length_counts_characters_not_bytes() {
    let body = format!(r#"{{"prompt":"{}"}}"#, "é".repeat(4000));
    assert!(check(Family::builtin("sora"), &body).is_ok());
}

#[test]
fn null_means_absent() {
    assert!(check(Family::builtin("sora"), r#"{"prompt":"p","image_base64":null,"image_url":"https://x.io/a.png"}"#)
        .is_ok());
}

#[test]
fn detail_reads_field_then_reason() {
    assert_eq!(
        check(Family::builtin("sora"), r#"{"prompt":"p","orientation":"1:1"}"#).unwrap_err(),
        "orientation: must be one of '9:16', '16:9'"
    );
}

#[test]
fn veo_modes_and_models() {
    let img = b64(&jpeg(64, 64, 0));
    assert_eq!(
        check(Family::builtin("veo"), r#"{"prompt":"A cat in the sun"}"#).unwrap().price_key,
        vec!["veo-3-fast"]
    );
    assert_eq!(
        check(Family::builtin("veo"), r#"{"prompt":"A cat in the sun","model_type":"veo-3-quality"}"#)
            .unwrap()
            .price_key,
        vec!["veo-3-quality"]
    );
    assert_eq!(field_of(Family::builtin("veo"), r#"{"prompt":"short"}"#), "prompt");
    assert_eq!(field_of(Family::builtin("veo"), r#"{"prompt":"A cat in the sun","model":"veo-9"}"#), "model");
    assert_eq!(
        field_of(
            Family::builtin("veo"),
            &format!(
                r#"{{"prompt":"A cat in the sun","bytes_image":"{img}","start_frame":"{img}","end_frame":"{img}"}}"#
            )
        ),
        "bytes_image"
    );
    assert_eq!(
        field_of(Family::builtin("veo"), &format!(r#"{{"prompt":"A cat in the sun","start_frame":"{img}"}}"#)),
        "end_frame"
    );
    assert!(check(
        Family::builtin("veo"),
        &format!(r#"{{"prompt":"A cat in the sun","reference_images":["{img}","{img}"]}}"#)
    )
    .is_ok());
    assert_eq!(
        field_of(
            Family::builtin("veo"),
            &format!(r#"{{"prompt":"A cat in the sun","reference_images":["{img}","{img}","{img}","{img}"]}}"#)
        ),
        "reference_images"
    );
    assert_eq!(
        field_of(
            Family::builtin("veo"),
            &format!(r#"{{"prompt":"A cat in the sun","model":"veo-3-quality","reference_images":["{img}"]}}"#)
        ),
        "reference_images"
    );
}

#[test]
fn kling_duration_depends_on_model() {
    assert!(check(Family::builtin("kling"), r#"{"prompt":"p","duration":"5"}"#).is_ok());
    assert_eq!(field_of(Family::builtin("kling"), r#"{"prompt":"p","duration":"7"}"#), "duration");
    let v = check(Family::builtin("kling"), r#"{"prompt":"p","model":"kling_3_pro","duration":7}"#).unwrap();
    assert_eq!(v.price_key, vec!["kling_3_pro", "7"]);
    assert_eq!(field_of(Family::builtin("kling"), r#"{"prompt":"p","model":"kling_3","duration":16}"#), "duration");
    assert_eq!(field_of(Family::builtin("kling"), r#"{"prompt":"p","cfg_scale":1.5}"#), "cfg_scale");
    assert_eq!(field_of(Family::builtin("kling"), r#"{"prompt":"p","model":"kling_9"}"#), "model");
}

#[test]
fn kling_o1_video_requires_duration_and_aspect() {
    assert!(check(Family::builtin("kling/o1-video"), r#"{"prompt":"p","duration":"5","aspect_ratio":"16:9"}"#).is_ok());
    assert_eq!(field_of(Family::builtin("kling/o1-video"), r#"{"prompt":"p","aspect_ratio":"16:9"}"#), "duration");
    assert_eq!(field_of(Family::builtin("kling/o1-video"), r#"{"prompt":"p","duration":"5"}"#), "aspect_ratio");
    // 3-second clips only for image-to-video.
    assert_eq!(
        field_of(Family::builtin("kling/o1-video"), r#"{"prompt":"p","duration":"3","aspect_ratio":"1:1"}"#),
        "duration"
    );
    assert!(check(
        Family::builtin("kling/o1-video"),
        r#"{"prompt":"p","duration":"3","aspect_ratio":"1:1","images_urls":["https://x.io/a.png"]}"#
    )
    .is_ok());
}

#[test]
fn kling_image_arrays_are_counted_and_checked() {
    let img = b64(&png(8, 8, 0));
    let six: Vec<String> = (0..6).map(|_| format!("\"{img}\"")).collect();
    assert_eq!(
        field_of(
            Family::builtin("kling/o3-video"),
            &format!(r#"{{"prompt":"p","images_base64":[{}]}}"#, six.join(","))
        ),
        "images_base64"
    );
    assert_eq!(
        field_of(Family::builtin("kling/o3-video"), r#"{"prompt":"p","images_base64":["QUJD"]}"#),
        "images_base64[0]"
    );
    assert_eq!(
        field_of(
            Family::builtin("kling/o3-photo"),
            r#"{"prompt":"p","images_url":["https://a","https://b"],"images_base64":[]}"#
        ),
        "images_base64"
    );
    assert_eq!(
        field_of(Family::builtin("kling/o3-photo"), r#"{"prompt":"p","img_resolution":"8k"}"#),
        "img_resolution"
    );
    assert_eq!(
        check(Family::builtin("kling/o1-photo"), r#"{"prompt":"p","img_resolution":"1k"}"#).unwrap().price_key,
        vec!["1k"]
    );
}

#[test]
fn gemini_mixed_images_and_quality_rules() {
    let img = format!("data:image/png;base64,{}", b64(&png(8, 8, 0)));
    let v = check(
        Family::builtin("gemini"),
        &format!(r#"{{"prompt":"p","model":"pro","quality":"4k","images":["https://x.io/a.png","{img}"]}}"#),
    )
    .unwrap();
    assert_eq!((v.images, v.price_key.clone()), (1, vec!["pro".to_string(), "4k".to_string()]));
    assert_eq!(field_of(Family::builtin("gemini"), r#"{"prompt":"p","quality":"4k"}"#), "quality");
    assert_eq!(field_of(Family::builtin("gemini"), r#"{"prompt":"p","temperature":2}"#), "temperature");
    assert_eq!(
        field_of(Family::builtin("gemini"), r#"{"prompt":"p","images":["https://x.io/a.png","QUJD"]}"#),
        "images[1]"
    );
}

#[test]
fn chatgpt_images_rules() {
    assert!(check(Family::builtin("chatgpt-images"), r#"{"prompt":"cat and dog"}"#).is_ok());
    assert_eq!(field_of(Family::builtin("chatgpt-images"), r#"{"prompt":"c","aspect_ratio":"16:9"}"#), "aspect_ratio");
}

#[test]
fn base64_with_escaped_slashes_is_still_checked() {
    // JSON may escape '/' as "\/": the string is then unescaped into an owned copy.
    let img = b64(&jpeg(16, 16, 0));
    let escaped = img.replace('/', "\\/");
    let body = format!(r#"{{"prompt":"p","image_base64":"{escaped}"}}"#);
    assert!(check(Family::builtin("sora"), &body).is_ok(), "{}", check(Family::builtin("sora"), &body).unwrap_err());
}

#[test]
fn a_string_span_covers_the_quoted_value_only_where_it_can_be_replaced() {
    let body = br#"{"prompt":"a cat","callback_url":"https://t.example/hook","n":1}"#;
    let f = parse_object(body).unwrap();
    let at = f.str_span("callback_url").unwrap();
    assert_eq!(&body[at], br#""https://t.example/hook""#);
    let escaped = br#"{"callback_url":"https:\/\/t.example\/hook"}"#;
    assert_eq!(parse_object(escaped).unwrap().str_span("callback_url"), None);
    let repeated = br#"{"callback_url":"https://a.example","callback_url":"https://b.example"}"#;
    assert_eq!(parse_object(repeated).unwrap().str_span("callback_url"), None);
    assert_eq!(parse_object(br#"{"callback_url":3}"#).unwrap().str_span("callback_url"), None);
}
