//! The gateway as a `tower::Service`, wrapped in tower-http's layers, so it composes with the
//! ecosystem: the binary serves exactly [`stack`], and a Rust team can mount it inside its own
//! hyper or axum server (see `examples/embed.rs`).
//!
//! [`stack`], outside in:
//! 1. `SetSensitiveRequestHeaders`: the tenant's key and cookies are marked sensitive, so no
//!    `Debug` of the request (logs, traces) prints them, and HTTP/2 never indexes them;
//! 2. `CatchPanic`: a panic anywhere below becomes `500 {"detail": "Internal server error"}`
//!    with the request's id, an access line (outcome `panic`) and an error log line, instead
//!    of a dropped connection;
//! 3. [`GatewayService`]: the request path itself (`Gateway::handle`), which keeps a sane
//!    client `x-request-id` (1–128 of `[A-Za-z0-9-_.:]`), gives every other request a fresh
//!    UUID, and sends the id back on every response.
//!
//! tower-http's `SetRequestId` / `PropagateRequestId` are not in the stack: the gateway needs the
//! id inside the request path anyway (logs, the platform call), and the layers only repeated
//! that work on every request. [`layered`] puts the same layers around another inner service.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{Request, Response, StatusCode};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::gateway::{Ctx, Gateway};
use crate::server::body::Body;

/// Response body of the layered stack (`CatchPanic` boxes it).
pub type StackBody = tower_http::body::UnsyncBoxBody<Bytes, tower_http::BoxError>;

pub use crate::ids::X_REQUEST_ID;

/// The bare request path as a service: never fails, errors are `{"detail": ...}` responses.
#[derive(Clone)]
pub struct GatewayService(pub Arc<Gateway>);

impl<B> Service<Request<B>> for GatewayService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let gw = self.0.clone();
        Box::pin(async move { Ok(gw.handle(req).await) })
    }
}

/// Marks a response as the answer to a panic, for the access line written above `CatchPanic`.
#[derive(Clone, Copy)]
struct Panicked;

fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let what = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = what, "a request handler panicked; answered 500");
    let mut rsp = crate::server::body::json(
        StatusCode::INTERNAL_SERVER_ERROR,
        serde_json::json!({ "detail": "Internal server error" }).to_string(),
    );
    rsp.extensions_mut().insert(Panicked);
    rsp
}

/// The gateway with its tower-http layers: what the binary serves on the tenant listener.
pub fn stack<B>(
    gw: Arc<Gateway>,
) -> impl Service<Request<B>, Response = Response<StackBody>, Error = Infallible, Future = impl Send> + Clone + Send + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    layered(gw.clone(), GatewayService(gw))
}

/// The layers around any inner service (`GatewayService`, or the gateway inside a service of
/// the embedder's): sensitive headers, then the panic guard with its access line; `gw` writes
/// that line. Request ids are the gateway's own work (`Gateway::handle`); on a panic the guard
/// keeps the request's sane id, or makes one, for the 500 and its access line.
pub fn layered<S, B>(
    gw: Arc<Gateway>,
    inner: S,
) -> impl Service<Request<B>, Response = Response<StackBody>, Error = Infallible, Future = impl Send> + Clone + Send + 'static
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    let inner = ServiceBuilder::new().layer(CatchPanicLayer::custom(panic_response)).service(inner);
    // Above CatchPanic, where the request is still known: the panic's access line. Only cheap
    // clones here (reference counts); the route and the id's text are worked out on a panic.
    let logged = tower::service_fn(move |req: Request<B>| {
        let (inner, gw) = (inner.clone(), gw.clone());
        let (method, uri, id) = (req.method().clone(), req.uri().clone(), req.headers().get(X_REQUEST_ID).cloned());
        async move {
            let mut rsp = inner.oneshot(req).await?;
            if rsp.extensions().get::<Panicked>().is_some() {
                let route = crate::gateway::routes::resolve(&gw.current().catalog, &method, uri.path())
                    .map(|r| r.template())
                    .unwrap_or(crate::gateway::routes::UNMATCHED);
                let id = crate::gateway::request_id_header(id.as_ref());
                gw.finish(&Ctx::new(method, id.clone(), route, "panic"), 500);
                rsp.headers_mut().insert(X_REQUEST_ID, id);
            }
            Ok::<_, Infallible>(rsp)
        }
    });
    ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE]))
        .service(logged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_detail_500() {
        let rsp = panic_response(Box::new("boom"));
        assert_eq!(rsp.status(), 500);
        assert_eq!(rsp.headers()["content-type"], "application/json");
        assert!(rsp.extensions().get::<Panicked>().is_some());
    }
}
