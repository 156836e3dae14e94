//! Accepting connections. hyper-util's auto builder serves HTTP/1.1 and HTTP/2 (h2c
//! prior knowledge) on one port. Around it, every connection gets a watchdog with:
//! - a deadline from accept to its first complete request head (a socket that never speaks, or
//!   sends half an HTTP/2 preface, included);
//! - the same deadline for each later HTTP/1 head, counted from the head's first byte (the
//!   framing follower reports it). hyper's `header_read_timeout` is off: it starts a timer at
//!   the end of every response, so it closed merely idle keep-alive connections at the head
//!   deadline, and cost a timer per request;
//! - an idle timeout (`idle_timeout`) once no request is in flight, for HTTP/1 keep-alive and
//!   HTTP/2 alike (HTTP/2 gets a GOAWAY);
//! - a slot under `max_connections`. At the cap, the oldest connection that has not yet sent a
//!   request is closed to make room, or else the keep-alive connection idle the longest (no
//!   request in flight), so neither silent sockets nor parked keep-alives can lock out real
//!   clients (or the Kubernetes probes on the admin port);
//! - graceful drain on shutdown, for up to the grace period.
//!
//! Refusals at the protocol level (a head that never completed, a malformed head, headers too
//! large) are reported to `on_refusal`, which logs and counts them like any request.

pub(crate) mod body;
pub(crate) mod framing;
pub mod query;
pub(crate) mod tls;
pub mod workers;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::server::framing::{AmbiguousFraming, Signals, Watched};

/// Most request headers accepted (more: 431).
pub const MAX_HEADERS: usize = 100;
/// Largest request head buffered (hyper answers 431 beyond it).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A connection silent for less than this is not closed to make room (it is about to speak).
const MIN_SILENT_AGE: Duration = Duration::from_millis(500);
/// Streams one HTTP/2 connection may have open at once.
pub const MAX_H2_STREAMS: u32 = 64;

/// A connection's byte stream: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Listener settings.
#[derive(Clone)]
pub struct ServerOptions {
    /// From accept to the first complete request head; for a later head, from its first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long in-flight requests get after shutdown starts.
    pub shutdown_grace: Duration,
    /// TLS (rustls, ALPN h2 and http/1.1); `None` serves plain HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// A client's address as a request extension: how an embedder's own server tells the gateway
/// who is calling (its listener's requests carry it in [`Lingering`] instead, which costs no
/// extension map per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A connection refused before any request reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolRefusal {
    /// Who.
    pub peer: SocketAddr,
    /// The status it corresponds to (408 no head in time, 400 malformed head, 431 too large,
    /// 503 closed to make room at the connection cap).
    pub status: u16,
    /// Access-log outcome.
    pub outcome: &'static str,
}

/// An early answer's unread request body is read and thrown away for at most this long, and
/// this many bytes, so the client can finish sending and read the answer (nginx's lingering
/// close) instead of getting a reset.
const LINGER_TIME: Duration = Duration::from_secs(30);
const LINGER_IDLE: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// A request body that, when dropped unread (an early 401, 413, 429 …), keeps draining in the
/// background within the linger limits. It also carries the client's address.
pub struct Lingering {
    body: Option<Incoming>,
    peer: SocketAddr,
}

impl Lingering {
    pub(crate) fn new(body: Option<Incoming>, peer: SocketAddr) -> Self {
        Lingering { body, peer }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl http_body::Body for Lingering {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.body.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take().filter(|b| !http_body::Body::is_end_stream(b)) else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            use http_body_util::BodyExt;
            let until = tokio::time::Instant::now() + LINGER_TIME;
            let mut drained = 0usize;
            while drained < LINGER_BYTES {
                let next =
                    tokio::time::timeout_at(until.min(tokio::time::Instant::now() + LINGER_IDLE), body.frame()).await;
                match next {
                    Ok(Some(Ok(frame))) => drained += frame.data_ref().map(|d| d.len()).unwrap_or(0),
                    _ => break,
                }
            }
        });
    }
}

/// Called for each protocol-level refusal.
pub type OnRefusal = Arc<dyn Fn(ProtocolRefusal) + Send + Sync>;

/// What the connection task knows about its requests.
struct Activity {
    started: Instant,
    /// Requests that reached the service.
    seen: AtomicU64,
    /// Requests in flight.
    active: AtomicUsize,
    /// Milliseconds after `started` when the last request finished.
    last_ms: AtomicU64,
    /// Chosen to make room at the cap (tells the watchdog's wake-up from a head beginning).
    evicted: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn idle_since(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Acquire))
    }
}

