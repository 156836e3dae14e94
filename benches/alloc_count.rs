//! Heap allocations per forwarded request: a figure this noisy 2-core machine cannot blur.
//! Time per request swings ±30 % between runs here; the number of allocations the gateway's own
//! threads make per status poll (status cache off, every poll forwarded) is the same on every
//! run, so a change that removes work shows up exactly.
//!
//!   cargo bench --bench alloc_count
//!
//! The gateway runs on its own tokio runtime whose threads are the only ones counted; the
//! simulated platform runs on another runtime and the client is a plain thread that reuses
//! its buffers. Also counts a paid generate and a balance read answered by the gateway itself.
//!
//! To see where they come from: `ALLOC_TRACE=1` prints the backtraces of the first allocations
//! of 1 KiB or more in the measured phase, `ALLOC_TRACE=1 ALLOC_TRACE_ALL=1` of every size.
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::config::{Config, Env};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocations of at least 1 KiB, by power-of-two size class (1 KiB … 1 MiB+).
static LARGE: [AtomicU64; 11] = [const { AtomicU64::new(0) }; 11];

/// Backtraces still to print (`ALLOC_TRACE`), and whether small allocations count too.
static TRACE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
static TRACE_ALL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    /// Set while a backtrace is taken (it allocates too).
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    let traced = size >= 1024 || TRACE_ALL.load(Ordering::Relaxed);
    if traced && TRACE.load(Ordering::Relaxed) > 0 && !IN_TRACE.with(|c| c.replace(true)) {
        TRACE.fetch_sub(1, Ordering::Relaxed);
        eprintln!("=== {size} bytes\n{}", std::backtrace::Backtrace::force_capture());
        IN_TRACE.with(|c| c.set(false));
    }
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if size >= 1024 {
        LARGE[((usize::BITS - size.leading_zeros()) as usize - 11).min(10)].fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTED.try_with(|c| c.get()).unwrap_or(false) {
            count(l.size());
        }
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNTED.try_with(|c| c.get()).unwrap_or(false) {
            count(new);
        }
        unsafe { mimalloc::MiMalloc.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Vars;
impl Env for Vars {
    fn var(&self, name: &str) -> Option<String> {
        (name == "ALLOC_TOKEN").then(|| "t".to_string())
    }
}

const KEY: &str = "alloc-count-key";

fn config(platform: SocketAddr, dir: &std::path::Path) -> String {
    let digest = hex::encode(tollgate::policy::tenants::key_digest(KEY));
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
base_url = "http://{platform}"
token_env = "ALLOC_TOKEN"
status_cache_ms = 0
[store]
backend = "sqlite"
path = "{}"
[pricing]
sora = "0.12"
[[tenants]]
id = "bench"
keys_sha256 = ["{digest}"]
requests_per_second = 1000000
burst = 1000000
generations_per_minute = 1000000
"#,
        dir.join("alloc.db").display()
    )
}

/// One keep-alive HTTP/1.1 exchange; returns the status and body (buffers reused by the caller).
fn exchange(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> (u16, String) {
    s.write_all(req).unwrap();
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = std::str::from_utf8(&buf[..end]).unwrap().to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            let status = head[9..12].parse().unwrap();
            return (status, String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
        }
    }
}

fn measure(label: &str, addr: SocketAddr, req: &[u8], expect: u16, n: u64) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::with_capacity(64 * 1024);
    for _ in 0..200 {
        assert_eq!(exchange(&mut s, req, &mut buf).0, expect, "{label}: warm-up");
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    if std::env::var("ALLOC_TRACE").is_ok() {
        TRACE_ALL.store(std::env::var_os("ALLOC_TRACE_ALL").is_some(), Ordering::Relaxed);
        TRACE.store(if TRACE_ALL.load(Ordering::Relaxed) { 285 } else { 14 }, Ordering::Relaxed);
    }
    let large = || LARGE.iter().map(|c| c.load(Ordering::Relaxed)).collect::<Vec<_>>();
    let (a0, b0, l0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed), large());
    for _ in 0..n {
        exchange(&mut s, req, &mut buf);
    }
    let (a1, b1, l1) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed), large());
    let classes: Vec<String> = l0
        .iter()
        .zip(&l1)
        .enumerate()
        .filter(|(_, (a, b))| *b > *a)
        .map(|(i, (a, b))| format!("{}KiB:{:.2}", 1 << i, (b - a) as f64 / n as f64))
        .collect();
    println!(
        "{label:<40} {:>6.1} allocations/request {:>8.0} bytes/request  (≥1 KiB by size class: {})",
        (a1 - a0) as f64 / n as f64,
        (b1 - b0) as f64 / n as f64,
        if classes.is_empty() { "none".into() } else { classes.join(" ") }
    );
}

fn main() {
    // The simulated platform, on its own runtime: not counted.
    let platform_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let platform = platform_rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mock = tollgate::dev::mock::MockPlatform::new(tollgate::dev::mock::MockOptions {
            token: Some("t".into()),
            balance: tollgate::policy::money::Usd::parse("1000000").unwrap(),
            step: std::time::Duration::from_secs(1_000_000),
            record: false,
            ..Default::default()
        });
        tokio::spawn(mock.serve(l, std::future::pending()));
        addr
    });
    // The gateway: every thread of this runtime (workers and blocking pool) is counted.
    let gw_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| COUNTED.with(|c| c.set(true)))
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tollgate-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = config(platform, &dir);
    let addr = gw_rt.block_on(async {
        let config = Config::from_toml(&text, &Vars).unwrap();
        // The production sink: lines batched in memory, written by a thread of its own.
        let (log, flush) = tollgate::observe::access_log::AccessLog::batched(std::io::sink());
        std::mem::forget(flush);
        let gateway = tollgate::build(&config, log, None).await.unwrap();
        let listeners = tollgate::Listeners::bind(&config).await.unwrap();
        let addr = listeners.tenant.local_addr().unwrap();
        tokio::spawn(async move { tollgate::run(&config, gateway, listeners, std::future::pending()).await });
        addr
    });

    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let body = r#"{"prompt":"a fox in the snow"}"#;
    let gen = format!("POST /v1/sora/generate HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let mut s = TcpStream::connect(addr).unwrap();
    let (status, body) = exchange(&mut s, gen.as_bytes(), &mut Vec::new());
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["generation_id"].as_str().unwrap().to_string();

    let n = 5000;
    println!("gateway threads only; {n} requests each, one keep-alive connection");
    let poll = format!("GET /v1/sora/generations/{id}/ HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    measure("status poll, forwarded (cache off)", addr, poll.as_bytes(), 200, n);
    let balance = format!("GET /v1/data/balance HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    measure("balance (the gateway's cached figure)", addr, balance.as_bytes(), 200, n);
    measure("paid generate (SQLite hold + settle)", addr, gen.as_bytes(), 201, 1000);
    let _ = std::fs::remove_dir_all(&dir);
}
