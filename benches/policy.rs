//! Hot pure paths, no sockets: request validation with a 10 MiB image, the per-tenant limiter
//! check, and the upstream-error normaliser. `cargo bench --bench policy`.
//!
//! Baselines measured in the same run give the ratios worth quoting: the validator against a
//! plain `serde_json::Value` parse of the same body and against a full base64 decode.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::StatusCode;
use tollgate::policy::family::Family;
use tollgate::policy::image::fixtures::{b64, jpeg, png};
use tollgate::policy::image::{check_base64_image, ImageLimits};
use tollgate::policy::rate_limit::{limits, LimitKind, TenantLimiter};
use tollgate::policy::validate::{parse_object, validate};
use tollgate::upstream::normalize::normalize;

const MIB: usize = 1024 * 1024;

fn validation(c: &mut Criterion) {
    let image = b64(&png(4000, 3000, 10 * MIB));
    let body = format!(r#"{{"prompt":"A beautiful sunset over the ocean","duration":10,"image_base64":"{image}"}}"#);
    let mut g = c.benchmark_group("validate_10mib_image");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.bench_function("tollgate_validate_body", |b| {
        b.iter(|| {
            let fields = parse_object(black_box(body.as_bytes())).unwrap();
            validate(Family::builtin("sora"), &fields).unwrap()
        })
    });
    g.bench_function("tollgate_check_image_only", |b| {
        b.iter(|| check_base64_image(black_box(&image), &ImageLimits::bytes(10 * MIB)).unwrap())
    });
    // Baselines: what a naive validator would pay.
    g.bench_function("baseline_serde_value_parse", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body.as_bytes())).unwrap())
    });
    g.bench_function("baseline_base64_full_decode", |b| {
        b.iter(|| base64_simd::STANDARD.decode_to_vec(black_box(image.as_bytes())).unwrap())
    });
    g.finish();

    let deep_jpeg = b64(&jpeg(1920, 1080, 300_000));
    c.bench_function("check_jpeg_header_past_prefix", |b| {
        b.iter(|| check_base64_image(black_box(&deep_jpeg), &ImageLimits::bytes(10 * MIB)).unwrap())
    });
}

/// Bodies without images: here the per-family rules are most of the work (parsing aside).
fn small_bodies(c: &mut Criterion) {
    let cases = [
        (
            "sora",
            Family::builtin("sora"),
            r#"{"prompt":"A beautiful sunset over the ocean","orientation":"16:9","duration":15,"callback_url":"https://example.com/hook"}"#,
        ),
        (
            "kling",
            Family::builtin("kling"),
            r#"{"prompt":"A fox in the snow","negative_prompt":"blur","model":"kling_3_pro","duration":12,"aspect_ratio":"16:9","cfg_scale":0.5,"seed":42,"image_url":"https://example.com/a.png"}"#,
        ),
        (
            "gemini",
            Family::builtin("gemini"),
            r#"{"prompt":"A cat astronaut","model":"pro","quality":"4k","aspect_ratio":"4:3","temperature":0.7,"images":["https://example.com/a.png","https://example.com/b.png"]}"#,
        ),
        (
            "veo",
            Family::builtin("veo"),
            r#"{"prompt":"A drone shot over mountains","model_type":"veo-3-quality","aspect_ratio":"16:9","seed":7,"watermark_text":"acme","filter_text":"moderate"}"#,
        ),
    ];
    let mut g = c.benchmark_group("validate_small_body");
    for (name, family, body) in cases {
        g.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| {
                let fields = parse_object(black_box(body.as_bytes())).unwrap();
                validate(family, &fields).unwrap()
            })
        });
    }
    g.finish();
}

fn limiter(c: &mut Criterion) {
    let l = TenantLimiter::new(limits(1_000_000, 1_000_000, 1_000_000).unwrap());
    c.bench_function("limiter_check_allowed", |b| b.iter(|| l.check(black_box(LimitKind::Requests)).is_ok()));
    let tight = TenantLimiter::new(limits(1, 1, 1).unwrap());
    let _ = tight.check(LimitKind::Requests);
    c.bench_function("limiter_check_refused", |b| b.iter(|| tight.check(black_box(LimitKind::Requests)).is_err()));
}

fn normaliser(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    let cases: [(&str, StatusCode, &[u8]); 4] = [
        ("detail_string", StatusCode::PAYMENT_REQUIRED, br#"{"detail": "INSUFFICIENT_CREDITS"}"#),
        (
            "pydantic_list",
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"detail":[{"type":"enum","loc":["body","orientation"],"msg":"Input should be '9:16' or '16:9'"},{"type":"enum","loc":["body","duration"],"msg":"Input should be 10 or 15","input":5}]}"#,
        ),
        ("html_502", StatusCode::BAD_GATEWAY, b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"),
        ("message_envelope", StatusCode::PAYMENT_REQUIRED, br#"{"success": false, "message": "INSUFFICIENT_CREDITS"}"#),
    ];
    for (name, status, body) in cases {
        g.bench_with_input(BenchmarkId::from_parameter(name), &(status, body), |b, (s, body)| {
            b.iter(|| normalize(*s, None, black_box(body)))
        });
    }
    g.finish();
}

/// Authentication with 10 to 100,000 API-managed keys: one digest and one hash lookup, whatever
/// the count (the directory is built off the request path).
fn key_lookup(c: &mut Criterion) {
    use std::sync::Arc;
    use tollgate::policy::keys::Scope;
    use tollgate::policy::tenants::{key_digest, Grant, Limits, Tenant, TenantDirectory};
    let one = std::num::NonZeroU32::new(1).unwrap();
    let mut g = c.benchmark_group("key_lookup");
    for n in [10usize, 1_000, 100_000] {
        // Ten keys a tenant, as a directory rebuilt from the store holds them.
        let api: Vec<(Tenant, Vec<Grant>)> = (0..n / 10)
            .map(|t| {
                let tenant = Tenant {
                    id: Arc::from(format!("t{t}")),
                    limits: Limits { requests_per_second: one, burst: one, generations_per_minute: one },
                    monthly_budget: None,
                    max_in_flight: None,
                    webhook_secret: None,
                    disabled: false,
                };
                let grants = (0..10)
                    .map(|k| Grant {
                        digest: key_digest(&format!("key-{t}-{k}")),
                        scope: Scope::Api,
                        key_id: Arc::from(format!("k{t}-{k}")),
                        limits: None,
                    })
                    .collect();
                (tenant, grants)
            })
            .collect();
        let (dir, _) = TenantDirectory::default().with_api(api, Vec::new(), None);
        let present = format!("key-{}-3", n / 20);
        g.bench_with_input(BenchmarkId::new("hit", n), &present, |b, k| b.iter(|| dir.lookup(black_box(k)).is_some()));
        g.bench_with_input(BenchmarkId::new("miss", n), &"tg_not_a_key", |b, k| {
            b.iter(|| dir.lookup(black_box(k)).is_none())
        });
    }
    g.finish();
}

criterion_group!(benches, validation, small_bodies, limiter, normaliser, key_lookup);
criterion_main!(benches);