/// Counts a request in flight until dropped (also when the client leaves mid-request).
/// Only atomics: the watchdog reads them when its timer fires, so a request does not wake it.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.started.elapsed().as_millis() as u64, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open connections, oldest first: the ones closed at the cap are picked here.
#[derive(Default)]
struct Silent {
    queue: Mutex<Open>,
}

/// The queue, and its length after the last pass that dropped closed connections.
#[derive(Default)]
struct Open {
    items: VecDeque<(Arc<Activity>, Arc<Notify>)>,
    pruned_len: usize,
}

impl Open {
    /// Drops the connections that closed or were evicted (the connection task holds the other
    /// reference while it lives).
    fn prune(&mut self) {
        self.items.retain(|(a, _)| Arc::strong_count(a) > 1 && !a.evicted.load(Ordering::Acquire));
        self.pruned_len = self.items.len();
    }
}

impl Silent {
    fn push(&self, a: Arc<Activity>, n: Arc<Notify>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // A pass over every open connection only once the queue has doubled since the last
        // one: amortised O(1) per accept, not a scan of thousands of keep-alives each time.
        if q.items.len() >= (2 * q.pruned_len).max(64) {
            q.prune();
        }
        q.items.push_back((a, n));
    }

    /// Makes room at the cap: closes the oldest connection silent for at least `min_age` (a
    /// client that just connected is about to speak), else the keep-alive connection idle the
    /// longest, at least `min_age`, with no request in flight. False when every connection is
    /// busy or young. A scan of the open connections, only at the cap.
    fn evict_oldest(&self, min_age: Duration) -> bool {
        let mut guard = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        guard.prune();
        let q = &mut guard.items;
        let now = Instant::now();
        let silent =
            q.iter().position(|(a, _)| a.seen.load(Ordering::Acquire) == 0 && now.duration_since(a.started) >= min_age);
        let idle = || {
            q.iter()
                .enumerate()
                .filter(|(_, (a, _))| a.seen.load(Ordering::Acquire) != 0 && a.active.load(Ordering::Acquire) == 0)
                .map(|(i, (a, _))| (i, a.idle_since()))
                .filter(|(_, since)| now.duration_since(*since) >= min_age)
                .min_by_key(|(_, since)| *since)
                .map(|(i, _)| i)
        };
        let Some(i) = silent.or_else(idle) else { return false };
        let (a, n) = q.remove(i).expect("index from this queue");
        a.evicted.store(true, Ordering::Release);
        n.notify_one();
        true
    }
}

fn classify(e: &(dyn std::error::Error + 'static)) -> Option<(u16, &'static str)> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some((431, "headers_too_large"));
            }
            if h.is_parse() || h.is_parse_status() {
                return Some((400, "bad_request_head"));
            }
            if h.is_timeout() {
                return Some((408, "header_timeout"));
            }
            return None;
        }
        cur = err.source();
    }
    None
}

