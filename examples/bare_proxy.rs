//! The floor for this stack, used by `benches/load.sh`: a hyper reverse proxy with no policy at
//! all (no auth, limits, validation, store, logs or metrics). It swaps in the platform token and
//! forwards, with the same hyper-util server and pooled client tollgate uses.
//!
//!   cargo run --release --example bare_proxy -- 127.0.0.1:8090 http://127.0.0.1:8000 TOKEN
use std::convert::Infallible;

use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

// The same runtime as tollgate's (`tollgate::server::workers`), so this stays a fair floor.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tollgate::server::workers::runtime_from_env()?.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (listen, upstream, token) =
        (args.next().ok_or("LISTEN")?, args.next().ok_or("UPSTREAM")?, args.next().ok_or("TOKEN")?);
    let upstream: http::Uri = upstream.parse()?;
    let auth = http::HeaderValue::from_str(&format!("Bearer {token}"))?;
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build_http();
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, upstream, auth) = (client.clone(), upstream.clone(), auth.clone());
        let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            let (client, auth) = (client.clone(), auth.clone());
            let mut parts = upstream.clone().into_parts();
            parts.path_and_query = req.uri().path_and_query().cloned();
            let uri = http::Uri::from_parts(parts);
            async move {
                let Ok(uri) = uri else { return Ok::<_, Infallible>(error(400)) };
                *req.uri_mut() = uri;
                req.headers_mut().insert(http::header::AUTHORIZATION, auth);
                req.headers_mut().remove(http::header::HOST);
                Ok(match client.request(req).await {
                    Ok(rsp) => rsp.map(http_body_util::Either::Left),
                    Err(_) => error(502),
                })
            }
        });
        tokio::spawn(async move {
            auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await
        });
    }
}

fn error(status: u16) -> http::Response<http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>> {
    let mut rsp = http::Response::new(http_body_util::Either::Right(http_body_util::Empty::new()));
    *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    rsp
}
