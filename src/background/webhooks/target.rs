//! Where a tenant's webhooks may go: `https` to public addresses only. Private, loopback,
//! link-local, unique-local and other special-purpose addresses are refused, both when the URL
//! is given (IP literals) and at every delivery (each resolved address), so a name that later
//! resolves inside (DNS rebinding) is never reached. `allow_http_loopback` (tests, the demo)
//! permits plain http to 127.0.0.1 / ::1 / localhost.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
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
    host.eq_ignore_ascii_case("localhost") || literal_ip(host).is_some_and(|ip| ip.is_loopback())
}

/// The address a host names without DNS, in every spelling a resolver accepts: `[v6]`, dotted
/// quads, and the inet_aton forms (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`).
fn literal_ip(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Some(ip);
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let num = |p: &str| -> Option<u64> {
        if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            u64::from_str_radix(h, 16).ok()
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(&p[1..], 8).ok()
        } else if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            p.parse().ok()
        } else {
            None
        }
    };
    let values: Vec<u64> = parts.iter().map(|p| num(p)).collect::<Option<_>>()?;
    let (head, last) = values.split_at(values.len() - 1);
    if head.iter().any(|v| *v > 255) || last[0] >= 1u64 << (8 * (4 - head.len())) {
        return None;
    }
    let n = head.iter().enumerate().fold(last[0], |acc, (i, v)| acc | (v << (8 * (3 - i))));
    Some(IpAddr::V4(std::net::Ipv4Addr::from(n as u32)))
}

impl Policy {
    /// Checks a tenant's `callback_url` as given; `Err` says why, for a 422.
    pub fn check_url(&self, url: &str) -> Result<Uri, String> {
        let uri: Uri = url.parse().map_err(|_| "must be an absolute URL".to_string())?;
        // One canonical host: a trailing dot names the same host (`localhost.`).
        let host = uri.host().ok_or("must be an absolute URL")?.trim_end_matches('.').to_string();
        let loopback = is_loopback_host(&host);
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http_loopback && loopback => {}
            _ => return Err("must be an https URL".into()),
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("must not carry credentials".into());
        }
        if uri.port_u16() == Some(0) {
            return Err("must name a port from 1 to 65535".into());
        }
        if let Some(ip) = literal_ip(&host) {
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
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{} resolves to an address webhooks may not reach", name.as_str()),
                ));
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
            "https://2130706433/",
            "https://0x7f000001/",
            "https://127.1/",
            "https://0177.0.0.1/",
            "https://localhost./",
            "https://10.1/",
            "https://0xa9fea9fe/latest",
            "ftp://hooks.example.com/",
            "/relative",
        ] {
            assert!(strict.check_url(bad).is_err(), "{bad}");
        }
        assert!(strict.check_url("https://1.2.3.4.example.com/").is_ok(), "names are resolved at delivery");
        assert_eq!(literal_ip("2130706433"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(literal_ip("127.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(literal_ip("256.1.1.1"), None);
        let tests = Policy { allow_http_loopback: true };
        assert!(tests.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(tests.check_url("http://localhost:9/x").is_ok());
        assert!(tests.check_url("http://10.0.0.1/x").is_err());
        assert!(tests.allows("127.0.0.1".parse().unwrap()));
        assert!(!tests.allows("10.0.0.1".parse().unwrap()));
    }
}
