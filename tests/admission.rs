//! Paid-path admission over real sockets: rate limits, body cap, JSON and image validation.
//! Nothing refused here may reach the platform.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use support::*;
use tollgate::policy::image::fixtures::{b64, jpeg, png, webp};

#[tokio::test]
async fn request_rate_limit_is_per_tenant_with_headers() {
    let platform = Platform::start().await;
    let tenants = format!("{}{}", tenant("a", KEY_A, 1, 3, 100, None), tenant("b", KEY_B, 1, 3, 100, None));
    let gw = TestGateway::start(&config_text(platform.addr, "", &tenants)).await;
    let c = client();
    for left in (0..3).rev() {
        let r = get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["ratelimit-limit"], "3");
        assert_eq!(r.headers["ratelimit-remaining"], left.to_string().as_str());
        assert!(r.headers.contains_key("ratelimit-reset"));
    }
    let r = get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await;
    assert_eq!(
        (r.status.as_u16(), r.detail().as_str()),
        (429, "Rate limit exceeded: requests per second for this key")
    );
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["ratelimit-limit"], "3");
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    assert_eq!(r.headers["ratelimit-reset"], "1", "agrees with Retry-After");
    // Tenant a's flood does not touch tenant b.
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_B)).await.status, 200);
    let lines = gw.log_lines();
    assert_eq!(lines.last().unwrap()["outcome"], "served");
    assert!(lines.iter().any(|l| l["outcome"] == "rate_limited" && l["tenant"] == "a"));
    gw.shutdown().await;
}

#[tokio::test]
async fn generation_rate_limit_applies_to_paid_requests_only() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &tenant("a", KEY_A, 1000, 1000, 2, None))).await;
    let c = client();
    create(&c, &gw, KEY_A).await;
    create(&c, &gw, KEY_A).await;
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await;
    assert_eq!(
        (r.status.as_u16(), r.detail().as_str()),
        (429, "Rate limit exceeded: paid generations per minute for this key")
    );
    assert_eq!(r.headers["retry-after"], "30");
    assert_eq!(r.headers["ratelimit-limit"], "2");
    assert_eq!(platform.generate_calls(), 2);
    // Reads still pass.
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_in_the_detail_schema() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "max_body_bytes = 1024", &default_tenants())).await;
    let c = client();
    let big = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(2000));
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.detail(), "Request body exceeds the 1024-byte limit");
    // Without Content-Length (chunked) the cap still holds, without buffering the whole body.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> =
        (0..100).map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'x'; 100])))).collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(gw.url("/v1/sora/generate"))
        .header("authorization", format!("Bearer {KEY_A}"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let streaming = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let rsp = streaming.request(req).await.unwrap();
    assert_eq!(rsp.status(), 413);
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_400_and_rule_breaks_are_422_naming_the_field() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/v1/sora/generate", "{not json", 400, "Invalid JSON body"),
        ("/v1/sora/generate", "", 400, "Invalid JSON body"),
        ("/v1/sora/generate", "[1,2,3]", 400, "Request body must be a JSON object"),
        ("/v1/sora/generate", r#"{"duration": 10}"#, 422, "prompt: is required"),
        ("/v1/sora/generate", r#"{"prompt": ""}"#, 422, "prompt: must be between 1 and 4000 characters (got 0)"),
        (
            "/v1/sora/generate",
            r#"{"prompt": "p", "orientation": "4:3"}"#,
            422,
            "orientation: must be one of '9:16', '16:9'",
        ),
        ("/v1/sora/generate", r#"{"prompt": "p", "duration": 5}"#, 422, "duration: must be 10 or 15"),
        (
            "/v1/sora/generate",
            r#"{"prompt": "p", "callback_url": "http://hook.example/x"}"#,
            422,
            "callback_url: must be a valid HTTPS URL",
        ),
        (
            "/v1/sora/generate",
            r#"{"prompt": "p", "image_url": "file:///etc/passwd"}"#,
            422,
            "image_url: must be an http(s) URL",
        ),
        (
            "/v1/sora/generate",
            r#"{"prompt": "p", "image_base64": "QUJD", "image_url": "https://x.io/a.png"}"#,
            422,
            "image_base64: cannot be combined with image_url; provide one of them",
        ),
        (
            "/v1/veo/generate",
            r#"{"prompt": "too short"}"#,
            422,
            "prompt: must be between 10 and 4000 characters (got 9)",
        ),
        (
            "/v1/gemini/generate",
            r#"{"prompt": "p", "quality": "4k"}"#,
            422,
            "quality: 2k and 4k need the pro or v2 model",
        ),
    ];
    for (path, body, status, detail) in cases {
        let r = post(&c, &gw.url(path), Some(KEY_A), body).await;
        assert_eq!(r.status.as_u16(), *status, "{body}");
        let d = r.detail();
        assert!(d.starts_with(detail), "{body}: {d}");
    }
    // (The account balance is refreshed in the background; nothing else may reach the platform.)
    let reached: Vec<_> = platform.requests().into_iter().filter(|r| r.path != "/v1/data/balance").collect();
    assert!(reached.is_empty(), "nothing rejected reached the platform: {reached:?}");
    let lines = gw.log_lines();
    assert!(lines.iter().all(|l| l["outcome"] == "invalid_request"));
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_fields_are_refused_unless_the_catalog_allows_them() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let body = r#"{"prompt":"p","future_field":{"nested":[1,2,3]},"orientation":"16:9"}"#;
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), body).await;
    assert_eq!(
        (r.status.as_u16(), r.detail().split(" (").next().unwrap()),
        (422, "future_field: is not a field of sora")
    );
    assert_eq!(platform.generate_calls(), 0, "an unknown field may change the price: never forwarded");
    gw.shutdown().await;
    // A catalog that lists it passes it through byte for byte.
    let dir = temp_dir();
    let models = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml")).unwrap().replacen(
        "path = \"sora\"\n",
        "path = \"sora\"\nextra_fields = [\"future_field\"]\n",
        1,
    );
    std::fs::write(dir.join("models.toml"), models).unwrap();
    let text = config_text(platform.addr, "", &default_tenants())
        .replace("[pricing]", &format!("[catalog]\npath = \"{}\"\n\n[pricing]", dir.join("models.toml").display()));
    let gw = TestGateway::start(&text).await;
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), body).await.status, 201);
    use sha2::Digest;
    assert_eq!(platform.requests_to("/v1/sora/generate")[0].body_sha256, hex::encode(sha2::Sha256::digest(body)));
    gw.shutdown().await;
}

