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
use ::redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, RedisConnectionInfo, RedisError,
    RedisResult, Value,
};

/// Between two failed dials.
const REDIAL_EVERY: Duration = Duration::from_millis(100);
/// How often the sentinels are asked whether the primary moved.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Where the primary is.
pub enum Source {
    /// A fixed address (`redis://`, `rediss://`, `unix://`).
    Url(Client),
    /// Asked of the sentinels on every dial.
    Sentinel {
        /// One client per sentinel, in the order given.
        sentinels: Vec<Client>,
        master_name: String,
        /// The data nodes' database and password.
        node: RedisConnectionInfo,
    },
}

impl Source {
    /// Sentinels given as `host:port`, the monitored name, and the data nodes' database and password.
    pub fn sentinel(sentinels: &[String], master_name: &str, db: i64, password: Option<String>) -> RedisResult<Source> {
        let sentinels =
            sentinels.iter().map(|s| Client::open(format!("redis://{s}"))).collect::<RedisResult<Vec<_>>>()?;
        Ok(Source::Sentinel {
            sentinels,
            master_name: master_name.to_string(),
            node: RedisConnectionInfo { db, password, ..Default::default() },
        })
    }
}

/// The primary as the sentinels name it now, connected and checked.
///
/// This follows the Sentinel client protocol (ask `SENTINEL get-master-addr-by-name`, then
/// check `ROLE`) rather than redis-rs's `SentinelClient`, which reads `SENTINEL MASTERS`: that
/// names the old primary (flagged down) until every replica has been moved to the new one, which
/// measured 1.2 s longer than get-master-addr-by-name after a kill -9 here.
async fn primary_from(
    sentinels: &[Client],
    master_name: &str,
    node: &RedisConnectionInfo,
    config: &AsyncConnectionConfig,
) -> RedisResult<(MultiplexedConnection, (String, u16))> {
    let mut last = RedisError::from((ErrorKind::IoError, "no sentinel answered"));
    for sentinel in sentinels {
        let (host, port) = match named_primary(sentinel, master_name, config).await {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                last = RedisError::from((
                    ErrorKind::ClientError,
                    "the sentinels do not monitor this master_name",
                    master_name.to_string(),
                ));
                continue;
            }
            Err(e) => {
                last = e;
                continue;
            }
        };
        let checked: RedisResult<(MultiplexedConnection, (String, u16))> = async {
            let info = ConnectionInfo { addr: ConnectionAddr::Tcp(host.clone(), port), redis: node.clone() };
            let mut c = Client::open(info)?.get_multiplexed_async_connection_with_config(config).await?;
            let role: Vec<Value> = ::redis::cmd("ROLE").query_async(&mut c).await?;
            match role.first() {
                Some(Value::BulkString(r)) if r.as_slice() == b"master" => Ok((c, (host.clone(), port))),
                _ => Err(RedisError::from((
                    ErrorKind::ReadOnly,
                    "the node the sentinels name is not a primary yet",
                    format!("{host}:{port}"),
                ))),
            }
        }
        .await;
        match checked {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// What one sentinel names as the primary now.
async fn named_primary(
    sentinel: &Client,
    master_name: &str,
    config: &AsyncConnectionConfig,
) -> RedisResult<Option<(String, u16)>> {
    ask_primary(&mut sentinel.get_multiplexed_async_connection_with_config(config).await?, master_name).await
}

async fn ask_primary(sentinel: &mut MultiplexedConnection, master_name: &str) -> RedisResult<Option<(String, u16)>> {
    ::redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master_name).query_async(sentinel).await
}

struct State {
    /// The connection in use and its number (a broken report names the one it saw fail).
    conn: Option<(u64, MultiplexedConnection)>,
    /// Whom `conn` talks to (with Sentinel).
    primary: Option<(String, u16)>,
    dials: u64,
    /// The dial that last found a different primary: writes on connections before it went
    /// to an old primary.
    moved_at: u64,
    last_failure: Option<(Instant, String)>,
}

/// The primary's connection, shared by every command of one store.
pub struct Link {
    source: Source,
    timeout: Duration,
    state: Mutex<State>,
    dialing: tokio::sync::Mutex<()>,
    /// Counts the times a dial found a different primary than the one before (with Sentinel).
    moved: tokio::sync::watch::Sender<u64>,
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
        Link {
            source,
            timeout,
            state: Mutex::new(State { conn: None, primary: None, dials: 0, moved_at: 0, last_failure: None }),
            dialing: tokio::sync::Mutex::new(()),
            moved: tokio::sync::watch::channel(0).0,
        }
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
            Ok((conn, primary)) => {
                st.dials += 1;
                st.last_failure = None;
                if st.primary.is_some() && primary.is_some() && st.primary != primary {
                    st.moved_at = st.dials;
                    self.moved.send_modify(|n| *n += 1);
                }
                st.primary = primary;
                st.conn = Some((st.dials, conn.clone()));
                Ok((st.dials, conn))
            }
            Err(e) => {
                st.last_failure = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// A client for the primary in use (dialling it if need be), for a connection of its own:
    /// a subscription cannot share the multiplexed one.
    pub async fn primary_client(&self) -> RedisResult<Client> {
        self.get().await?;
        match &self.source {
            Source::Url(client) => Ok(client.clone()),
            Source::Sentinel { node, .. } => {
                let primary = self.state.lock().unwrap().primary.clone();
                let (host, port) =
                    primary.ok_or_else(|| RedisError::from((ErrorKind::IoError, "no primary named yet")))?;
                Client::open(ConnectionInfo { addr: ConnectionAddr::Tcp(host, port), redis: node.clone() })
            }
        }
    }

    /// Did a write on connection `n` go to a primary that has since been replaced?
    pub fn went_to_an_old_primary(&self, n: u64) -> bool {
        n < self.state.lock().unwrap().moved_at
    }

    /// Changes each time the primary moved.
    pub fn moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// Connection `n` failed in a way that says it is gone: the next command dials again.
    pub fn broken(&self, n: u64) {
        let mut st = self.state.lock().unwrap();
        if st.conn.as_ref().is_some_and(|(m, _)| *m == n) {
            st.conn = None;
        }
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new().set_connection_timeout(self.timeout).set_response_timeout(self.timeout)
    }

    async fn dial(&self) -> RedisResult<(MultiplexedConnection, Option<(String, u16)>)> {
        let config = self.config();
        match &self.source {
            Source::Url(client) => Ok((client.get_multiplexed_async_connection_with_config(&config).await?, None)),
            Source::Sentinel { sentinels, master_name, node } => {
                primary_from(sentinels, master_name, node, &config).await.map(|(c, p)| (c, Some(p)))
            }
        }
    }

    /// With Sentinel, asks every `WATCH_EVERY` whom the sentinels name, and drops the connection
    /// when it is someone else. A planned failover (`SENTINEL FAILOVER`) promotes a replica while
    /// the old primary still takes writes until the sentinels demote it, seconds later; writes
    /// sent there in between would be lost when it resyncs from the new one.
    pub fn watch(self: &std::sync::Arc<Self>) {
        let Source::Sentinel { sentinels, master_name, .. } = &self.source else { return };
        let (sentinels, master_name) = (sentinels.clone(), master_name.clone());
        let link = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut cached: Option<MultiplexedConnection> = None;
            let mut at = 0usize;
            loop {
                tick.tick().await;
                let Some(link) = link.upgrade() else { return };
                let config = link.config();
                let named: RedisResult<Option<(String, u16)>> = async {
                    if cached.is_none() {
                        cached = Some(
                            sentinels[at % sentinels.len()]
                                .get_multiplexed_async_connection_with_config(&config)
                                .await?,
                        );
                    }
                    ask_primary(cached.as_mut().expect("just set"), &master_name).await
                }
                .await;
                match named {
                    Ok(Some(now)) => {
                        let mut st = link.state.lock().unwrap();
                        if st.conn.is_some() && st.primary.as_ref() != Some(&now) {
                            tracing::warn!(primary = %format!("{}:{}", now.0, now.1), "the sentinels name another Redis primary; reconnecting");
                            st.conn = None;
                        }
                    }
                    // Try the next sentinel next time.
                    Ok(None) | Err(_) => {
                        cached = None;
                        at += 1;
                    }
                }
            }
        });
    }
}
