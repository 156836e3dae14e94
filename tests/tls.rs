//! TLS at the edge, with certificates made at test time (rcgen): HTTP/2 and HTTP/1.1 by ALPN, a
//! plain-HTTP client refused and logged, and a certificate swapped by a reload while an open
//! connection keeps its own.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::net::TcpStream;

struct Cert {
    der: CertificateDer<'static>,
    pem: String,
    key_pem: String,
}

fn make_cert() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Cert { der: c.cert.der().clone(), pem: c.cert.pem(), key_pem: c.signing_key.serialize_pem() }
}

fn write_cert(dir: &Path, c: &Cert) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &c.pem).unwrap();
    std::fs::write(&key, &c.key_pem).unwrap();
    (cert, key)
}

/// A TLS connection trusting only `root`, speaking the protocol ALPN picked.
struct Conn {
    peer_cert: CertificateDer<'static>,
    h2: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>,
    h1: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

async fn connect(addr: std::net::SocketAddr, root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Result<Conn, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let peer_cert = session.peer_certificates().unwrap()[0].clone().into_owned();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let (send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        Ok(Conn { peer_cert, h2: Some(send), h1: None })
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Ok(Conn { peer_cert, h2: None, h1: Some(send) })
    }
}

impl Conn {
    async fn balance(&mut self) -> (http::StatusCode, http::Version, serde_json::Value) {
        let req = http::Request::get("/v1/data/balance")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {KEY_A}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let rsp = match (&mut self.h2, &mut self.h1) {
            (Some(s), _) => s.send_request(req).await.unwrap(),
            (_, Some(s)) => s.send_request(req).await.unwrap(),
            _ => unreachable!(),
        };
        let (status, version) = (rsp.status(), rsp.version());
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, version, serde_json::from_slice(&body).unwrap())
    }
}

fn tls_config(platform: std::net::SocketAddr, cert: &Path, key: &Path) -> String {
    config_text(
        platform,
        &format!("tls_cert_path = \"{}\"\ntls_key_path = \"{}\"", cert.display(), key.display()),
        &default_tenants(),
    )
}

#[tokio::test]
async fn tls_serves_h2_and_http1_by_alpn_and_refuses_plain_http() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let cert = make_cert();
    let (cert_path, key_path) = write_cert(&dir, &cert);
    let gw = TestGateway::start(&tls_config(platform.addr, &cert_path, &key_path)).await;

    let mut c = connect(gw.addr, &cert.der, &[b"h2", b"http/1.1"]).await.unwrap();
    let (status, version, body) = c.balance().await;
    assert_eq!((status.as_u16(), version), (200, http::Version::HTTP_2));
    assert!(body["balance"].is_string());
    let mut c = connect(gw.addr, &cert.der, &[b"http/1.1"]).await.unwrap();
    assert_eq!(c.balance().await.1, http::Version::HTTP_11);
    // No ALPN at all: HTTP/1.1.
    let mut c = connect(gw.addr, &cert.der, &[]).await.unwrap();
    assert_eq!(c.balance().await.0, 200);

    // A plain-HTTP client gets no answer; the refusal is logged and counted.
    let r = client().request(request(http::Method::GET, &gw.url("/v1/data/balance"), Some(KEY_A), "")).await;
    assert!(r.is_err(), "plain HTTP on the TLS port must fail: {r:?}");
    eventually(std::time::Duration::from_secs(3), || {
        gw.log_lines().iter().any(|l| l["outcome"] == "tls_handshake_failed" && l["status"] == 400)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_connections_only() {
    let platform = Platform::start().await;
    let dir = temp_dir();
    let (old, new) = (make_cert(), make_cert());
    let (cert_path, key_path) = write_cert(&dir, &old);
    let text = tls_config(platform.addr, &cert_path, &key_path);
    let config = tollgate::config::Config::from_toml(&text, &env()).unwrap();
    let source_text = text.clone();
    let reload: tollgate::gateway::ReloadSource =
        Arc::new(move || tollgate::config::Config::from_toml(&source_text, &env()));
    let gw = TestGateway::start_config(config, Some(reload)).await;

    let mut open = connect(gw.addr, &old.der, &[b"h2"]).await.unwrap();
    assert_eq!(open.peer_cert, old.der);
    assert_eq!(open.balance().await.0, 200);

    // A broken file is refused: the old certificate keeps serving.
    std::fs::write(&key_path, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n").unwrap();
    let refused = gw.gateway.reload().unwrap_err();
    assert!(refused.contains("tls_key_path"), "{refused}");
    assert_eq!(connect(gw.addr, &old.der, &[b"h2"]).await.unwrap().peer_cert, old.der);

    // The rotated pair is picked up by the reload, for new connections …
    write_cert(&dir, &new);
    let r = gw.gateway.reload().unwrap();
    assert!(r.restart_required.is_empty(), "{:?}", r.restart_required);
    let mut fresh = connect(gw.addr, &new.der, &[b"h2"]).await.unwrap();
    assert_eq!(fresh.peer_cert, new.der);
    assert_eq!(fresh.balance().await.0, 200);
    assert!(
        connect(gw.addr, &old.der, &[b"h2"]).await.is_err(),
        "clients trusting only the old certificate fail on new connections"
    );
    // … while the connection opened before keeps working.
    assert_eq!(open.balance().await.0, 200);
    gw.shutdown().await;
}

#[test]
fn tls_settings_are_checked_like_the_rest_of_the_config() {
    let dir = temp_dir();
    let platform: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let only_cert = config_text(platform, "tls_cert_path = \"/x.pem\"", &default_tenants());
    let e = tollgate::config::Config::from_toml(&only_cert, &env()).unwrap_err().to_string();
    assert!(e.contains("tls_cert_path and server.tls_key_path go together"), "{e}");
    let missing = tls_config(platform, &dir.join("none.pem"), &dir.join("none.key"));
    let e = tollgate::config::Config::from_toml(&missing, &env()).unwrap_err().to_string();
    assert!(e.contains("server.tls_cert_path") && e.contains("is not a readable file"), "{e}");
    // A key that is not the certificate's.
    let (a, b) = (make_cert(), make_cert());
    let (cert_path, _) = write_cert(&dir, &a);
    let other_key = dir.join("other.pem");
    std::fs::write(&other_key, &b.key_pem).unwrap();
    let e = tollgate::config::Config::from_toml(&tls_config(platform, &cert_path, &other_key), &env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong to the certificate"), "{e}");
}
