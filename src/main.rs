//! The `tollgate` command: a thin CLI over the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate::config::{Config, ConfigError, ProcessEnv};
use tollgate::dev::mock::{Fault, FaultKind, MockOptions, MockPlatform};
use tollgate::observe::access_log::AccessLog;
use tollgate::policy::money::Usd;
use tracing_subscriber::EnvFilter;

/// EX_USAGE: the config (or a secret it names) is unusable.
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "tollgate", version, about = "HTTP API gateway in front of the RunBlob media-generation platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve tenants with the given config.
    Run {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start the gateway and a simulated platform on loopback, offline, and print curl commands.
    Demo {
        /// Tenant-facing address (another free port is used if it is taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
    /// Run the simulated platform alone (tests, benchmarks).
    MockPlatform {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Env var holding the token the platform requires (unset: any bearer token works).
        #[arg(long, default_value = "RUNBLOB_TOKEN")]
        token_env: String,
        /// Starting account balance in USD.
        #[arg(long, default_value = "100.00")]
        balance: String,
        /// Milliseconds a generation stays pending, then processing.
        #[arg(long, default_value_t = 2000)]
        step_ms: u64,
        /// Fault injected at random: latency, html502, reset, reset_mid_body, malformed_json, status, slow_body.
        #[arg(long)]
        fault: Option<String>,
        /// Probability of the fault per request (0–1).
        #[arg(long, default_value_t = 0.1)]
        fault_rate: f64,
        /// Status for the `status` and `malformed_json` faults.
        #[arg(long)]
        fault_status: Option<u16>,
        /// Delay for the `latency` and `slow_body` faults.
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
    },
    /// Validate a config and print a summary.
    CheckConfig {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Do not require the secrets' environment variables (validate a file where they are
        /// absent); missing secrets are then warnings.
        #[arg(long)]
        skip_secrets: bool,
    },
    /// Spend, holds, unknown outcomes, refunds and generations per tenant, from the store.
    Usage {
        /// TOML config file (its [store] is read).
        #[arg(long, short)]
        config: PathBuf,
        /// Month, YYYY-MM (UTC); default: this month.
        #[arg(long)]
        month: Option<String>,
        /// One tenant only.
        #[arg(long)]
        tenant: Option<String>,
        /// table, json or csv (one row per generation).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// The store itself. `store recover`: after Redis forgot tollgate's data (a FLUSHALL, a
    /// restart without persistence), say what was lost and let the replicas take money again.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Exit 0 when the admin /readyz answers 200 (container health checks without a shell).
    Healthcheck {
        /// The readiness URL.
        #[arg(long, default_value = "http://127.0.0.1:9090/readyz")]
        url: String,
    },
    /// Teams managed at runtime through the admin API (config-file tenants are listed too).
    Tenants {
        #[command(subcommand)]
        action: TenantsAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Keys of API tenants: issue (shown once), rotate with a grace period, revoke.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a new random tenant key and the config line for it.
    Keygen {
        /// Print a Standard Webhooks signing secret (`whsec_…`) for a tenant instead.
        #[arg(long)]
        webhook_secret: bool,
    },
}

/// `tollgate store …`.
#[derive(Subcommand)]
enum StoreAction {
    /// Accept that the Redis store lost its data: prints what was lost and writes a new epoch.
    Recover {
        /// TOML config file (its [store] is read).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Where the admin API is; the token comes from `TOLLGATE_ADMIN_TOKEN`.
#[derive(clap::Args)]
struct ApiArgs {
    /// The gateway's admin listener.
    #[arg(long, global = true, env = "TOLLGATE_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
    admin_url: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// Limits and budget of a tenant, as flags.
#[derive(clap::Args)]
struct TenantSettings {
    /// Sustained requests per second.
    #[arg(long)]
    rps: Option<u64>,
    /// Requests at once above the sustained rate.
    #[arg(long)]
    burst: Option<u64>,
    /// Paid generates per minute.
    #[arg(long)]
    gpm: Option<u64>,
    /// Monthly budget in USD (`none` for no budget).
    #[arg(long)]
    budget: Option<String>,
    /// Generates in flight at once (`none` for no cap).
    #[arg(long)]
    max_in_flight: Option<String>,
}

#[derive(Subcommand)]
enum TenantsAction {
    /// Every tenant, config-file and API.
    List,
    /// One tenant and its keys.
    Show { id: String },
    /// A new API tenant.
    Create {
        id: String,
        #[command(flatten)]
        settings: TenantSettings,
    },
    /// Change an API tenant's limits or budget, or disable / enable it.
    Update {
        id: String,
        #[command(flatten)]
        settings: TenantSettings,
        /// Its keys stop working (reversible).
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Its keys work again.
        #[arg(long)]
        enable: bool,
    },
    /// Remove an API tenant: its keys stop working, its records and spend stay in reports.
    Delete { id: String },
}

#[derive(Subcommand)]
enum KeysAction {
    /// A new key for a tenant; printed once.
    Issue {
        tenant: String,
        /// Free text shown in listings.
        #[arg(long)]
        label: Option<String>,
        /// RFC 3339 time after which the key stops working.
        #[arg(long)]
        expires_at: Option<String>,
        /// `api` (default) or `viewer` (usage and the dashboard only).
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        limits: KeyLimitArgs,
    },
    /// Change what a key may do: its families and its price ceiling.
    Update {
        tenant: String,
        key_id: String,
        #[command(flatten)]
        limits: KeyLimitArgs,
    },
    /// A new key replacing `key_id`, which keeps working for the grace period.
    Rotate {
        tenant: String,
        key_id: String,
        /// Seconds the old key keeps working (default 86400).
        #[arg(long)]
        grace_secs: Option<u64>,
    },
    /// Stop a key at once.
    Revoke { tenant: String, key_id: String },
}

/// What a key may do, as flags.
#[derive(clap::Args)]
struct KeyLimitArgs {
    /// The families it may generate and quote with, comma-separated (`all` for every family).
    #[arg(long)]
    families: Option<String>,
    /// The most one generation may hold, in USD (`none` for no limit).
    #[arg(long)]
    max_price: Option<String>,
}

impl KeyLimitArgs {
    fn json(&self, out: &mut serde_json::Map<String, serde_json::Value>) {
        use serde_json::Value;
        if let Some(f) = &self.families {
            let list = f.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| Value::from(x.to_string()));
            out.insert("families".into(), if f == "all" { Value::Null } else { Value::Array(list.collect()) });
        }
        if let Some(m) = &self.max_price {
            out.insert("max_price".into(), if m == "none" { Value::Null } else { Value::String(m.clone()) });
        }
    }
}

fn settings_json(s: &TenantSettings, out: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    for (k, v) in [("requests_per_second", s.rps), ("burst", s.burst), ("generations_per_minute", s.gpm)] {
        if let Some(v) = v {
            out.insert(k.into(), Value::from(v));
        }
    }
    if let Some(b) = &s.budget {
        out.insert("monthly_budget".into(), if b == "none" { Value::Null } else { Value::String(b.clone()) });
    }
    if let Some(m) = &s.max_in_flight {
        out.insert(
            "max_in_flight".into(),
            if m == "none" {
                Value::Null
            } else {
                m.parse::<u64>().map(Value::from).unwrap_or(Value::String(m.clone()))
            },
        );
    }
}

/// `tollgate tenants …` and `tollgate keys …`: one admin API call, its answer printed.
async fn admin_command(
    api: ApiArgs,
    call: impl FnOnce() -> (http::Method, String, Option<serde_json::Value>, fn(&serde_json::Value) -> String),
) -> ExitCode {
    use tollgate::admin::client::AdminApi;
    let (method, path, body, render) = call();
    let result = match AdminApi::new(&api.admin_url, std::env::var("TOLLGATE_ADMIN_TOKEN").ok()) {
        Ok(client) => client.call(method, &path, body).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) if api.json => {
            if !v.is_null() {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Ok(v) => {
            print!("{}", render(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An admin API call a CLI command makes: method, path, body, and how to print the answer.
type AdminCall = (http::Method, String, Option<serde_json::Value>, fn(&serde_json::Value) -> String);

fn tenants_call(action: TenantsAction) -> AdminCall {
    use http::Method;
    use tollgate::admin::client::{tenant_detail, tenants_table};
    match action {
        TenantsAction::List => (Method::GET, "/admin/tenants".into(), None, tenants_table),
        TenantsAction::Show { id } => (Method::GET, format!("/admin/tenants/{id}"), None, tenant_detail),
        TenantsAction::Create { id, settings } => {
            let mut body = serde_json::Map::new();
            body.insert("id".into(), id.into());
            settings_json(&settings, &mut body);
            (Method::POST, "/admin/tenants".into(), Some(body.into()), tenant_detail)
        }
        TenantsAction::Update { id, settings, disable, enable } => {
            let mut body = serde_json::Map::new();
            settings_json(&settings, &mut body);
            if disable || enable {
                body.insert("disabled".into(), disable.into());
            }
            (Method::PATCH, format!("/admin/tenants/{id}"), Some(body.into()), tenant_detail)
        }
        TenantsAction::Delete { id } => (Method::DELETE, format!("/admin/tenants/{id}"), None, |_| "deleted\n".into()),
    }
}

fn keys_call(action: KeysAction) -> AdminCall {
    use http::Method;
    use tollgate::admin::client::new_key;
    match action {
        KeysAction::Issue { tenant, label, expires_at, scope, limits } => {
            let mut body = serde_json::Map::new();
            body.insert("label".into(), label.into());
            body.insert("expires_at".into(), expires_at.into());
            body.insert("scope".into(), scope.into());
            limits.json(&mut body);
            (Method::POST, format!("/admin/tenants/{tenant}/keys"), Some(body.into()), new_key)
        }
        KeysAction::Update { tenant, key_id, limits } => {
            let mut body = serde_json::Map::new();
            limits.json(&mut body);
            (Method::PATCH, format!("/admin/tenants/{tenant}/keys/{key_id}"), Some(body.into()), |v| {
                format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
            })
        }
        KeysAction::Rotate { tenant, key_id, grace_secs } => {
            let body = match grace_secs {
                Some(g) => serde_json::json!({ "grace_secs": g }),
                None => serde_json::json!({}),
            };
            (Method::POST, format!("/admin/tenants/{tenant}/keys/{key_id}/rotate"), Some(body), new_key)
        }
        KeysAction::Revoke { tenant, key_id } => {
            (Method::DELETE, format!("/admin/tenants/{tenant}/keys/{key_id}"), None, |_| "revoked\n".into())
        }
    }
}

/// Keeps both log writers alive; dropping it writes out what is buffered.
struct LogGuards(
    #[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard,
    #[allow(dead_code)] tollgate::observe::access_log::FlushGuard,
);

fn init_logging(
    telemetry: Option<&tollgate::config::TelemetryConfig>,
) -> (AccessLog, LogGuards, Option<tollgate::observe::telemetry::Provider>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Diagnostics go through a non-blocking writer and the access log through a batch: a slow
    // terminal or pipe never stalls a request. Both end on stdout.
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    // Flat fields and `time`, like the access lines: one shape for every line.
    let lines =
        tracing_subscriber::fmt::layer().event_format(tollgate::observe::diag_log::FlatJson).with_writer(writer);
    let (otel, provider) = match telemetry.map(tollgate::observe::telemetry::layer) {
        Some(Ok((layer, provider))) => (Some(layer), Some(provider)),
        Some(Err(e)) => {
            eprintln!("tollgate: telemetry off: {e}");
            (None, None)
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with(lines)
        .with(otel)
        .init();
    let (log, flush) = AccessLog::batched(std::io::stdout());
    (log, LogGuards(guard, flush), provider)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(term) => until_stopped(term).await,
        Err(_) => std::future::pending().await,
    }
}

/// Resolves on SIGTERM (through `term`, installed by the caller) or an interrupt.
async fn until_stopped(mut term: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
    }
}

fn load(path: &Path) -> Result<Config, ConfigError> {
    Config::load(path, &ProcessEnv)
}

async fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    // Both handlers go in before the tenants load: a config reloader (or an orchestrator) that
    // signals a process still loading a large config must not kill it by the default action.
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let term = signal(SignalKind::terminate())?;
    let config = match load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    // A key printed in the docs is a key anyone can use: never live outside the demo.
    let refusals = config.run_refusals();
    if !refusals.is_empty() {
        eprintln!("tollgate: refusing to serve keys printed in tollgate's docs: {}", refusals.join("; "));
        return Ok(ExitCode::from(EXIT_BAD_CONFIG));
    }
    let (log, _guard, telemetry) = init_logging(config.telemetry.as_ref());
    for w in config.warnings() {
        tracing::warn!(config = %path.display(), "{w}");
    }
    if let Some(t) = &config.telemetry {
        tracing::info!(endpoint = %t.otlp_endpoint, service = %t.service_name, "exporting request spans over OTLP");
    }
    let listeners = tollgate::Listeners::bind(&config).await?;
    let reload_path = path.clone();
    let gateway = match tollgate::build(&config, log, Some(Arc::new(move || load(&reload_path)))).await {
        Ok(g) => g,
        // The store's path or its permissions are the config's to fix: one line, exit 64.
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("tollgate: {e}");
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    // SIGHUP: reload tenants, keys, limits and prices; a bad file is refused and logged.
    let gw = gateway.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // A reload that panics must not end this loop, or every later SIGHUP is ignored.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gw.reload())).is_err() {
                gw.metrics().task_panicked("reload");
                tracing::error!(
                    task = "reload",
                    "a reload panicked; the running config stays, and the next SIGHUP is heard"
                );
            }
        }
    });
    let runtime = tokio::runtime::Handle::current();
    tracing::info!(
        listen = %listeners.tenant.local_addr()?,
        tls = config.server.tls.is_some(),
        admin = %listeners.admin.local_addr()?,
        store = gateway.store().backend(),
        store_path = %match &config.store {
            tollgate::config::StoreConfig::Sqlite { path } => path.display().to_string(),
            _ => "-".to_string(),
        },
        workers = runtime.metrics().num_workers(),
        scheduler = match runtime.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "single-threaded",
            _ => "multi-threaded",
        },
        tenants = config.tenants.tenants().len(),
        families = %{
            let mut f: Vec<&str> = config.pricing.families().map(|f| f.path()).collect();
            f.sort();
            f.join(",")
        },
        "tollgate serving"
    );
    tollgate::run(&config, gateway, listeners, until_stopped(term)).await;
    if let Some(provider) = telemetry {
        // Flushes the spans still batched; off the async threads, the SDK blocks while it waits.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn fault_kind(s: &str) -> anyhow::Result<FaultKind> {
    serde_json::from_value(serde_json::Value::String(s.replace("html_502", "html502")))
        .map_err(|_| anyhow::anyhow!("unknown fault {s:?}"))
}

async fn mock(
    listen: SocketAddr,
    token_env: String,
    balance: String,
    step_ms: u64,
    fault: Option<(String, f64, Option<u16>, u64)>,
) -> anyhow::Result<ExitCode> {
    let (_, _guard, _) = init_logging(None);
    let random_fault = match fault {
        None => None,
        Some((kind, rate, status, latency)) => Some((
            Fault {
                kind: fault_kind(&kind)?,
                status,
                latency_ms: Some(latency),
                body: None,
                content_type: None,
                retry_after: None,
                path_prefix: None,
                times: None,
            },
            rate,
        )),
    };
    let opts = MockOptions {
        token: std::env::var(&token_env).ok().filter(|t| !t.is_empty()),
        balance: Usd::parse(&balance).map_err(|e| anyhow::anyhow!("--balance: {e}"))?,
        step: Duration::from_millis(step_ms),
        random_fault,
        record: false,
        echo_callback_url: false,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, token_required = opts.token.is_some(), "simulated platform serving");
    MockPlatform::new(opts).serve(listener, shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

fn check_config(path: &Path, skip_secrets: bool) -> ExitCode {
    // The same verdict as `run`, unless told to leave secrets out (validating files in CI).
    let checked = if skip_secrets {
        Config::check_file(path, &ProcessEnv)
    } else {
        Config::load(path, &ProcessEnv).map(|c| (c, Vec::new()))
    };
    match checked {
        Ok((config, warnings)) => {
            // What `run` would refuse is refused here too: one verdict, one exit code.
            let refusals = config.run_refusals();
            if refusals.is_empty() {
                println!("config {} is valid", path.display());
            } else {
                println!("config {} parses, but `run` refuses it:", path.display());
                for r in &refusals {
                    println!("error: {r}");
                }
            }
            print!("{}", config.summary());
            for w in warnings.iter().map(|w| w.trim_start_matches("secret: ").to_string()).chain(config.warnings()) {
                println!("warning: {w}");
            }
            if refusals.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        }
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

async fn usage(path: &Path, month: Option<String>, tenant: Option<String>, format: &str) -> anyhow::Result<ExitCode> {
    // Secrets are not needed to read the store.
    let (config, _) = match Config::check_file(path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    if matches!(config.store, tollgate::config::StoreConfig::Memory) {
        anyhow::bail!("the memory store keeps nothing outside a running gateway: ask it with GET /admin/usage instead");
    }
    let month = month.unwrap_or_else(|| tollgate::store::month_of(tollgate::store::now_ms()));
    if !tollgate::store::usage::valid_month(&month) {
        anyhow::bail!("--month must be YYYY-MM");
    }
    // A report never creates a store: an empty new one would read as "nothing spent".
    if let tollgate::config::StoreConfig::Sqlite { path: db } = &config.store {
        if !db.exists() {
            eprintln!(
                "tollgate: the store {} does not exist: is {} the config the gateway runs with? (relative paths are resolved against the config file's directory)",
                db.display(),
                path.display()
            );
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    }
    let store = tollgate::store::open(&config.store).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = tollgate::store::usage::report(&*store, config.tenants.tenants(), &month, tenant.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(t) = &tenant {
        if report.tenants.is_empty() {
            eprintln!("tollgate: no tenant {t:?} in {} or in the store", path.display());
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    }
    match format {
        "table" => print!("{}", report.table()),
        "json" => println!("{}", serde_json::to_string_pretty(&report)?),
        "csv" => print!("{}", report.csv()),
        other => anyhow::bail!("--format {other:?} must be table, json or csv"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn healthcheck(url: &str) -> ExitCode {
    let Ok(uri) = url.parse::<http::Uri>() else {
        eprintln!("tollgate healthcheck: bad --url {url:?}");
        return ExitCode::from(2);
    };
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    match tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri)).await {
        Ok(Ok(rsp)) if rsp.status() == http::StatusCode::OK => ExitCode::SUCCESS,
        Ok(Ok(rsp)) => {
            eprintln!("tollgate healthcheck: {url} answered {}", rsp.status());
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("tollgate healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("tollgate healthcheck: {url}: no answer within 3 s");
            ExitCode::FAILURE
        }
    }
}

fn keygen(webhook_secret: bool) -> ExitCode {
    if webhook_secret {
        let secret = tollgate::policy::signing::new_secret();
        println!("secret: {secret}");
        println!("Put it in an environment variable (e.g. MARKETING_WEBHOOK_SECRET={secret}),");
        println!("name that variable in the tenant's config: webhook_secret_env = \"MARKETING_WEBHOOK_SECRET\",");
        println!("and give the secret to the tenant to verify webhook-signature.");
        return ExitCode::SUCCESS;
    }
    // The same format as keys the admin API issues (§11): base62 with a checksum.
    let key = tollgate::policy::keys::new_key();
    let digest = hex::encode(tollgate::policy::tenants::key_digest(&key));
    println!("key:    {key}");
    println!("config: keys_sha256 = [\"{digest}\"]");
    println!("Give the key to the tenant; put only the digest in the config.");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let rt = match tollgate::server::workers::runtime_from_env() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let code = rt.block_on(async_main());
    // Everything that matters was drained and flushed inside; what is left (idle pool threads,
    // tasks parked on timers) must not hold the exit (an idle gateway lingered 1.1 s).
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

async fn async_main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that print for a person end quietly when their reader goes away (`| head`), as
    // other command-line tools do. The servers keep Rust's default (a closed stdout must never
    // stop a gateway).
    if !matches!(cli.command, Command::Run { .. } | Command::MockPlatform { .. }) {
        // SAFETY: only resets SIGPIPE's process-wide disposition to the default; no handler runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Run { config } => run(config).await,
        Command::Demo { listen, admin_listen } => {
            let (log, _guard, _) = init_logging(None);
            match tollgate::dev::demo::run(listen, admin_listen, log, shutdown_signal()).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => Err(anyhow::anyhow!("{e}")),
            }
        }
        Command::MockPlatform { listen, token_env, balance, step_ms, fault, fault_rate, fault_status, latency_ms } => {
            mock(listen, token_env, balance, step_ms, fault.map(|f| (f, fault_rate, fault_status, latency_ms))).await
        }
        Command::CheckConfig { config, skip_secrets } => Ok(check_config(&config, skip_secrets)),
        Command::Keygen { webhook_secret } => Ok(keygen(webhook_secret)),
        Command::Tenants { action, api } => Ok(admin_command(api, || tenants_call(action)).await),
        Command::Keys { action, api } => Ok(admin_command(api, || keys_call(action)).await),
        Command::Healthcheck { url } => Ok(healthcheck(&url).await),
        Command::Usage { config, month, tenant, format } => usage(&config, month, tenant, &format).await,
        Command::Store { action: StoreAction::Recover { config } } => match load(&config) {
            Ok(c) => tollgate::store::recover(&c.store)
                .await
                .map(|report| {
                    println!("{report}");
                    ExitCode::SUCCESS
                })
                .map_err(anyhow::Error::from),
            Err(e) => {
                eprintln!("tollgate: {e}");
                Ok(ExitCode::from(EXIT_BAD_CONFIG))
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// mimalloc keeps freed large buffers for reuse: a 14 MB request body otherwise costs a fresh
// mmap and ~3,500 page faults per request with glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
