//! `tollgate demo`: the gateway and the simulated platform together on loopback, offline, with
//! two example tenants and ready-to-paste curl commands.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::dev::mock::{MockOptions, MockPlatform};
use crate::observe::access_log::AccessLog;
use crate::policy::money::Usd;
use crate::policy::tenants::key_digest;
use crate::Listeners;

/// Demo gateway keys (loopback only; never use these anywhere else).
pub const DEMO_KEYS: [(&str, &str); 2] = [("marketing", "tg_demo_marketing_key"), ("research", "tg_demo_research_key")];

/// The demo tenant "marketing"'s webhook signing secret (loopback only).
pub const DEMO_WEBHOOK_SECRET: &str = "whsec_ZGVtby13ZWJob29rLXNlY3JldC1ub3QtZm9yLXByb2R1Y3Rpb24=";

/// The demo's config text for a platform at `platform`.
pub fn demo_config_text(platform: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> String {
    let [(m_id, m_key), (r_id, r_key)] = DEMO_KEYS;
    format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "{admin}"
admin_token_env = "DEMO_ADMIN_TOKEN"
shutdown_grace_secs = 2

[upstream]
base_url = "http://{platform}"
token_env = "DEMO_PLATFORM_TOKEN"
timeout_secs = 10

[store]
backend = "memory"

[balance]
cache_ttl_ms = 2000

[webhooks]
public_base_url = "http://{listen}"
allow_http_loopback = true

[pricing]
sora = {{ "10" = "0.12", "15" = "0.18" }}
veo = {{ "veo-3-fast" = "0.25", "veo-3-quality" = "0.50" }}
gemini = {{ "standard" = "0.02", "pro" = "0.05", "v2" = "0.04" }}
"kling/o1-photo" = "0.029"

[[tenants]]
id = "{m_id}"
keys_sha256 = ["{}"]
requests_per_second = 20
burst = 40
generations_per_minute = 10
monthly_budget = "1.00"
webhook_secret_env = "DEMO_WEBHOOK_SECRET"

[[tenants]]
id = "{r_id}"
keys_sha256 = ["{}"]
requests_per_second = 5
burst = 10
generations_per_minute = 2
"#,
        hex::encode(key_digest(m_key)),
        hex::encode(key_digest(r_key)),
    )
}

/// The demo's team made at runtime: tenant `design` ($2.00 budget) with an API key and a viewer
/// key, made through the admin API's code so it shows up in the dashboard like any other.
async fn api_team(gateway: &crate::gateway::Gateway) -> Result<(String, String), Box<dyn std::error::Error>> {
    let call = |method: http::Method, path: &'static str, body: serde_json::Value| async move {
        match crate::admin::tenants::answer(gateway, &method, path, None, body.to_string().as_bytes()).await {
            Some(Ok((_, Some(v)))) => Ok(v),
            other => Err(format!("demo: {path} answered {other:?}")),
        }
    };
    call(http::Method::POST, "/admin/tenants", serde_json::json!({ "id": "design", "monthly_budget": "2.00" })).await?;
    let key = |v: serde_json::Value| {
        v.get("key").and_then(|k| k.as_str()).map(str::to_string).ok_or("demo: no key in the answer")
    };
    let api =
        key(call(http::Method::POST, "/admin/tenants/design/keys", serde_json::json!({ "label": "demo app" })).await?)?;
    let viewer = key(call(
        http::Method::POST,
        "/admin/tenants/design/keys",
        serde_json::json!({ "label": "team lead", "scope": "viewer" }),
    )
    .await?)?;
    Ok((api, viewer))
}

async fn bind_or_any(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        // The usual port is taken: any free one will do for a demo.
        Err(_) => TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await,
    }
}

