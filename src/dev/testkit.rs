//! Helpers for tests and benches that need real components: a throwaway `redis-server`, and a
//! primary with two replicas watched by three sentinels.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a private unix socket, killed on drop. Each test gets its own, so tests
/// never share state or ports.
pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    /// `unix:///…/redis.sock`
    pub url: String,
}

impl RedisServer {
    /// Starts one; panics with a hint when `redis-server` is not installed.
    pub fn start() -> RedisServer {
        let dir = std::env::temp_dir().join(format!("tollgate-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sock = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): the Redis-backed tests need it; run `scripts/test`, which installs it, instead of `cargo test`")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "redis-server did not create {}", sock.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        RedisServer { child, url: format!("unix://{}", sock.display()), dir }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The name the sentinels of [`Sentinels`] monitor.
pub const MASTER_NAME: &str = "tg";

/// A primary, two replicas and three sentinels (`redis-server --sentinel`), on free TCP ports of
/// 127.0.0.1 (sentinels announce addresses, so sockets will not do), killed on drop. The
/// sentinels call a primary down after 1 s without an answer.
pub struct Sentinels {
    dir: PathBuf,
    /// Data nodes by port; `None` once killed.
    nodes: Vec<(u16, Option<Child>)>,
    sentinels: Vec<(u16, Child)>,
}

fn free_port() -> u16 {
    // Bound and released: another process could take it in between, which on a test machine
    // is rare enough, and a clash fails loudly at start.
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn spawn(args: &[String]) -> Child {
    Command::new("redis-server").args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| {
        panic!("cannot start redis-server ({e}): the Redis-backed tests need it; run `scripts/test`, which installs it, instead of `cargo test`")
    })
}

/// One command to 127.0.0.1:`port`, with a short timeout.
pub fn redis_cmd<T: ::redis::FromRedisValue>(port: u16, args: &[&str]) -> ::redis::RedisResult<T> {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut c = client.get_connection_with_timeout(Duration::from_millis(500))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut cmd = ::redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c)
}

impl Sentinels {
    /// Starts them and waits until the sentinels know the primary, both replicas and each other.
    pub fn start() -> Sentinels {
        let dir = std::env::temp_dir().join(format!("tollgate-sentinels-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut me = Sentinels { dir, nodes: Vec::new(), sentinels: Vec::new() };
        let primary = free_port();
        me.start_node(primary, None);
        for _ in 0..2 {
            me.start_node(free_port(), Some(primary));
        }
        for i in 0..3 {
            let port = free_port();
            let sdir = me.dir.join(format!("sentinel-{i}"));
            std::fs::create_dir_all(&sdir).expect("sentinel dir");
            let conf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 4000\n\
                     sentinel parallel-syncs {MASTER_NAME} 2\n",
                    sdir.display()
                ),
            )
            .expect("sentinel.conf");
            let child = spawn(&[conf.display().to_string(), "--sentinel".into()]);
            me.sentinels.push((port, child));
        }
        me.wait_settled(Duration::from_secs(30));
        me
    }

    fn start_node(&mut self, port: u16, replica_of: Option<u16>) {
        let ndir = self.dir.join(format!("node-{port}"));
        std::fs::create_dir_all(&ndir).expect("node dir");
        let mut args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.push(ndir.display().to_string());
        if let Some(p) = replica_of {
            args.extend(["--replicaof".to_string(), "127.0.0.1".to_string(), p.to_string()]);
        }
        let child = spawn(&args);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cmd::<String>(port, &["PING"]).is_err() {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.nodes.iter_mut().find(|(p, _)| *p == port) {
            Some(slot) => slot.1 = Some(child),
            None => self.nodes.push((port, Some(child))),
        }
    }

    /// Waits until every sentinel names a live primary with two replicas in sync, and knows the
    /// two other sentinels (so a failover can be agreed on).
    pub fn wait_settled(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.settled() {
                return;
            }
            assert!(Instant::now() < deadline, "the sentinels did not settle within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn settled(&self) -> bool {
        let Some(primary) = self.primary() else { return false };
        let live = |p: u16| self.nodes.iter().any(|(port, c)| *port == p && c.is_some());
        if !live(primary) {
            return false;
        }
        let Ok(role) = redis_cmd::<::redis::Value>(primary, &["ROLE"]) else { return false };
        let ::redis::Value::Array(parts) = role else { return false };
        let replicas = match parts.get(2) {
            Some(::redis::Value::Array(r)) => r.len(),
            _ => 0,
        };
        if replicas < 2 {
            return false;
        }
        self.sentinels.iter().all(|(port, _)| {
            let same = redis_cmd::<Vec<String>>(*port, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME])
                .ok()
                .and_then(|v| v.get(1).and_then(|p| p.parse::<u16>().ok()))
                == Some(primary);
            let peers = redis_cmd::<Vec<::redis::Value>>(*port, &["SENTINEL", "sentinels", MASTER_NAME])
                .map(|v| v.len())
                .unwrap_or(0);
            let seen = redis_cmd::<Vec<::redis::Value>>(*port, &["SENTINEL", "replicas", MASTER_NAME])
                .map(|v| v.len())
                .unwrap_or(0);
            same && peers >= 2 && seen >= 2
        })
    }

    /// `host:port` of each sentinel, for `[store] sentinels`.
    pub fn addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect()
    }

    /// The primary's port as the first sentinel that answers says.
    pub fn primary(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|(port, _)| {
            redis_cmd::<Vec<String>>(*port, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME])
                .ok()
                .and_then(|v| v.get(1)?.parse().ok())
        })
    }

    /// `kill -9` of the current primary; returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let primary = self.primary().expect("a primary");
        let slot = self.nodes.iter_mut().find(|(p, _)| *p == primary).expect("primary is one of ours");
        let mut child = slot.1.take().expect("primary is running");
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        primary
    }

    /// Ports of the data nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }

    /// The port of a node that was killed and not restarted.
    pub fn dead(&self) -> Option<u16> {
        self.nodes.iter().find(|(_, c)| c.is_none()).map(|(p, _)| *p)
    }

    /// Starts a killed node again (empty, as after a crash without persistence); the sentinels
    /// turn it into a replica of the current primary.
    pub fn restart(&mut self, port: u16) {
        self.start_node(port, None);
    }

    /// `SENTINEL FAILOVER`: a planned switch (the old primary is demoted to a replica).
    pub fn failover(&self) {
        let (port, _) = &self.sentinels[0];
        let _: String = redis_cmd(*port, &["SENTINEL", "FAILOVER", MASTER_NAME]).expect("SENTINEL FAILOVER");
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (_, c) in self.sentinels.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, c) in self.nodes.iter_mut() {
            if let Some(c) = c {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
