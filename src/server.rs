//! Stage 0: accepting connections. hyper-util's auto builder serves HTTP/1.1 and HTTP/2 (h2c
//! prior knowledge) on one port, with keep-alive, a header-read deadline (which needs the timer,
//! or slowloris connections live forever), a connection cap and graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::Body;
use crate::framing::{AmbiguousFraming, Watched};

/// Most request headers accepted (more: 431).
pub const MAX_HEADERS: usize = 100;
/// Largest request head buffered (hyper answers 431 beyond it).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Deadline for a client's request headers.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long in-flight requests get after shutdown starts.
    pub shutdown_grace: Duration,
}

/// Serves `handler` on `listener` until `shutdown` resolves, then stops accepting and lets open
/// connections finish their in-flight requests for up to the grace period.
pub async fn serve<F, Fut>(listener: TcpListener, opts: ServerOptions, handler: F, shutdown: impl Future<Output = ()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the cap, stop accepting: new connections wait in the kernel backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        let ambiguous = Arc::new(AtomicBool::new(false));
        let flag = ambiguous.clone();
        let svc = service_fn(move |mut req: Request<Incoming>| {
            if flag.load(Ordering::Relaxed) {
                req.extensions_mut().insert(AmbiguousFraming);
            }
            let fut = h(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let io = TokioIo::new(Watched::new(stream, ambiguous));
        let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(opts.shutdown_grace) => {
            tracing::warn!(grace_secs = opts.shutdown_grace.as_secs(), "grace period over; closing remaining connections");
        }
    }
}