#[tokio::test]
async fn valid_images_are_forwarded_unchanged() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let images = [
        b64(&png(1920, 1080, 2 * 1024 * 1024)),
        format!("data:image/png;base64,{}", b64(&png(1920, 1080, 1024 * 1024))),
        format!("data:image/jpeg;base64,{}", b64(&jpeg(640, 480, 100_000))),
        format!("data:image/webp;base64,{}", b64(&webp(512, 512))),
    ];
    use sha2::Digest;
    for img in images {
        let body = format!(r#"{{"prompt":"animate this","image_base64":"{img}"}}"#);
        let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &body).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let sent = platform.requests_to("/v1/sora/generate");
        assert_eq!(sent.last().unwrap().body_sha256, hex::encode(sha2::Sha256::digest(body.as_bytes())));
    }
    let line = gw.log_lines().into_iter().next().unwrap();
    assert_eq!(line["image_bytes"], 2 * 1024 * 1024);
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_images_never_reach_the_platform() {
    let platform = Platform::start().await;
    let gw = TestGateway::start(&config_text(platform.addr, "", &default_tenants())).await;
    let c = client();
    let too_big = b64(&png(4000, 3000, 10 * 1024 * 1024 + 1));
    // Large bodies are scanned as they arrive (policy::scan); a bad byte deep inside one is
    // still found, whether it is outside the alphabet or misplaced padding.
    let large = b64(&png(1920, 1080, 2 * 1024 * 1024));
    let (mid, late) = (large.len() / 2, large.len() - 10);
    let bad_byte = format!("{}*{}", &large[..mid], &large[mid + 1..]);
    let bad_padding = format!("{}={}", &large[..late], &large[late + 1..]);
    let cases = [
        (too_big, "image_base64: decodes to 10485761 bytes, over the 10485760-byte limit"),
        (bad_byte, "image_base64: is not valid base64"),
        (bad_padding, "image_base64: is not valid base64"),
        ("not*base64==".to_string(), "image_base64: is not valid base64"),
        (b64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00"), "image_base64: must be a JPEG, PNG or WEBP image"),
        (b64(&png(0, 10, 0)), "image_base64: has zero width or height"),
        (format!("data:image/png;base64,{}", b64(&jpeg(10, 10, 0))), "image_base64: declared Png but the data is Jpeg"),
        ("data:text/html;base64,PGh0bWw+".to_string(), "image_base64: data URL must look like"),
        // A second header declaring a huge canvas was forwarded: only the first was checked.
        (b64(&two_headers_png()), "image_base64: has more than one Png header"),
        (b64(&two_frames_jpeg()), "image_base64: has more than one Jpeg header"),
    ];
    for (img, detail) in cases {
        let body = format!(r#"{{"prompt":"p","image_base64":"{img}"}}"#);
        let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &body).await;
        assert_eq!(r.status, 422, "{detail}");
        let d = r.detail();
        assert!(d.starts_with(detail), "{d}");
    }
    // Image arrays name the element.
    let r = post(
        &c,
        &gw.url("/v1/gemini/generate"),
        Some(KEY_A),
        r#"{"prompt":"p","images":["https://x.io/a.png","AAAA"]}"#,
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.detail().starts_with("images[1]:"));
    assert_eq!(platform.generate_calls(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn twenty_concurrent_large_images_are_validated() {
    let platform = Platform::start().await;
    // 280 MB through a debug build on two cores: give the platform leg time.
    let text = config_text(
        platform.addr,
        "max_buffered_body_bytes_per_tenant = 536870912\nmax_uploads_per_tenant = 32",
        &default_tenants(),
    )
    .replace("\ntimeout_secs = 2", "\ntimeout_secs = 60")
    .replace("request_timeout_secs = 10", "request_timeout_secs = 90");
    let gw = TestGateway::start(&text).await;
    let c = client();
    let body = std::sync::Arc::new(format!(
        r#"{{"prompt":"p","image_base64":"{}"}}"#,
        b64(&png(4000, 3000, 10 * 1024 * 1024))
    ));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, url, body) = (c.clone(), gw.url("/v1/sora/generate"), body.clone());
            tokio::spawn(
                async move { send(&c, request(Method::POST, &url, Some(KEY_A), body.as_bytes().to_vec())).await },
            )
        })
        .collect();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(platform.generate_calls(), 20);
    gw.shutdown().await;
}

#[tokio::test]
async fn buffered_body_budget_sheds_load_with_503() {
    let platform = Platform::start().await;
    // Room for one 1 MiB body at a time.
    let gw = TestGateway::start(&config_text(
        platform.addr,
        "max_buffered_body_bytes = 1572864\nmax_buffered_body_bytes_per_tenant = 1572864",
        &default_tenants(),
    ))
    .await;
    let c = client();
    platform.delay("/v1/sora/generate", 1500, 1);
    let body = format!(r#"{{"prompt":"p","image_base64":"{}"}}"#, b64(&png(100, 100, 1024 * 1024)));
    let first = tokio::spawn({
        let (c, url, body) = (c.clone(), gw.url("/v1/sora/generate"), body.clone());
        async move { post(&c, &url, Some(KEY_A), &body).await.status }
    });
    // Wait until the first body is buffered and forwarded (the platform holds it for 1.5 s):
    // a fixed sleep lost this race on a slow CI machine.
    let t0 = std::time::Instant::now();
    while platform.generate_calls() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "the first generate never reached the platform");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another tenant is within its own share, but the gateway's total is in use.
    let r = post(&c, &gw.url("/v1/sora/generate"), Some(KEY_B), &body).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Gateway is busy, retry shortly"));
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(first.await.unwrap(), 201);
    // Memory is returned: the next one passes.
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), &body).await.status, 201);
    gw.shutdown().await;
}

/// 64×64, then a second IHDR of 60000×60000 before IEND.
fn two_headers_png() -> Vec<u8> {
    let mut v = png(64, 64, 0);
    let iend = v.len() - 12;
    v.splice(iend..iend, png(60_000, 60_000, 0)[8..33].to_vec());
    v
}

/// 100×100, then a second frame header (SOF0) of 60000×60000 before the end.
fn two_frames_jpeg() -> Vec<u8> {
    let mut v = jpeg(100, 100, 10);
    let second = jpeg(60_000, 60_000, 0);
    let eoi = v.len() - 2;
    v.splice(eoi..eoi, second[second.len() - 21..second.len() - 2].to_vec());
    v
}
