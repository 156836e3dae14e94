//! The `tollgate` binary as an operator runs it: exit codes, SIGTERM drain, SIGHUP reload,
//! kill -9 durability with SQLite, and two replicas sharing one Redis.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tollgate::dev::testkit::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A running `tollgate run`, its stdout collected line by line.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    admin: SocketAddr,
    /// The `tollgate serving` start-up line.
    serving: serde_json::Value,
}

impl Proc {
    fn spawn(config: &str, dir: &std::path::Path, extra_env: &[(&str, &str)]) -> Proc {
        let path = dir.join(format!("{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, config).unwrap();
        Proc::spawn_path(&path, extra_env)
    }

    fn spawn_path(path: &std::path::Path, extra_env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"]).arg(path);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Proc::spawn_command(cmd)
    }

    /// Starts `cmd` (a `tollgate run`, perhaps behind a wrapper such as `taskset`).
    fn spawn_command(mut cmd: Command) -> Proc {
        cmd.env("TEST_PLATFORM_TOKEN", TOKEN).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = lines.lock().unwrap().iter().find_map(|l| {
                serde_json::from_str::<serde_json::Value>(l).ok().filter(|v| v["message"] == "tollgate serving")
            });
            if let Some(serving) = found {
                let (addr, admin) = (
                    serving["listen"].as_str().unwrap().parse().unwrap(),
                    serving["admin"].as_str().unwrap().parse().unwrap(),
                );
                return Proc { child, lines, addr, admin, serving };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("tollgate exited early with {status}: {:?}", lines.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "tollgate did not start: {:?}", lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "tollgate did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn access_lines(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access_log")
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sqlite_config(platform: SocketAddr, db: &std::path::Path, tenants: &str) -> String {
    config_text(platform, "", tenants)
        .replace("backend = \"memory\"", &format!("backend = \"sqlite\"\npath = \"{}\"", db.display()))
}

#[test]
fn bad_config_exits_64_listing_every_problem_one_per_line() {
    let dir = temp_dir();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"nowhere\"\nbogus = 1\n").unwrap();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&path).env("RUNBLOB_TOKEN", "t").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.trim().lines().collect();
    assert_eq!(lines.len(), 4, "a header and one line per problem: {err}");
    assert!(lines[1..].iter().all(|l| l.starts_with("  - ")), "{err}");
    assert!(err.contains("server.listen") && err.contains("server.bogus") && err.contains("no [[tenants]]"), "{err}");
}

#[test]
fn missing_token_exits_64() {
    let dir = temp_dir();
    let path = dir.join("c.toml");
    std::fs::write(&path, tenant("a", KEY_A, 1, 1, 1, None)).unwrap();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&path).env_remove("RUNBLOB_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUNBLOB_TOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reads_the_store_offline() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let config = sqlite_config(platform.addr, &dir.join("tollgate.db"), &default_tenants());
    let gw = Proc::spawn(&config, &dir, &[]);
    let c = client();
    for _ in 0..3 {
        assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    }
    let path = dir.join("usage.toml");
    std::fs::write(&path, &config).unwrap();
    let run = |format: &str| {
        Command::new(BIN)
            .args(["usage", "--config"])
            .arg(&path)
            .args(["--format", format])
            .env_remove("TEST_PLATFORM_TOKEN")
            .output()
            .unwrap()
    };
    let out = run("table");
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let row = table.lines().find(|l| l.starts_with("a ")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("0.3600") && row.trim_end().ends_with('3'), "{table}");
    let json: serde_json::Value = serde_json::from_slice(&run("json").stdout).unwrap();
    assert_eq!(json["tenants"][0]["spent"], "0.3600");
    assert_eq!(String::from_utf8(run("csv").stdout).unwrap().lines().count(), 4);
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_healthcheck_command_passes_against_a_live_gateway() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let gw = Proc::spawn(&config_text(platform.addr, "", &default_tenants()), &dir, &[]);
    // The command deploy/docker-compose.yml runs, under /bin/sh -c as Docker would with a shell.
    let compose = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/docker-compose.yml")).unwrap();
    assert!(compose.contains(r#""/usr/local/bin/tollgate", "healthcheck", "--url", "http://127.0.0.1:9090/readyz""#));
    let cmd = format!("{BIN} healthcheck --url http://{}/readyz", gw.admin);
    let ok = Command::new("/bin/sh").args(["-c", &cmd]).status().unwrap();
    assert!(ok.success());
    // Its complaint is captured (and checked), not printed into a passing run.
    let down = Command::new("/bin/sh")
        .args(["-c", &format!("{BIN} healthcheck --url http://{}/readyz", dead_addr().await)])
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("/readyz"), "{down:?}");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_failures_are_logged_with_their_cause() {
    let dead = dead_addr().await;
    let dir = temp_dir();
    let config = config_text(dead, "", &default_tenants())
        .replace("circuit_failure_threshold = 1000", "circuit_failure_threshold = 2");
    let gw = Proc::spawn(&config, &dir, &[]);
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_A)).await.status, 503);
    }
    let logged = |needle: &str| gw.lines.lock().unwrap().iter().any(|l| l.contains(needle));
    eventually(Duration::from_secs(3), || logged(r#""cause":"unreachable""#) && logged("upstream circuit opened"))
        .await;
    // Rate-limited: an outage does not write a line per request.
    let failures = gw.lines.lock().unwrap().iter().filter(|l| l.contains("platform call failed")).count();
    assert!(failures <= 2, "{failures} failure lines");
    // Diagnostic and access lines share one shape: flat JSON with `time`, `level`, `target`.
    eventually(Duration::from_secs(3), || logged(r#""target":"access_log""#)).await;
    for line in gw.lines.lock().unwrap().iter() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let t = v["time"].as_str().unwrap_or_else(|| panic!("no time: {line}"));
        assert!(time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok(), "{line}");
        assert!(
            v["level"].is_string()
                && v["target"].is_string()
                && v.get("timestamp").is_none()
                && v.get("fields").is_none(),
            "{line}"
        );
    }
}

/// The shipped example with its public keys swapped for one of ours (what an operator does
/// first), beside a copy of its model catalog.
fn example_with_own_keys() -> std::path::PathBuf {
    let dir = temp_dir();
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::copy(format!("{root}/config/models.toml"), dir.join("models.toml")).unwrap();
    let text = std::fs::read_to_string(format!("{root}/config/tollgate.toml")).unwrap();
    let mut fresh = text.clone();
    for public in tollgate::config::PUBLIC_KEYS {
        let own = hex::encode(tollgate::policy::tenants::key_digest(&tollgate::policy::keys::new_key()));
        fresh = fresh.replace(&hex::encode(tollgate::policy::tenants::key_digest(public)), &own);
    }
    assert_ne!(fresh, text, "the example holds public keys");
    let path = dir.join("tollgate.toml");
    std::fs::write(&path, fresh).unwrap();
    path
}

#[test]
fn check_config_and_keygen() {
    let own = example_with_own_keys();
    let example = own.to_str().unwrap();
    let out = Command::new(BIN).args(["check-config", "--config", example]).env("RUNBLOB_TOKEN", "t").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("is valid") && text.contains("tenant marketing"), "{text}");
    assert!(
        text.contains(&format!("model catalog {} (10 families)", own.with_file_name("models.toml").display())),
        "{text}"
    );
    assert!(text.contains("enabled families (priced): chatgpt-images, gemini, kling"), "{text}");
    assert!(text.contains("not offered (no price; their routes answer 404): seedance"), "{text}");
    // Without the secret: the same verdict as `run` (exit 64) …
    let out =
        Command::new(BIN).args(["check-config", "--config", example]).env_remove("RUNBLOB_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUNBLOB_TOKEN"));
    // … unless asked to leave secrets out (validating a file where they do not live).
    let out = Command::new(BIN)
        .args(["check-config", "--skip-secrets", "--config", example])
        .env_remove("RUNBLOB_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("warning: environment variable RUNBLOB_TOKEN"));
    let out = Command::new(BIN).args(["keygen", "--webhook-secret"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        tollgate::policy::signing::SigningKey::parse(text.lines().next().unwrap().trim_start_matches("secret:").trim())
            .is_ok(),
        "{text}"
    );

    let out = Command::new(BIN).arg("keygen").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().next().unwrap().trim_start_matches("key:").trim().to_string();
    let digest = hex::encode(tollgate::policy::tenants::key_digest(&key));
    // Before: tg_ + 48 hex digits, without the checksum of issued keys.
    assert!(tollgate::policy::keys::well_formed(&key), "{key}");
    assert!(text.contains(&digest), "the printed config line holds the key's digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let mut gw = Proc::spawn(&config_text(platform.addr, "", &default_tenants()), &dir, &[]);
    platform.delay("/v1/sora/generate", 1000, 1);
    let c = client();
    let url = gw.url("/v1/sora/generate");
    let in_flight = tokio::spawn(async move { post(&c, &url, Some(KEY_A), SORA).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 201);
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait(Duration::from_secs(10));
        (s, gw.access_lines().len())
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0));
    assert_eq!(status.1, 1, "the drained request was logged");
}

/// `TOKIO_WORKER_THREADS=1` runs tokio's single-threaded scheduler. Everything the paid path
/// hands to other threads (SQLite's writer, the reconciler's timers) and everything that outlives
/// a request (a client that leaves after the forward, the drain) must still work on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_the_paid_path_and_drains() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let config = fast_reconcile(&sqlite_config(platform.addr, &dir.join("tollgate.db"), &default_tenants()), 2, 300);
    let mut gw = Proc::spawn(&config, &dir, &[("TOKIO_WORKER_THREADS", "1")]);
    let serving = &gw.serving;
    assert_eq!(
        (serving["workers"].as_u64(), serving["scheduler"].as_str()),
        (Some(1), Some("single-threaded")),
        "{serving}"
    );
    let c = client();
    // A client that leaves while the platform is still answering: the forward runs to its end.
    platform.delay("/v1/sora/generate", 800, 1);
    let url = gw.url("/v1/sora/generate");
    let left = tokio::time::timeout(Duration::from_millis(200), post(&c, &url, Some(KEY_A), SORA)).await;
    assert!(left.is_err(), "the client gave up before the answer");
    // Eight clients at once, each generating and polling what it got.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url, base) = (c.clone(), url.clone(), gw.url("/v1/sora/generations/"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let r = post(&c, &url, Some(KEY_A), SORA).await;
                assert_eq!(r.status, 201, "{:?}", r.body);
                let id = r.json()["generation_id"].as_str().unwrap().to_string();
                assert_eq!(get(&c, &format!("{base}{id}/"), Some(KEY_A)).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The one that was left behind settled too: spend equals what the platform charged.
    converges(&gw, &platform, Duration::from_secs(20)).await;
    assert_eq!(platform.mock.generations().len(), 81);
    // An in-flight request at SIGTERM is drained on the same thread.
    platform.delay("/v1/sora/generate", 500, 1);
    let in_flight = tokio::spawn(async move { post(&c, &url, Some(KEY_A), SORA).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("TERM");
    assert_eq!(in_flight.await.unwrap().status, 201);
    let status = tokio::task::spawn_blocking(move || gw.wait(Duration::from_secs(10))).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Without `TOKIO_WORKER_THREADS`, the worker count follows the cores the process may use: one
/// pinned to one core (a sidecar with a one-CPU limit) gets the single-threaded scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_count_follows_the_cores_the_process_may_use() {
    if Command::new("taskset").arg("-V").output().is_err() {
        eprintln!("skipped: taskset (util-linux) is not installed");
        return;
    }
    let platform = Platform::start().await;
    let dir = temp_dir();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(platform.addr, "", &default_tenants())).unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    for (cpus, workers, scheduler) in [
        ("0".to_string(), 1, "single-threaded"),
        (format!("0-{}", cores - 1), cores, if cores == 1 { "single-threaded" } else { "multi-threaded" }),
    ] {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &cpus, BIN, "run", "--config"]).arg(&path).env_remove("TOKIO_WORKER_THREADS");
        let gw = Proc::spawn_command(cmd);
        let serving = &gw.serving;
        assert_eq!(
            (serving["workers"].as_u64(), serving["scheduler"].as_str()),
            (Some(workers as u64), Some(scheduler)),
            "cpus {cpus}: {serving}"
        );
        assert_eq!(post(&client(), &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    }
}

#[test]
fn a_bad_worker_count_exits_64_naming_the_variable() {
    for bad in ["0", "two", "-1"] {
        let out = Command::new(BIN)
            .args([
                "check-config",
                "--skip-secrets",
                "--config",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.toml"),
            ])
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("TOKIO_WORKER_THREADS must be a whole number of at least 1"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_admin_reload_swap_tenants_and_refuse_bad_configs() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let path = dir.join("live.toml");
    let server = "admin_token_env = \"TEST_ADMIN_TOKEN\"";
    std::fs::write(&path, config_text(platform.addr, server, &tenant("a", KEY_A, 100, 100, 100, None))).unwrap();
    let gw = Proc::spawn_path(&path, &[("TEST_ADMIN_TOKEN", "admin-secret-for-tests-0123456789abcdef")]);
    let c = client();
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_B)).await.status, 401);
    // Add tenant b and send SIGHUP, on a live keep-alive connection.
    std::fs::write(&path, config_text(platform.addr, server, &default_tenants())).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&c, &gw.url("/v1/data/balance"), Some(KEY_B)).await.status != 200 {
        assert!(Instant::now() < deadline, "SIGHUP did not add tenant b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file is refused; the old config keeps serving.
    std::fs::write(&path, "this is not toml [").unwrap();
    let admin = format!("http://{}/admin/reload", gw.admin);
    let r = send(&c, request(http::Method::POST, &admin, Some("admin-secret-for-tests-0123456789abcdef"), "")).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.detail().starts_with("Config refused"));
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_B)).await.status, 200);
    // Admin reload needs the admin token.
    assert_eq!(send(&c, request(http::Method::POST, &admin, Some("wrong"), "")).await.status, 401);
    // Removing tenant b through the admin endpoint takes effect at once.
    std::fs::write(&path, config_text(platform.addr, server, &tenant("a", KEY_A, 100, 100, 100, None))).unwrap();
    let r = send(&c, request(http::Method::POST, &admin, Some("admin-secret-for-tests-0123456789abcdef"), "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tenants"], 1);
    assert_eq!(r.json()["restart_required"], serde_json::json!([]));
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(KEY_B)).await.status, 401);
    // A change a reload cannot apply is named in the answer and the log.
    std::fs::write(
        &path,
        config_text(platform.addr, server, &tenant("a", KEY_A, 100, 100, 100, None))
            .replace("timeout_secs = 2", "timeout_secs = 3"),
    )
    .unwrap();
    let r = send(&c, request(http::Method::POST, &admin, Some("admin-secret-for-tests-0123456789abcdef"), "")).await;
    assert_eq!(r.json()["restart_required"], serde_json::json!(["upstream"]));
    eventually(Duration::from_secs(2), || {
        gw.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("take effect only after a restart") && l.contains("upstream"))
    })
    .await;
    let metrics = get(&c, &format!("http://{}/metrics", gw.admin), None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("tollgate_config_reloads_total{result=\"ok\"} 3"), "{text}");
    assert!(text.contains("tollgate_config_reloads_total{result=\"refused\"} 1"), "{text}");
}

