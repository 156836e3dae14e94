//! The dashboard (SPEC §12) over real sockets, on SQLite and on Redis: sign-in with the admin
//! token or a viewer key, the session cookie, the overview and tenant pages against
//! `/admin/usage`, failures by reason, escaping of the platform's messages, CSRF on the key
//! forms, a viewer confined to its tenant, and sessions that end with their key.
//! `scripts/ui-check` drives the same pages in a real browser.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-secret-for-tests-0123456789abcdef";
const XSS: &str = "<script>document.title='owned'</script><img src=x onerror=alert(1)>";

async fn admin(c: &HttpClient, gw: &TestGateway, method: Method, path: &str, body: Value) -> Rsp {
    let body = if body.is_null() { String::new() } else { body.to_string() };
    send(c, request(method, &gw.admin_url(path), Some(ADMIN), body)).await
}

/// A form POST (or GET with an empty body) to the admin listener, with a session cookie.
async fn page(c: &HttpClient, gw: &TestGateway, method: Method, path: &str, cookie: Option<&str>, form: &str) -> Rsp {
    let mut b = Request::builder()
        .method(method)
        .uri(gw.admin_url(path))
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(v) = cookie {
        b = b.header("cookie", format!("other=1; tollgate_session={v}"));
    }
    send(c, b.body(Full::new(Bytes::from(form.to_string()))).unwrap()).await
}

fn text(r: &Rsp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Signs in with `token`; returns the session cookie's value.
async fn sign_in(c: &HttpClient, gw: &TestGateway, token: &str) -> String {
    let r = login_post(c, gw, &form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>(), &[]).await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert_eq!(r.headers["location"], "/dashboard");
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age=43200"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag ({set})");
    set.strip_prefix("tollgate_session=").unwrap().split(';').next().unwrap().to_string()
}

/// The value of `data-figure="name"` (or of the element after `marker`) in a page.
fn figure(html: &str, marker: &str) -> String {
    let at = html.find(marker).unwrap_or_else(|| panic!("{marker} not in page"));
    let rest = &html[at..];
    let start = rest.find('>').unwrap() + 1;
    rest[start..start + rest[start..].find('<').unwrap()].to_string()
}

fn csrf(html: &str) -> String {
    html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string()
}

