//! Where a tenant's webhooks may go: `https` to public addresses only. Private, loopback,
//! link-local, unique-local and other special-purpose addresses are refused, both when the URL
//! is given (IP literals) and at every delivery (each resolved address), so a name that later
//! resolves inside (DNS rebinding) is never reached. `allow_http_loopback` (tests, the demo)
//! permits plain http to 127.0.0.1 / ::1 / localhost.

use std::net::{IpAddr, SocketAddr};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;

/// Is this address one a webhook may reach?
pub fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space (CGNAT)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// What a webhook URL may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Plain http to loopback is allowed (tests, the demo).
    pub allow_http_loopback: bool,
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Policy {
    /// Checks a tenant's `callback_url` as given; `Err` says why, for a 422.
    pub fn check_url(&self, url: &str) -> Result<Uri, String> {
        let uri: Uri = url.parse().map_err(|_| "must be an absolute URL".to_string())?;
        let host = uri.host().ok_or("must be an absolute URL")?.to_string();
        let loopback = is_loopback_host(&host);
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http_loopback && loopback => {}
            _ => return Err("must be an https URL".into()),
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("must not carry credentials".into());
        }
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            if !self.allows(ip) {
                return Err("must not point to a private, loopback or link-local address".into());
            }
        } else if loopback && !self.allow_http_loopback {
            return Err("must not point to a private, loopback or link-local address".into());
        }
        Ok(uri)
    }

    /// May a delivery connect to `ip`?
    pub fn allows(&self, ip: IpAddr) -> bool {
        public(ip) || (self.allow_http_loopback && ip.is_loopback())
    }
}

/// A resolver for the delivery client that refuses names resolving to any address the policy
/// forbids: checked at connect time, every delivery.
#[derive(Clone)]
pub struct CheckedResolver {
    /// The policy.
    pub policy: Policy,
}

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let policy = self.policy;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if addrs.is_empty() || addrs.iter().any(|a| !policy.allows(a.ip())) {
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("{} resolves to an address webhooks may not reach", name.as_str())));
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_https_targets() {
        let strict = Policy { allow_http_loopback: false };
        assert!(strict.check_url("https://hooks.example.com/x").is_ok());
        assert!(strict.check_url("https://93.184.216.34/x").is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "https://127.0.0.1/x",
            "https://localhost/x",
            "https://10.1.2.3/x",
            "https://192.168.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "https://user:pw@hooks.example.com/",
            "ftp://hooks.example.com/",
            "/relative",
        ] {
            assert!(strict.check_url(bad).is_err(), "{bad}");
        }
        let tests = Policy { allow_http_loopback: true };
        assert!(tests.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(tests.check_url("http://localhost:9/x").is_ok());
        assert!(tests.check_url("http://10.0.0.1/x").is_err());
        assert!(tests.allows("127.0.0.1".parse().unwrap()));
        assert!(!tests.allows("10.0.0.1".parse().unwrap()));
    }
}
