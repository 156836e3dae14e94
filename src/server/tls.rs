//! TLS at the edge: `[server] tls_cert_path` / `tls_key_path` (PEM), rustls with ALPN `h2` and
//! `http/1.1`.
//!
//! The certificate sits behind a resolver that hands every new handshake the current one, so a
//! reload (SIGHUP or `POST /admin/reload`) swaps it without touching open connections: they keep
//! the certificate they were accepted with, new ones get the new one.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The serving certificate.
#[derive(Debug)]
pub struct Certs {
    current: ArcSwap<CertifiedKey>,
}

#[derive(Debug)]
struct Resolver(Arc<Certs>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

/// Reads a PEM certificate chain and its private key; errors name the file and what is wrong.
pub fn read(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("server.tls_cert_path {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server.tls_cert_path {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("server.tls_cert_path {}: no PEM certificate in the file", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("server.tls_key_path {}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("server.tls_key_path {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!("server.tls_key_path {} does not belong to the certificate in {}: {e}", key.display(), cert.display())
    })?;
    Ok(certified)
}

impl Certs {
    /// Loads the certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certs>, String> {
        Ok(Arc::new(Certs { current: ArcSwap::from_pointee(read(cert, key)?) }))
    }

    /// Reads the files again (possibly at new paths) and serves the result to new connections.
    /// On an error the current certificate stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), String> {
        self.current.store(Arc::new(read(cert, key)?));
        Ok(())
    }

    /// The acceptor for a listener: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
