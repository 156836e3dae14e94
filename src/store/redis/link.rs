//! The connection to the Redis primary: one address, or found through Sentinel, and dialled
//! again whenever it stops being the primary.
//!
//! redis-rs's `ConnectionManager` reconnects to one fixed address, and its `SentinelClient` asks
//! for the primary only when it is asked to connect (redis-rs#1438): a connection to a demoted
//! primary then answers READONLY for ever (envoyproxy/ratelimit#1191). So here a command error
//! that says the connection or the primary is gone (I/O, a dropped connection, READONLY,
//! MASTERDOWN, LOADING, a timeout) drops the connection, and the next command dials again, which
//! with Sentinel means asking the sentinels who the primary is now (and checking its ROLE).
//! Dials are one at a time and at most one per `REDIAL_EVERY`: while Redis is down each request
//! gets the last dial's error at once, never a stall behind a stampede of dials.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, RedisResult};

/// Between two failed dials.
const REDIAL_EVERY: Duration = Duration::from_millis(100);

/// Where the primary is.
pub enum Source {
    /// A fixed address (`redis://`, `rediss://`, `unix://`).
    Url(Client),
    /// Asked of the sentinels on every dial.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Source {
    /// Sentinels given as `host:port`, the monitored name, and the data nodes' database and password.
    pub fn sentinel(sentinels: &[String], master_name: &str, db: i64, password: Option<String>) -> RedisResult<Source> {
        let addrs: Vec<String> = sentinels.iter().map(|s| format!("redis://{s}")).collect();
        let node = SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(::redis::RedisConnectionInfo { db, password, ..Default::default() }),
        };
        let client = SentinelClient::build(addrs, master_name.to_string(), Some(node), SentinelServerType::Master)?;
        Ok(Source::Sentinel(tokio::sync::Mutex::new(client)))
    }
}

struct State {
    /// The connection in use and its number (a broken report names the one it saw fail).
    conn: Option<(u64, MultiplexedConnection)>,
    dials: u64,
    last_failure: Option<(Instant, String)>,
}

/// The primary's connection, shared by every command of one store.
pub struct Link {
    source: Source,
    timeout: Duration,
    state: Mutex<State>,
    dialing: tokio::sync::Mutex<()>,
}

/// Does this error mean the connection, or the node's role, can no longer be trusted?
pub fn is_fatal(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown | ErrorKind::BusyLoadingError)
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        // A script's write refused on a replica comes back wrapped in a script error.
        || e.to_string().contains("READONLY")
}

impl Link {
    pub fn new(source: Source, timeout: Duration) -> Link {
        Link { source, timeout, state: Mutex::new(State { conn: None, dials: 0, last_failure: None }), dialing: tokio::sync::Mutex::new(()) }
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.state.lock().unwrap().conn.clone()
    }

    /// The connection in use, dialling one if there is none.
    pub async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one_dial = self.dialing.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some((at, e)) = &self.state.lock().unwrap().last_failure {
            if at.elapsed() < REDIAL_EVERY {
                return Err(RedisError::from((ErrorKind::IoError, "not connected", e.clone())));
            }
        }
        let dialled = match tokio::time::timeout(self.timeout, self.dial()).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::from((ErrorKind::IoError, "dial timed out", format!("{:?}", self.timeout)))),
        };
        let mut st = self.state.lock().unwrap();
        match dialled {
            Ok(conn) => {
                st.dials += 1;
                st.last_failure = None;
                st.conn = Some((st.dials, conn.clone()));
                Ok((st.dials, conn))
            }
            Err(e) => {
                st.last_failure = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Connection `n` failed in a way that says it is gone: the next command dials again.
    pub fn broken(&self, n: u64) {
        let mut st = self.state.lock().unwrap();
        if st.conn.as_ref().is_some_and(|(m, _)| *m == n) {
            st.conn = None;
        }
    }

    async fn dial(&self) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new().set_connection_timeout(self.timeout).set_response_timeout(self.timeout);
        match &self.source {
            Source::Url(client) => client.get_multiplexed_async_connection_with_config(&config).await,
            Source::Sentinel(client) => client.lock().await.get_async_connection_with_config(&config).await,
        }
    }
}
