//! Where a tenant's webhooks may go: `https` to public addresses only. Private, loopback,
//! link-local, unique-local and other special-purpose addresses are refused, both when the URL
//! is given (IP literals) and at every delivery (each resolved address, by the relay's
//! resolver), so a name that later resolves inside (DNS rebinding) is never reached.
//! `allow_http_loopback` (tests, the demo) permits plain http to 127.0.0.1 / ::1 / localhost.
//!
//! URLs are parsed by the `url` crate (the WHATWG parser): it reads a host in every spelling a
//! resolver accepts (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1` are all 127.0.0.1), so
//! no inet_aton form slips past as a "name".

use std::net::IpAddr;

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

impl Policy {
    /// Checks a tenant's `callback_url` (or the relay's public URL) as given; `Err` says why,
    /// for a 422 or a config error.
    pub fn check_url(&self, text: &str) -> Result<url::Url, String> {
        let url = url::Url::parse(text).map_err(|_| "must be an absolute URL".to_string())?;
        let host = url.host().ok_or("must be an absolute URL")?;
        // One canonical host: a trailing dot names the same host (`localhost.`).
        let ip = match &host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(*v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(*v6)),
            url::Host::Domain(_) => None,
        };
        let loopback = match (&host, ip) {
            (_, Some(ip)) => ip.is_loopback(),
            (url::Host::Domain(d), None) => d.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
            _ => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http_loopback && loopback => {}
            _ => return Err("must be an https URL".into()),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        if url.port() == Some(0) {
            return Err("must name a port from 1 to 65535".into());
        }
        let forbidden = match ip {
            Some(ip) => !self.allows(ip),
            None => loopback && !self.allow_http_loopback,
        };
        if forbidden {
            return Err("must not point to a private, loopback or link-local address".into());
        }
        Ok(url)
    }

    /// May a delivery connect to `ip`?
    pub fn allows(&self, ip: IpAddr) -> bool {
        public(ip) || (self.allow_http_loopback && ip.is_loopback())
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
            "https://example.com:0/h",
            "ftp://hooks.example.com/",
            "/relative",
        ] {
            assert!(strict.check_url(bad).is_err(), "{bad}");
        }
        assert!(strict.check_url("https://1.2.3.4.example.com/").is_ok(), "names are resolved at delivery");
        let tests = Policy { allow_http_loopback: true };
        assert!(tests.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(tests.check_url("http://localhost:9/x").is_ok());
        assert!(tests.check_url("http://10.0.0.1/x").is_err());
        assert!(tests.allows("127.0.0.1".parse().unwrap()));
        assert!(!tests.allows("10.0.0.1".parse().unwrap()));
    }
}