/// A family the platform added: one more `[[family]]` in the catalog file and a price, then a
/// reload; no new binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_added_to_the_catalog_is_served_after_a_reload() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let (path, catalog) = (dir.join("live.toml"), dir.join("models.toml"));
    std::fs::write(&catalog, tollgate::policy::catalog::BUILTIN).unwrap();
    let server = "admin_token_env = \"TEST_ADMIN_TOKEN\"";
    let with = |extra_price: &str| {
        config_text(platform.addr, server, &default_tenants()).replace(
            "[pricing]\n",
            &format!("[catalog]\npath = {:?}\n\n[pricing]\n{extra_price}", catalog.display().to_string()),
        )
    };
    std::fs::write(&path, with("")).unwrap();
    let gw = Proc::spawn_path(&path, &[("TEST_ADMIN_TOKEN", "admin-secret-for-tests-0123456789abcdef")]);
    let c = client();
    let url = gw.url("/v1/wan/generate");
    let r = post(&c, &url, Some(KEY_A), r#"{"prompt":"a fox"}"#).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert!(r.detail().contains("wan") && r.detail().contains("kling/o1-video"), "{}", r.detail());

    // The operator copies a Sora-like entry, renames it and lists its own values.
    let wan = r#"
[[family]]
path = "wan"
id_field = "generation_id"
price_by = [{ field = "resolution", default = "720p" }]
rules = [
  { field = "prompt", check = "text", required = true, min = 1, max = 800 },
  { field = "resolution", check = "enum", values = ["480p", "720p"] },
  { field = "callback_url", check = "callback_url" },
  { field = "image_base64", check = "image", max_mib = 5 },
]
"#;
    std::fs::write(&catalog, format!("{}{wan}", tollgate::policy::catalog::BUILTIN)).unwrap();
    std::fs::write(&path, with("wan = { \"720p\" = \"0.10\", \"480p\" = \"0.05\" }\n")).unwrap();
    let admin = format!("http://{}/admin/reload", gw.admin);
    let r = send(&c, request(http::Method::POST, &admin, Some("admin-secret-for-tests-0123456789abcdef"), "")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["restart_required"], serde_json::json!([]));

    // Its rules hold, its price is held, and the platform sees the request.
    let r = post(&c, &url, Some(KEY_A), r#"{"prompt":"a fox","resolution":"1080p"}"#).await;
    assert_eq!((r.status.as_u16(), r.detail()), (422, "resolution: must be one of '480p', '720p'".to_string()));
    let r = post(&c, &url, Some(KEY_A), r#"{"prompt":"a fox","image_base64":"not base64"}"#).await;
    assert_eq!((r.status.as_u16(), r.detail()), (422, "image_base64: is not valid base64".to_string()));
    assert!(platform.requests_to("/v1/wan").is_empty(), "nothing invalid was forwarded");
    let r = post(&c, &url, Some(KEY_A), r#"{"prompt":"a fox"}"#).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["generation_id"].as_str().unwrap().to_string();
    let r = get(&c, &gw.url(&format!("/v1/wan/generations/{id}")), Some(KEY_A)).await;
    assert_eq!(
        r.status,
        200,
        "{:?} {:?}",
        r.body,
        platform.requests_to("/v1/wan").iter().map(|r| r.path.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        get(&c, &gw.url(&format!("/v1/wan/generations/{id}")), Some(KEY_B)).await.status,
        404,
        "only its owner sees it"
    );
    let usage = get(&c, &gw.url("/v1/gateway/usage"), Some(KEY_A)).await;
    assert_eq!(usage.json()["spent"], "0.1000", "{:?}", usage.json());
    eventually(Duration::from_secs(2), || {
        gw.access_lines().iter().any(|l| l["route"] == "/v1/wan/generate" && l["status"] == 201)
    })
    .await;

    // A broken catalog is refused with every problem named; the loaded one keeps serving.
    std::fs::write(
        &catalog,
        format!(
            "{}{}",
            tollgate::policy::catalog::BUILTIN,
            wan.replace("\"enum\"", "\"enumm\"").replace("max_mib = 5", "max_mib = 5, urls = true")
        ),
    )
    .unwrap();
    let r = send(&c, request(http::Method::POST, &admin, Some("admin-secret-for-tests-0123456789abcdef"), "")).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.detail().contains("family \"wan\" rules[1] (resolution): unknown check \"enumm\""), "{}", r.detail());
    assert!(r.detail().contains("rules[3] (image_base64): `urls` does not apply to check \"image\""), "{}", r.detail());
    assert_eq!(post(&c, &url, Some(KEY_A), r#"{"prompt":"a fox","resolution":"480p"}"#).await.status, 201);
}

/// A gauge or counter's value from a /metrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// Polls the process's /metrics until tenant `a`'s spend equals what the platform charged and
/// nothing is held or unknown; returns how long that took.
async fn converges(gw: &Proc, platform: &Platform, within: Duration) -> Duration {
    let started = Instant::now();
    let c = client();
    loop {
        let text =
            String::from_utf8_lossy(&get(&c, &format!("http://{}/metrics", gw.admin), None).await.body).into_owned();
        let spend = metric(&text, r#"tollgate_spend_usd{tenant="a"}"#).unwrap_or(0.0);
        let charged = platform.mock.charged_total().as_f64();
        let (open, unknown) = (
            metric(&text, "tollgate_holds_open").unwrap_or(-1.0),
            metric(&text, "tollgate_holds_unknown").unwrap_or(-1.0),
        );
        if (spend - charged).abs() < 1e-9 && open == 0.0 && unknown == 0.0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "no convergence: spend {spend}, platform charged {charged}, open {open}, unknown {unknown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn kill_9_mid_burst_then_restart(config: String, dir: PathBuf, platform: Platform) {
    let gw = Proc::spawn(&config, &dir, &[]);
    let c = client();
    let url = gw.url("/v1/sora/generate");
    // A steady burst of paid requests from several clients; the platform answers late, so
    // several are always in flight…
    let mut f = platform.fault(FaultKind::LateAnswer);
    f.latency_ms = Some(150);
    f.path_prefix = Some("/v1/sora/generate".into());
    f.times = Some(100_000);
    platform.inject(f);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url, acked) = (c.clone(), url.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                let req = request(http::Method::POST, &url, Some(KEY_A), SORA);
                match c.request(req).await {
                    Ok(rsp) if rsp.status() == 201 => {
                        use http_body_util::BodyExt;
                        let Ok(body) = rsp.into_body().collect().await else { return };
                        let v: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
                        acked.lock().unwrap().push(v["generation_id"].as_str().unwrap().to_string());
                    }
                    Ok(rsp) => {
                        eprintln!("burst: unexpected {}", rsp.status());
                        return;
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // …and the process dies mid-burst, just after the platform took a request it will answer
    // only 150 ms later (the burst runs in lockstep, so "30 acks" alone can fall between rounds).
    eventually(Duration::from_secs(30), || acked.lock().unwrap().len() >= 30).await;
    let seen = platform.generate_calls();
    eventually(Duration::from_secs(10), || platform.generate_calls() > seen).await;
    let mut gw = gw;
    gw.signal("KILL");
    gw.wait(Duration::from_secs(5));
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 30);
    assert!(platform.generate_calls() > acked.len(), "some requests were in flight at the kill");

    // After a restart, every 201 a tenant received is in the ledger …
    let gw = Proc::spawn(&config, &dir, &[]);
    for id in &acked {
        let r = get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(KEY_A)).await;
        assert_eq!(r.status, 200, "generation {id} was acknowledged but lost");
        let r = get(&c, &gw.url(&format!("/v1/sora/generations/{id}/")), Some(KEY_B)).await;
        assert_eq!(r.status, 404, "ownership survived too");
    }
    // … and the requests that were in flight converge: spend equals what the platform charged.
    let took = converges(&gw, &platform, Duration::from_secs(30)).await;
    eprintln!(
        "kill -9: {} acked, {} charged by the platform, ledger matched {took:?} after restart",
        acked.len(),
        platform.mock.generations().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_on_sqlite_converges_after_restart() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let config = fast_reconcile(&sqlite_config(platform.addr, &dir.join("tollgate.db"), &default_tenants()), 2, 300);
    kill_9_mid_burst_then_restart(config, dir, platform).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_on_redis_converges_after_restart() {
    let redis = RedisServer::start();
    let platform = Platform::start().await;
    let dir = temp_dir();
    let config = fast_reconcile(&config_text(platform.addr, "", &default_tenants()), 2, 300)
        .replace("backend = \"memory\"", &format!("backend = \"redis\"\nurl = \"{}\"", redis.url));
    kill_9_mid_burst_then_restart(config, dir, platform).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_whose_grace_runs_out_mid_request_is_reconciled_after_restart() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let config = fast_reconcile(&sqlite_config(platform.addr, &dir.join("tollgate.db"), &default_tenants()), 2, 300)
        .replace("shutdown_grace_secs = 5", "shutdown_grace_secs = 1");
    let mut gw = Proc::spawn(&config, &dir, &[]);
    // The platform charges at once and answers after 1.8 s (inside the 2 s upstream timeout,
    // past the 1 s grace).
    let mut f = platform.fault(FaultKind::LateAnswer);
    f.latency_ms = Some(1800);
    f.path_prefix = Some("/v1/sora/generate".into());
    platform.inject(f);
    let c = client();
    let url = gw.url("/v1/sora/generate");
    let in_flight = tokio::spawn(async move { c.request(request(http::Method::POST, &url, Some(KEY_A), SORA)).await });
    eventually(Duration::from_secs(5), || platform.generate_calls() == 1).await;
    gw.signal("TERM");
    let status = tokio::task::spawn_blocking(move || gw.wait(Duration::from_secs(10))).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = in_flight.await;
    assert_eq!(platform.mock.charged_total(), usd("0.12"));
    let gw = Proc::spawn(&config, &dir, &[]);
    converges(&gw, &platform, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_share_limits_and_never_overspend() {
    let redis = RedisServer::start();
    let platform = Platform::with_balance("0.84").await;
    let dir = temp_dir();
    let tenants = format!("{}{}", tenant("a", KEY_A, 1, 5, 1000, None), tenant("b", KEY_B, 1000, 1000, 1000, None));
    let config = config_text(platform.addr, "", &tenants).replace(
        "backend = \"memory\"",
        &format!("backend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"t{}\"", redis.url, uuid::Uuid::new_v4().simple()),
    );
    let one = Proc::spawn(&config, &dir, &[]);
    let two = Proc::spawn(&config, &dir, &[]);
    let c = client();

    // Tenant a: burst 5 shared by both replicas, not 5 each.
    let mut ok = 0;
    for i in 0..10 {
        let gw = if i % 2 == 0 { &one } else { &two };
        if get(&c, &gw.url("/v1/sora/generations"), Some(KEY_A)).await.status == 200 {
            ok += 1;
        }
    }
    assert!((5..=6).contains(&ok), "{ok} passed; the shared limit is 5 (plus at most one replenished)");

    // Tenant b: 50 concurrent generates over both replicas at a balance for 7.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let url = if i % 2 == 0 { one.url("/v1/sora/generate") } else { two.url("/v1/sora/generate") };
            let c = c.clone();
            tokio::spawn(async move { post(&c, &url, Some(KEY_B), SORA).await.status.as_u16() })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => created += 1,
            402 => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(created, 7);
    assert_eq!(platform.generate_calls(), 7);
    // A generation made through one replica is visible (and owned) through the other.
    let id = platform.requests_to("/v1/sora/generate").len();
    assert_eq!(id, 7);
    let list = get(&c, &two.url("/v1/sora/generations"), Some(KEY_B)).await;
    assert_eq!(list.json().as_array().unwrap().len(), 7);
    let readyz = get(&c, &format!("http://{}/readyz", one.admin), None).await;
    assert_eq!(readyz.status, 200);
    // Redis gone: money fails closed, fast; readiness reports it.
    drop(redis);
    let started = Instant::now();
    let r = post(&c, &one.url("/v1/sora/generate"), Some(KEY_B), SORA).await;
    assert_eq!((r.status.as_u16(), r.detail().as_str()), (503, "Store unavailable"));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(get(&c, &format!("http://{}/readyz", one.admin), None).await.status, 503);
    assert_eq!(platform.generate_calls(), 7);
}

/// A stand-in OTLP/HTTP collector: records what is POSTed to it and answers 200.
async fn fake_collector() -> (SocketAddr, Arc<Mutex<Vec<(String, bytes::Bytes)>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        sink.lock().unwrap().push((path, body));
                        let mut rsp = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        rsp.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

/// `[telemetry]`: each request's span reaches an OTLP collector in the caller's trace, as a child
/// of the caller's span; the access line and the platform's `traceparent` name that same span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_over_otlp_in_the_callers_trace() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let platform = Platform::start().await;
    let (collector, got) = fake_collector().await;
    let dir = temp_dir();
    let config = format!(
        "{}\n[telemetry]\notlp_endpoint = \"http://{collector}\"\nservice_name = \"tollgate-test\"\n",
        config_text(platform.addr, "", &default_tenants())
    );
    let mut gw = Proc::spawn(&config, &dir, &[]);
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let c = client();
    let mut req = request(http::Method::POST, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA);
    req.headers_mut().insert("traceparent", format!("00-{trace}-{parent}-01").parse().unwrap());
    req.headers_mut().insert("x-request-id", "otlp-probe-1".parse().unwrap());
    assert_eq!(send(&c, req).await.status, 201);
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(10)).success());

    // The collector got the span (flushed at shutdown), on the standard path.
    let got = got.lock().unwrap().clone();
    assert!(!got.is_empty(), "no export reached the collector");
    assert!(got.iter().all(|(path, _)| path == "/v1/traces"), "{:?}", got.iter().map(|g| &g.0).collect::<Vec<_>>());
    let mut spans = Vec::new();
    for (_, body) in &got {
        let export = ExportTraceServiceRequest::decode(body.clone()).expect("OTLP protobuf");
        for rs in export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.clone());
            assert!(format!("{service:?}").contains("tollgate-test"), "{service:?}");
            spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    let span = spans.iter().find(|s| hex::encode(&s.trace_id) == trace).expect("a span in the caller's trace");
    assert_eq!(hex::encode(&span.parent_span_id), parent, "a child of the caller's span");
    assert_eq!(span.name, "POST /v1/sora/generate");
    let span_id = hex::encode(&span.span_id);
    // The platform was called with that span as parent; the access line names the trace.
    let sent = platform.mock.recorded().into_iter().find(|r| r.path.ends_with("/generate")).unwrap();
    assert_eq!(sent.trace.0.as_deref(), Some(format!("00-{trace}-{span_id}-01").as_str()));
    let line = gw.access_lines().into_iter().find(|l| l["request_id"] == "otlp-probe-1").unwrap();
    assert_eq!(line["trace_id"], trace);
}

/// The shipped example as a new operator would first use it: its public keys never go live,
/// every concern is said once, and nothing depends on the directory tollgate is started from.
#[tokio::test]
async fn the_first_real_run_is_safe_by_default() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .env("RUNBLOB_TOKEN", "t")
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    // Before: "valid", exit 0, while `run` refused the same file with 64. Now one verdict.
    assert_eq!(out.status.code(), Some(64), "check-config refuses what run refuses");
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        r#"error: tenant "marketing" accepts the publicly known example key "tg_example_marketing""#,
        r#"error: tenant "research" accepts the publicly known example key "tg_example_research""#,
        "warning: the admin API is disabled (TOLLGATE_ADMIN_TOKEN is not set)",
        "store sqlite /var/lib/tollgate/tollgate.db",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    eprintln!("check-config on the shipped example:\n{text}");
    // `run` refuses it, naming the tenants, before binding anything.
    let out = Command::new(BIN).args(["run", "--config", example]).env("RUNBLOB_TOKEN", "t").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"tenant "marketing" accepts the publicly known example key "tg_example_marketing""#)
            && err.contains("tollgate keygen"),
        "{err}"
    );

    // Relative paths are the config file's: the same ledger from any directory.
    let dir = temp_dir();
    let platform = Platform::start().await;
    let text = config_text(platform.addr, "", &default_tenants())
        .replace("backend = \"memory\"", "backend = \"sqlite\"\npath = \"ledger/t.db\"");
    std::fs::write(dir.join("t.toml"), &text).unwrap();
    let elsewhere = temp_dir();
    let out =
        Command::new(BIN).current_dir(&elsewhere).args(["usage", "--config"]).arg(dir.join("t.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "no store yet: refused, not an empty report");
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("the store {} does not exist", dir.join("ledger/t.db").display())));
    assert!(!dir.join("ledger").exists() && !elsewhere.join("ledger").exists(), "a report never creates a store");
    let mut cmd = Command::new(BIN);
    cmd.current_dir(&elsewhere).args(["run", "--config"]).arg(dir.join("t.toml"));
    let mut gw = Proc::spawn_command(cmd);
    assert_eq!(gw.serving["store_path"], dir.join("ledger/t.db").display().to_string());
    let c = client();
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(KEY_A), SORA).await.status, 201);
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(10)).success());
    let out = Command::new(BIN)
        .current_dir("/")
        .args(["usage", "--format", "json", "--config"])
        .arg(dir.join("t.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tenants"][0]["spent"], "0.1200", "{report}");
    // An unknown tenant is an error, not an empty table.
    let out =
        Command::new(BIN).args(["usage", "--tenant", "nobody", "--config"]).arg(dir.join("t.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"no tenant "nobody""#));

    // A store that cannot be created: one line naming the absolute path, exit 64.
    let bad = text.replace("path = \"ledger/t.db\"", "path = \"/proc/version/t.db\"");
    std::fs::write(dir.join("bad.toml"), bad).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.join("bad.toml"))
        .env("TEST_PLATFORM_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("/proc/version").count(), 1, "{err}");
}

/// `tollgate demo | head -3` ends quietly: no panic when it prints after the reader has gone.
#[tokio::test]
async fn demo_into_a_closed_pipe_ends_quietly() {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("{BIN} demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 | head -3"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Three lines only: the shell keeps this pipe open until the pipeline ends.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut head = String::new();
    for _ in 0..3 {
        out.read_line(&mut head).unwrap();
    }
    let gateway = head
        .split("gateway on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("{head}"))
        .to_string();
    // The demo's next line (a request's access line) meets the closed pipe; the demo may end
    // before it answers, so the answer is not awaited.
    let addr = gateway.trim_start_matches("http://").to_string();
    let poke = || async {
        use tokio::io::AsyncWriteExt;
        if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
            let _ = s.write_all(b"GET /v1/data/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg_demo_marketing_key\r\nConnection: close\r\n\r\n").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        poke().await;
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo kept running after its reader left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(status.success(), "{status:?}");
    assert_eq!(head.lines().count(), 3);
}

/// A config reloader that fires while a large config is still loading must not kill the
/// process: the signal handlers go in before the tenants load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_a_large_config_loads_does_not_kill_the_gateway() {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let platform = Platform::start().await;
    let dir = temp_dir();
    let mut tenants = String::new();
    for i in 0..50_000 {
        let digest = hex::encode(sha2::Sha256::digest(format!("key-{i}").as_bytes()));
        let _ = write!(tenants, "[[tenants]]\nid = \"t{i}\"\nkeys_sha256 = [\"{digest}\"]\nmonthly_budget = \"1\"\n\n");
    }
    let path = dir.join("big.toml");
    std::fs::write(&path, config_text(platform.addr, "", &tenants)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&path)
        .env("TEST_PLATFORM_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    let alive = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(alive, None, "a SIGHUP 0.3 s after start ended the process");
}

fn cli(admin: SocketAddr, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--admin-url").arg(format!("http://{admin}")).env_remove("TOLLGATE_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("TOLLGATE_ADMIN_TOKEN", t);
    }
    cmd.output().unwrap()
}

/// The onboarding of docs/operations.md, as an operator types it: three commands, then the
/// team's first request; no key or token ever reaches the gateway's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_is_onboarded_with_three_commands_and_no_secret_is_logged() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let admin_token = "cli-admin-token-0123456789abcdef0123";
    let gw = Proc::spawn(
        &config_text(platform.addr, "admin_token_env = \"TEST_ADMIN_TOKEN\"", &default_tenants()),
        &dir,
        &[("TEST_ADMIN_TOKEN", admin_token)],
    );
    let run = |args: &[&str]| {
        let out = cli(gw.admin, Some(admin_token), args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let created = run(&["tenants", "create", "team-cli", "--budget", "1", "--rps", "100", "--gpm", "100"]);
    assert!(created.contains("team-cli") && created.contains("1.0000"), "{created}");
    let issued = run(&["keys", "issue", "team-cli", "--label", "app"]);
    let key =
        issued.lines().find_map(|l| l.strip_prefix("key:")).map(|k| k.trim().to_string()).expect("the key is printed");
    assert!(key.starts_with("tg_"), "{issued}");
    let c = client();
    assert_eq!(post(&c, &gw.url("/v1/sora/generate"), Some(&key), SORA).await.status, 201);
    let shown = run(&["tenants", "show", "team-cli"]);
    assert!(shown.contains(&key[..8]) && !shown.contains(&key) && shown.contains("active"), "{shown}");
    let listed = run(&["tenants", "list"]);
    assert!(listed.lines().any(|l| l.starts_with("team-cli") && l.contains("api")), "{listed}");
    let json: serde_json::Value = serde_json::from_str(&run(&["tenants", "show", "team-cli", "--json"])).unwrap();
    let key_id = json["keys"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(run(&["keys", "revoke", "team-cli", &key_id]).trim(), "revoked");
    assert_eq!(get(&c, &gw.url("/v1/data/balance"), Some(&key)).await.status, 401);
    // Clear errors for what goes wrong on the operator's side.
    let wrong = cli(gw.admin, Some("wrong-token"), &["tenants", "list"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("refused the token"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let none = cli(gw.admin, None, &["tenants", "list"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("set TOLLGATE_ADMIN_TOKEN"));
    let gone = cli(dead_addr().await, Some(admin_token), &["tenants", "list"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("cannot reach the admin API"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    let missing = cli(gw.admin, Some(admin_token), &["tenants", "show", "nobody"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404: Tenant not found"));
    // The log has the audit trail and no secret.
    eventually(Duration::from_secs(2), || {
        gw.lines.lock().unwrap().iter().filter(|l| l.contains("\"target\":\"audit\"")).count() >= 3
    })
    .await;
    let lines = gw.lines.lock().unwrap().clone();
    for l in &lines {
        assert!(!l.contains(&key) && !l.contains(admin_token), "a secret in the log: {l}");
    }
    assert!(lines
        .iter()
        .any(|l| l.contains("\"target\":\"audit\"") && l.contains("key.revoke") && l.contains(&key[..8])));
}

/// Before: an idle gateway lingered 1.1 s after its `stopped` line (the runtime waited on idle
/// pool threads). Now it exits at once.
#[tokio::test]
async fn an_idle_gateway_exits_promptly_on_sigterm() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let mut gw = Proc::spawn(&config_text(platform.addr, "", &default_tenants()), &dir, &[]);
    assert_eq!(get(&client(), &gw.url("/v1/data/balance"), Some(KEY_A)).await.status, 200);
    let started = Instant::now();
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(5)).success());
    assert!(started.elapsed() < Duration::from_millis(700), "exited {:?} after SIGTERM", started.elapsed());
}