async fn the_dashboard_shows_what_usage_says(backend: Backend) {
    let platform = Platform::with(tollgate::dev::mock::MockOptions {
        token: Some(TOKEN.into()),
        balance: usd("100"),
        step: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let tenants = tenant("a", KEY_A, 1000, 1000, 1000, Some("1.00"));
    let (text_cfg, _redis) =
        with_backend(&config_text(platform.addr, "admin_token_env = \"TEST_ADMIN_TOKEN\"", &tenants), backend);
    let gw = TestGateway::start(&text_cfg).await;
    let c = client();

    // An API team with a key for its app and a viewer key for its lead.
    assert_eq!(
        admin(&c, &gw, Method::POST, "/admin/tenants", json!({ "id": "team-v", "monthly_budget": "0.50" }))
            .await
            .status,
        201
    );
    let issue = |scope: &'static str| {
        let (c, gw) = (&c, &gw);
        async move {
            let r = admin(
                c,
                gw,
                Method::POST,
                "/admin/tenants/team-v/keys",
                json!({ "label": format!("<b>{scope}</b>"), "scope": scope }),
            )
            .await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            let v = r.json();
            (v["key"].as_str().unwrap().to_string(), v["id"].as_str().unwrap().to_string())
        }
    };
    let (app_key, _) = issue("api").await;
    let (viewer_key, viewer_id) = issue("viewer").await;

    // Three generations: one completes, one fails on people, one with a hostile message.
    let mut ids = Vec::new();
    for prompt in ["A lighthouse at night", "A portrait [fail]", &format!("A crowd [fail:{XSS}]")] {
        let r = post(&c, &gw.url("/v1/sora/generate"), Some(&app_key), &json!({ "prompt": prompt }).to_string()).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        ids.push(r.json()["generation_id"].as_str().unwrap().to_string());
    }
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    // Polls record the final statuses (and refund the failures).
    until(Duration::from_secs(10), "generations final", || async {
        let mut done = 0;
        for id in &ids {
            let r = get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(&app_key)).await;
            if matches!(r.json()["status"].as_str(), Some("completed" | "failed")) {
                done += 1;
            }
        }
        done == ids.len()
    })
    .await;

    // Signed out: the form, with the strict CSP on every answer.
    let r = page(&c, &gw, Method::GET, "/dashboard", None, "").await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("action=\"/dashboard/login\""));
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(page(&c, &gw, Method::GET, "/dashboard/tenants/a", None, "").await.status, 303, "no session, no page");
    let r = login_post(&c, &gw, "wrong", &[]).await;
    assert_eq!(r.status, 401);
    assert!(text(&r).contains("Invalid credentials"));
    let r = login_post(&c, &gw, &app_key, &[]).await;
    assert_eq!(r.status, 401, "an API key is not a viewer key");
    assert!(text(&r).contains("That is an API key"), "the hint says which key the page takes");
    // Login CSRF: a sign-in without this listener's form (another site's auto-submitted one,
    // which has no form cookie) starts no session, even with the right token.
    let r = page(&c, &gw, Method::POST, "/dashboard/login", None, &format!("token={ADMIN}")).await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert!(!r.headers.get_all("set-cookie").iter().any(|v| v.to_str().unwrap().starts_with("tollgate_session=")));

    let session = sign_in(&c, &gw, ADMIN).await;
    let usage = admin(&c, &gw, Method::GET, "/admin/usage", Value::Null).await.json();
    let of = |t: &str, field: &str| {
        usage["tenants"].as_array().unwrap().iter().find(|x| x["tenant"] == t).unwrap()[field]
            .as_str()
            .unwrap()
            .to_string()
    };

    // The overview's figures are the usage report's.
    let r = page(&c, &gw, Method::GET, "/dashboard", Some(&session), "").await;
    assert_eq!(r.status, 200);
    let html = text(&r);
    for t in ["a", "team-v"] {
        let row = &html[html.find(&format!("data-tenant=\"{t}\"")).unwrap()..];
        assert_eq!(figure(row, "data-col=\"spent\""), of(t, "spent"), "{t}");
        assert_eq!(figure(row, "data-col=\"remaining\""), of(t, "remaining"), "{t}");
    }
    assert_eq!(of("team-v", "spent"), "0.1200", "two of three failed and were refunded");
    assert!(
        figure(&html, "data-figure=\"reconciled\"").starts_with("no pass yet"),
        "the reconciler runs hourly in this test"
    );

    // The tenant page: figures, the chart's today, failures by reason, escaped messages.
    let r = page(&c, &gw, Method::GET, "/dashboard/tenants/team-v", Some(&session), "").await;
    assert_eq!(r.status, 200);
    let html = text(&r);
    assert_eq!(figure(&html, "data-figure=\"spent\""), of("team-v", "spent"));
    assert_eq!(figure(&html, "data-figure=\"refunded\""), of("team-v", "refunded"));
    // Flagged exactly when the month-end projection passes the budget (early in a month 0.12
    // spent projects past 0.50; on its last day it does not).
    let projection: f64 = figure(&html, "data-figure=\"projection\"").parse().unwrap();
    assert_eq!(html.contains("data-flag=\"projection\""), projection > 0.50, "projection {projection}");
    let today = html.rsplit("data-amount=\"").next().unwrap().split('"').next().unwrap().to_string();
    assert_eq!(today, of("team-v", "spent"), "the chart's last bar is today's roll-up");
    let failures = &html[html.find("id=\"failures\"").unwrap()..];
    let sora_row = &failures[failures.find("<td>sora</td>").unwrap()..];
    let cells: Vec<String> = sora_row
        .split("<td class=\"num\">")
        .skip(1)
        .take(6)
        .map(|c| c.split('<').next().unwrap().to_string())
        .collect();
    assert_eq!(cells, ["3", "2", "67 %", "1", "0", "1"], "generations, failed, rate, people, policy, other");
    assert!(
        !html.contains("<script") && !html.contains("<img") && !html.contains("<b>"),
        "nothing from outside is markup"
    );
    assert!(
        html.contains("&lt;script&gt;document.title='owned'&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"),
        "the message is shown as text"
    );
    assert!(html.contains("&lt;b&gt;viewer&lt;/b&gt;"), "labels are text");
    for id in &ids {
        assert!(html.contains(&format!("data-generation=\"{id}\"")), "{id} listed");
    }
    let metrics = text(&get(&c, &gw.admin_url("/metrics"), None).await);
    assert!(metrics.contains("tollgate_generation_failures_total{family=\"sora\",reason=\"people\"} 1"), "{metrics}");
    assert!(metrics.contains("tollgate_generation_failures_total{family=\"sora\",reason=\"other\"} 1"));

    // Key forms need the session's CSRF token; a new key is shown once and works.
    let token = csrf(&html);
    let r = page(&c, &gw, Method::POST, "/dashboard/tenants/team-v/keys", Some(&session), "label=ci&scope=api").await;
    assert_eq!(r.status, 403, "no CSRF token");
    let r = page(
        &c,
        &gw,
        Method::POST,
        "/dashboard/tenants/team-v/keys",
        Some(&session),
        &format!("label=ci&scope=api&csrf={token}x"),
    )
    .await;
    assert_eq!(r.status, 403, "a wrong CSRF token");
    let r = page(
        &c,
        &gw,
        Method::POST,
        "/dashboard/tenants/team-v/keys",
        Some(&session),
        &format!("label=ci&scope=api&csrf={token}"),
    )
    .await;
    assert_eq!(r.status, 200);
    let html = text(&r);
    let new_key = figure(&html, "id=\"new-key\"");
    assert!(new_key.starts_with("tg_"), "{new_key}");
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&new_key)).await.status, 200);
    let again = text(&page(&c, &gw, Method::GET, "/dashboard/tenants/team-v", Some(&session), "").await);
    assert!(!again.contains(&new_key), "shown once");
    let new_id = {
        let v = admin(&c, &gw, Method::GET, "/admin/tenants/team-v", Value::Null).await.json();
        v["keys"].as_array().unwrap().iter().find(|k| k["prefix"] == new_key[..8]).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let r = page(
        &c,
        &gw,
        Method::POST,
        &format!("/dashboard/tenants/team-v/keys/{new_id}/revoke"),
        Some(&session),
        &format!("csrf={token}"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("Revoked."));
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&new_key)).await.status, 401);
    // A config-file team is a team too: the admin issues its lead a viewer key here (before:
    // no form, and the API answered 409); the file's own keys change in the file.
    let r = page(&c, &gw, Method::GET, "/dashboard/tenants/a", Some(&session), "").await;
    assert!(text(&r).contains("id=\"issue\"") && text(&r).contains("in the config file"), "{}", text(&r));
    let r = page(
        &c,
        &gw,
        Method::POST,
        "/dashboard/tenants/a/keys",
        Some(&session),
        &format!("label=lead&scope=viewer&csrf={token}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let file_lead = figure(&text(&r), "id=\"new-key\"");
    assert_eq!(get(&c, &gw.url("/v1/gateway/usage"), Some(&file_lead)).await.json()["tenant"], "a");
    let lead = sign_in(&c, &gw, &file_lead).await;
    assert_eq!(page(&c, &gw, Method::GET, "/dashboard/tenants/a", Some(&lead), "").await.status, 200);

    // A viewer sees its tenant and nothing else, and changes nothing.
    let viewer = sign_in(&c, &gw, &viewer_key).await;
    let r = page(&c, &gw, Method::GET, "/dashboard", Some(&viewer), "").await;
    assert_eq!((r.status.as_u16(), r.headers["location"].to_str().unwrap()), (303, "/dashboard/tenants/team-v"));
    let r = page(&c, &gw, Method::GET, "/dashboard/tenants/team-v", Some(&viewer), "").await;
    assert_eq!(r.status, 200);
    let vhtml = text(&r);
    assert_eq!(figure(&vhtml, "data-figure=\"spent\""), of("team-v", "spent"));
    assert!(!vhtml.contains("id=\"issue\"") && !vhtml.contains("/revoke"), "no key forms for a viewer");
    for other in ["/dashboard/tenants/a", "/dashboard/tenants/nobody"] {
        assert_eq!(page(&c, &gw, Method::GET, other, Some(&viewer), "").await.status, 404, "{other}");
    }
    // For money (#43): the currency beside amounts, the budget and the month-to-date total on
    // the chart, failed generations marked refunded, and the month's CSV for the lead.
    assert!(vhtml.contains("<span class=\"cur\">USD</span>"), "the currency on amounts");
    assert!(
        vhtml.contains("class=\"mtd\"") && vhtml.contains("class=\"budget\""),
        "month-to-date line and budget line"
    );
    assert!(vhtml.contains("refunded"), "failed generations are marked refunded");
    let r = page(&c, &gw, Method::GET, "/dashboard/tenants/team-v/generations.csv", Some(&viewer), "").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = text(&r);
    assert!(
        csv.starts_with("time,tenant,family,generation_id,status,price\n")
            && csv.lines().skip(1).all(|l| l.contains(",team-v,")),
        "{csv}"
    );
    assert_eq!(
        csv.lines().count() - 1,
        usage["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "team-v").unwrap()["generations"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|f| f.as_object().unwrap().values())
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>() as usize
    );
    assert_eq!(
        page(&c, &gw, Method::GET, "/dashboard/tenants/a/generations.csv", Some(&viewer), "").await.status,
        404,
        "another team's CSV"
    );
    let vtoken = csrf(&vhtml);
    let r = page(
        &c,
        &gw,
        Method::POST,
        "/dashboard/tenants/team-v/keys",
        Some(&viewer),
        &format!("scope=api&csrf={vtoken}"),
    )
    .await;
    assert_eq!(r.status, 404);

    // Forged cookies see no page; a viewer's session ends with its key.
    let mut forged = viewer.clone();
    forged.replace_range(3..4, "a");
    for bad in [forged.as_str(), "v1.a...99999999999999.00.00", "garbage"] {
        let r = page(&c, &gw, Method::GET, "/dashboard/tenants/team-v", Some(bad), "").await;
        assert_eq!(r.status, 303, "{bad}");
        let r = page(&c, &gw, Method::GET, "/dashboard", Some(bad), "").await;
        assert!(text(&r).contains("action=\"/dashboard/login\""), "{bad}");
    }
    assert_eq!(
        admin(&c, &gw, Method::DELETE, &format!("/admin/tenants/team-v/keys/{viewer_id}"), Value::Null).await.status,
        204
    );
    until(Duration::from_secs(2), "viewer session ends", || async {
        page(&c, &gw, Method::GET, "/dashboard/tenants/team-v", Some(&viewer), "").await.status == 303
    })
    .await;

    // Sign-out needs the CSRF token and clears the cookie.
    assert_eq!(page(&c, &gw, Method::POST, "/dashboard/logout", Some(&session), "csrf=nope").await.status, 403);
    let r = page(&c, &gw, Method::POST, "/dashboard/logout", Some(&session), &format!("csrf={token}")).await;
    assert_eq!(r.status, 303);
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    // Before: the same cookie replayed after sign-out still worked for up to 12 h.
    let r = page(&c, &gw, Method::GET, "/dashboard", Some(&session), "").await;
    assert!(text(&r).contains("action=\"/dashboard/login\""), "a signed-out session is over");

    // Behind a TLS proxy the cookie is Secure.
    let r = login_post(&c, &gw, ADMIN, &[("x-forwarded-proto", "https")]).await;
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("; Secure"));

    // No key, token or cookie value in any log line.
    let logs = gw.log_lines().iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n");
    for secret in [ADMIN, &app_key, &viewer_key, &new_key, &session, &viewer] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_on_sqlite() {
    the_dashboard_shows_what_usage_says(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_on_redis() {
    the_dashboard_shows_what_usage_says(Backend::Redis).await;
}

/// Two replicas on one Redis: only one holds the reconciler's lease, and both overviews show its
/// last pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_shows_the_lease_holders_last_reconciler_pass() {
    let platform = Platform::start().await;
    let tenants = tenant("a", KEY_A, 1000, 1000, 1000, Some("1.00"));
    let (text_cfg, _redis) = with_backend(
        &fast_reconcile(&config_text(platform.addr, "admin_token_env = \"TEST_ADMIN_TOKEN\"", &tenants), 2, 300),
        Backend::Redis,
    );
    let (one, two) = (TestGateway::start(&text_cfg).await, TestGateway::start(&text_cfg).await);
    let c = client();
    let (s1, s2) = (sign_in(&c, &one, ADMIN).await, sign_in(&c, &two, ADMIN).await);
    for (gw, session) in [(&one, &s1), (&two, &s2)] {
        until(Duration::from_secs(10), "a reconciler pass on the overview", || {
            let (c, gw, session) = (c.clone(), gw, session.clone());
            async move {
                let html = text(&page(&c, gw, Method::GET, "/dashboard", Some(&session), "").await);
                let shown = figure(&html, "data-figure=\"reconciled\"");
                shown.starts_with("last pass ") && shown.ends_with(" s ago")
            }
        })
        .await;
    }
    one.shutdown().await;
    two.shutdown().await;
}

/// What a page costs with 100 tenants and 1,000,000 generation records, on SQLite and on Redis
/// (records seeded straight into the store, spread over 90 days and two families).
/// `cargo test --release --test dashboard -- --ignored --nocapture figures`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn figures() {
    const RECORDS: usize = 1_000_000;
    const TENANTS: usize = 100;
    let now = tollgate::store::now_ms() as i64;
    let row = |i: usize| {
        let tenant = format!("t{:03}", i % TENANTS);
        let family = if i % 3 == 0 { "veo" } else { "sora" };
        let created = now - (i as i64 * 7_776_000_000 / RECORDS as i64);
        let status = if i % 10 == 0 { "failed" } else { "completed" };
        (format!("g{i:07}"), tenant, family, 120_000i64, created, status)
    };
    let tenants: String = (0..TENANTS)
        .map(|t| tenant(&format!("t{t:03}"), &format!("key-{t}"), 1000, 1000, 1000, Some("500.00")))
        .collect();
    for backend in [Backend::Sqlite, Backend::Redis] {
        let platform = Platform::start().await;
        let (cfg, redis) =
            with_backend(&config_text(platform.addr, "admin_token_env = \"TEST_ADMIN_TOKEN\"", &tenants), backend);
        let seeded = std::time::Instant::now();
        match &redis {
            None => {
                let path = cfg.split("path = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
                drop(tollgate::store::embedded::EmbeddedStore::sqlite(std::path::Path::new(&path)).await.unwrap());
                let mut c = rusqlite::Connection::open(&path).unwrap();
                let tx = c.transaction().unwrap();
                {
                    let mut st = tx.prepare("INSERT INTO generations (id, tenant, family, price_micros, created_ms, month, status, reason, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)").unwrap();
                    for i in 0..RECORDS {
                        let (id, t, f, p, created, status) = row(i);
                        let failed = status == "failed";
                        st.execute(rusqlite::params![
                            id,
                            t,
                            f,
                            p,
                            created,
                            tollgate::store::month_of(created as u64),
                            status,
                            failed.then_some("people"),
                            failed.then_some("Image contains photorealistic people.")
                        ])
                        .unwrap();
                    }
                }
                tx.commit().unwrap();
            }
            Some(server) => {
                let prefix = cfg.split("key_prefix = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
                let client = redis::Client::open(server.url.as_str()).unwrap();
                let mut c = client.get_multiplexed_async_connection().await.unwrap();
                for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(20_000) {
                    let mut pipe = redis::pipe();
                    for &i in chunk {
                        let (id, t, f, p, created, status) = row(i);
                        let month = tollgate::store::month_of(created as u64);
                        let day = created / tollgate::store::DAY_MS;
                        pipe.hset_multiple(
                            format!("{prefix}:gen:{id}"),
                            &[
                                ("tenant", t.as_str()),
                                ("family", f),
                                ("price", &p.to_string()),
                                ("created_ms", &created.to_string()),
                                ("status", status),
                                ("month", &month),
                            ],
                        )
                        .ignore();
                        pipe.zadd(format!("{prefix}:gens:{t}:{f}"), &id, created).ignore();
                        pipe.zadd(format!("{prefix}:month:{month}"), &id, created).ignore();
                        pipe.hincr(format!("{prefix}:spend:{month}"), &t, if status == "failed" { 0 } else { p })
                            .ignore();
                        let daily = format!("{prefix}:daily:{t}:{month}");
                        pipe.hincr(&daily, format!("{day}|{f}|n"), 1).ignore();
                        pipe.hincr(&daily, format!("{day}|{f}|c"), p).ignore();
                        if status == "failed" {
                            pipe.hincr(format!("{prefix}:refunded:{month}"), &t, p).ignore();
                            pipe.hincr(&daily, format!("{day}|{f}|r"), p).ignore();
                            pipe.hincr(&daily, format!("{day}|{f}|fpeople"), 1).ignore();
                        }
                    }
                    pipe.query_async::<()>(&mut c).await.unwrap();
                }
            }
        }
        eprintln!("{backend:?}: seeded {RECORDS} records in {:.1} s", seeded.elapsed().as_secs_f64());
        let started = std::time::Instant::now();
        let gw = TestGateway::start(&cfg).await;
        eprintln!("{backend:?}: gateway up in {:.1} s", started.elapsed().as_secs_f64());
        let c = client();
        let session = sign_in(&c, &gw, ADMIN).await;
        for (name, path) in
            [("overview", "/dashboard".to_string()), ("tenant page", "/dashboard/tenants/t042".to_string())]
        {
            let mut times = Vec::new();
            for _ in 0..200 {
                let t = std::time::Instant::now();
                let r = page(&c, &gw, Method::GET, &path, Some(&session), "").await;
                times.push(t.elapsed());
                assert_eq!(r.status, 200, "{}", text(&r));
            }
            times.sort();
            eprintln!(
                "{backend:?} {name}: p50 {:.1} ms, p99 {:.1} ms (200 loads, {} bytes)",
                times[100].as_secs_f64() * 1000.0,
                times[197].as_secs_f64() * 1000.0,
                page(&c, &gw, Method::GET, &path, Some(&session), "").await.body.len()
            );
        }
        gw.shutdown().await;
    }
}
