//! Helpers for tests and benches that need real components: a throwaway `redis-server`.

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