/// Serves `handler` on `listener` until `shutdown` resolves, then stops accepting and lets open
/// connections finish their in-flight requests for up to the grace period.
pub async fn serve<S, B>(
    listener: TcpListener,
    opts: ServerOptions,
    service: S,
    on_refusal: OnRefusal,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<Request<Lingering>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog below keeps the head deadlines (see the module docs).
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let builder = Arc::new(builder);
    let max = opts.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let silent = Arc::new(Silent::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // At the cap: make room by closing the oldest silent connection; if every connection is
        // busy with real requests, wait for one to finish (new ones queue in the backlog).
        let permit = loop {
            if let Ok(p) = slots.clone().try_acquire_owned() {
                break Some(p);
            }
            silent.evict_oldest(MIN_SILENT_AGE);
            tokio::select! {
                p = slots.clone().acquire_owned() => break p.ok(),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = &mut shutdown => break None,
            }
        };
        let Some(permit) = permit else { break };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity {
            started: Instant::now(),
            seen: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            evicted: Default::default(),
        });
        let evict = Arc::new(Notify::new());
        silent.push(activity.clone(), evict.clone());
        let h = service.clone();
        let signals = Arc::new(Signals::new(activity.started, evict.clone()));
        let flag = signals.clone();
        let act = activity.clone();
        let svc = service_fn(move |mut req: Request<Incoming>| {
            if flag.ambiguous.load(Ordering::Relaxed) {
                req.extensions_mut().insert(AmbiguousFraming);
            }
            // Only chunked bodies, as the framing follower saw the head: other requests pay
            // one atomic load, not a header lookup.
            if flag.chunked.load(Ordering::Relaxed) {
                req.extensions_mut().insert(crate::server::framing::ChunkWatch(flag.clone()));
            }
            act.seen.fetch_add(1, Ordering::AcqRel);
            act.active.fetch_add(1, Ordering::AcqRel);
            let in_flight = InFlight(act.clone());
            let fut = tower::ServiceExt::oneshot(h.clone(), req.map(|b| Lingering::new(Some(b), peer)));
            async move {
                let rsp = fut.await;
                drop(in_flight);
                rsp
            }
        });
        let (builder, opts, on_refusal, mut stop) =
            (builder.clone(), opts.clone(), on_refusal.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let refuse = |status, outcome| on_refusal(ProtocolRefusal { peer, status, outcome });
            // The TLS handshake counts against the first head's deadline, and a connection still
            // in its handshake is as silent as one that never spoke: evictable at the cap.
            let io: Box<dyn Io> = match &opts.tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    let deadline = activity.started + opts.header_read_timeout;
                    let handshake = tokio::select! {
                        r = acceptor.accept(stream) => r.map_err(|e| {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                            (400, "tls_handshake_failed")
                        }),
                        _ = tokio::time::sleep_until(deadline.into()) => Err((408, "header_timeout")),
                        _ = evict.notified() => Err((503, "evicted_at_capacity")),
                    };
                    match handshake {
                        Ok(tls) => Box::new(tls),
                        Err((status, outcome)) => {
                            refuse(status, outcome);
                            drop(permit);
                            return;
                        }
                    }
                }
            };
            let io = TokioIo::new(Watched::new(io, signals.clone()));
            let conn = builder.serve_connection(io, svc).into_owned();
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            // The watchdog's timer is lazy: requests only update atomics, and each time the
            // timer fires it works out the next deadline (the first head's, then the idle one,
            // or a later head's) from them. One timer per idle period, not a wake-up and a new
            // timer per request. `evict` also wakes it when a later head begins in pieces.
            let head_deadline = activity.started + opts.header_read_timeout;
            // A later head's deadline, once one has begun in pieces.
            let later_head_deadline = || signals.partial_head_since().map(|since| since + opts.header_read_timeout);
            let mut wake = activity.started + opts.header_read_timeout.min(opts.idle_timeout);
            loop {
                tokio::select! {
                    r = &mut conn => {
                        if let Err(e) = r {
                            if let Some((status, outcome)) = classify(&*e) {
                                refuse(status, outcome);
                            }
                        }
                        break;
                    }
                    _ = stop.wait_for(|s| *s), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = evict.notified() => {
                        // A later head has begun: its deadline may come before the idle one.
                        if let Some(deadline) = later_head_deadline() {
                            wake = wake.min(deadline);
                            continue;
                        }
                        if activity.evicted.load(Ordering::Acquire) {
                            // Evicted while silent: refused like a head that never came.
                            if activity.seen.load(Ordering::Acquire) == 0 {
                                refuse(503, "evicted_at_capacity");
                                break;
                            }
                            // Evicted while idle between requests: closed as at its idle
                            // timeout (a request that began meanwhile finishes first).
                            if !closing {
                                conn.as_mut().graceful_shutdown();
                                closing = true;
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {
                        if activity.seen.load(Ordering::Acquire) == 0 {
                            if Instant::now() < head_deadline {
                                wake = head_deadline;
                                continue;
                            }
                            refuse(408, "header_timeout");
                            break;
                        }
                        if activity.active.load(Ordering::Acquire) > 0 {
                            wake = Instant::now() + opts.idle_timeout;
                            continue;
                        }
                        let now = Instant::now();
                        let mut until = activity.idle_since() + opts.idle_timeout;
                        if let Some(deadline) = later_head_deadline() {
                            if deadline <= now {
                                refuse(408, "header_timeout");
                                break;
                            }
                            until = until.min(deadline);
                        }
                        if until > now {
                            wake = until;
                            continue;
                        }
                        if closing {
                            break;
                        }
                        // Idle: start a graceful close, and end it at the next turn if the
                        // connection has not finished by itself.
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        wake = Instant::now();
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tokio::select! {
        _ = slots.acquire_many(max as u32) => {}
        _ = tokio::time::sleep(opts.shutdown_grace) => {
            tracing::warn!(grace_secs = opts.shutdown_grace.as_secs(), "grace period over; closing remaining connections");
        }
    }
}
