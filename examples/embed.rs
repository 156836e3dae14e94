//! tollgate mounted inside your own hyper server: `/hello` is yours, everything else goes through
//! the gateway's tower stack (auth, limits, validation, money, error normalisation, access log).
//!
//!   RUNBLOB_TOKEN=… cargo run --example embed -- my-tollgate.toml 127.0.0.1:8088
//!
//! Like `tollgate run`, it refuses a config whose tenants accept the keys printed in the docs;
//! its ledger is `tollgate-embed.db` in the working directory (an embedder chooses its own).
use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::{server::conn::auto, service::TowerToHyperService};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "config/tollgate.toml".into());
    let mut config = tollgate::config::Config::load(path.as_ref(), &tollgate::config::ProcessEnv)?;
    let refusals = config.run_refusals();
    if !refusals.is_empty() {
        return Err(format!("refusing to serve keys printed in tollgate's docs: {}", refusals.join("; ")).into());
    }
    if let tollgate::config::StoreConfig::Sqlite { path } = &mut config.store {
        *path = std::path::absolute("tollgate-embed.db")?;
        println!("ledger {}", path.display());
    }
    let (log, _flush) = tollgate::observe::access_log::AccessLog::batched(std::io::stdout());
    let gateway = tollgate::build(&config, log, None).await?;
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let _background = tollgate::Background::spawn(gateway.shared().clone(), stop); // reconciler, balance, webhooks
    let tollgate = tollgate::gateway::service::stack(gateway);
    let app = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let tollgate = tollgate.clone();
        async move {
            if req.uri().path() == "/hello" {
                return Ok::<_, Infallible>(http::Response::new(
                    Full::from("hello from the host app\n").map_err(|e| match e {}).boxed_unsync(),
                ));
            }
            Ok(tollgate.oneshot(req).await?.map(|b| b.boxed_unsync()))
        }
    });
    let listener = tokio::net::TcpListener::bind(args.next().as_deref().unwrap_or("127.0.0.1:8088")).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let app = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), app).await
        });
    }
}