/// A tiny webhook receiver: prints each delivery and whether its signature verifies.
async fn start_receiver() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let key = crate::policy::signing::SigningKey::parse(DEMO_WEBHOOK_SECRET).map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let key = key.clone();
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let key = key.clone();
                async move {
                    use http_body_util::BodyExt;
                    let h = req.headers().clone();
                    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let (id, ts, sig) = (get("webhook-id"), get("webhook-timestamp"), get("webhook-signature"));
                    let ok = ts.parse().is_ok_and(|t| key.sign(&id, t, &body) == sig);
                    println!(
                        "demo receiver: webhook {id} (signature {}): {}",
                        if ok { "valid" } else { "INVALID" },
                        String::from_utf8_lossy(&body)
                    );
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::new(),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc),
            );
        }
    });
    Ok(addr)
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(
    listen: SocketAddr,
    admin: SocketAddr,
    log: AccessLog,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    let token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let platform = MockPlatform::new(MockOptions {
        token: Some(token.clone()),
        balance: Usd::parse("5.00")?,
        step: std::time::Duration::from_secs(3),
        random_fault: None,
        record: false,
        echo_callback_url: false,
    });
    let platform_listener = TcpListener::bind("127.0.0.1:0").await?;
    let platform_addr = platform_listener.local_addr()?;
    tokio::spawn(platform.serve(platform_listener, std::future::pending()));

    let tenant = bind_or_any(listen).await?;
    let admin_l = bind_or_any(admin).await?;
    let (gw_addr, admin_addr) = (tenant.local_addr()?, admin_l.local_addr()?);
    // A fresh admin token each run, printed below, so usage reports, reload and the other admin
    // endpoints can be tried offline too.
    let admin_token = format!("demo-admin-{}", uuid::Uuid::new_v4().simple());
    let env = HashMap::from([
        ("DEMO_PLATFORM_TOKEN".to_string(), token),
        ("DEMO_WEBHOOK_SECRET".to_string(), DEMO_WEBHOOK_SECRET.to_string()),
        ("DEMO_ADMIN_TOKEN".to_string(), admin_token.clone()),
    ]);
    let receiver = start_receiver().await?;
    let config = Config::from_toml(&demo_config_text(platform_addr, gw_addr, admin_addr), &env)?;
    let gateway = crate::build(&config, log, None).await?;
    let (design_key, viewer_key) = api_team(&gateway).await?;

    let [(_, key), (_, other)] = DEMO_KEYS;
    let base = format!("http://{gw_addr}");
    println!(
        r#"
tollgate demo: gateway on {base}, admin on http://{admin_addr}, simulated platform on http://{platform_addr}
(account balance $5.00; tenant "marketing" has a $1.00 monthly budget; generations finish in ~6 s)

Tenant keys:
  marketing  {key}
  research   {other}
  design     {design_key}   (made through the admin API, like tollgate tenants create)
Admin token (this run only): {admin_token}

Dashboard: http://{admin_addr}/dashboard
  sign in with the admin token (every team), or with design's viewer key (its page only):
  {viewer_key}

Try:
  curl -s {base}/v1/data/balance -H 'Authorization: Bearer {key}'
  curl -s {base}/v1/sora/generate -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
       -d '{{"prompt": "A beautiful sunset over the ocean", "duration": 10}}'
  curl -s {base}/v1/sora/generations/<generation_id>/ -H 'Authorization: Bearer {key}'
  curl -s {base}/v1/sora/generations -H 'Authorization: Bearer {key}'
  curl -s {base}/v1/sora/generations/<generation_id>/ -H 'Authorization: Bearer {other}'   # another tenant: 404
  curl -s {base}/v1/sora/generate -H 'Authorization: Bearer nope' -d '{{}}'                  # 401
  curl -s http://{admin_addr}/metrics
  curl -s http://{admin_addr}/admin/usage -H 'Authorization: Bearer {admin_token}'

Webhooks: with a callback_url, the platform calls the gateway, which relays the outcome signed
(Standard Webhooks) to the tenant. A receiver in this demo prints what it gets:
  curl -s {base}/v1/sora/generate -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
       -d '{{"prompt": "A lighthouse at night", "callback_url": "http://{receiver}/hook"}}'

Access-log lines (JSON) follow below. Ctrl-C stops the demo.
"#
    );
    crate::run(&config, gateway, Listeners { tenant, admin: admin_l }, shutdown).await;
    Ok(())
}
