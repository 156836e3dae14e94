//! Dashboard sessions: a signed cookie, so every replica behind one admin address accepts the
//! sessions of the others without a session table. The signing key is derived from the admin
//! token (changing the token ends every session); without one, viewers' sessions are signed
//! with a key made at start. A viewer's session names its key, which is checked against the
//! live directory on every page, so revoking the key ends the session within a second too.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The cookie's name.
pub const COOKIE: &str = "tollgate_session";
/// How long a session lasts.
pub const LIFETIME_MS: u64 = 12 * 3600 * 1000;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The admin token: every page and form.
    Admin,
    /// A tenant's viewer key: that tenant's page only.
    Viewer {
        /// The tenant.
        tenant: String,
        /// The key's id (never the key).
        key_id: String,
    },
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Whose.
    pub who: Who,
    /// Unix ms it ends.
    pub expires_ms: u64,
    /// The cookie value it came from (what the CSRF token is bound to).
    value: String,
}

/// Signs and checks session cookies and CSRF tokens.
pub struct Sessions {
    key: [u8; 32],
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
        m.update(b"\n");
    }
    m.finalize().into_bytes().into()
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// Keys derived from the admin token, or a random key when there is none.
    pub fn new(admin_token: Option<&str>) -> Sessions {
        let key = match admin_token {
            Some(t) => mac(t.as_bytes(), &[b"tollgate dashboard sessions v1"]),
            // ThreadRng is a CSPRNG seeded from the OS.
            None => rand::random::<[u8; 32]>(),
        };
        Sessions { key }
    }

    /// A new session's cookie value.
    pub fn issue(&self, who: &Who, now_ms: u64) -> String {
        let (role, tenant, key_id) = match who {
            Who::Admin => ("a", String::new(), String::new()),
            Who::Viewer { tenant, key_id } => ("v", hex::encode(tenant), hex::encode(key_id)),
        };
        let nonce = format!("{:032x}", rand::random::<u128>());
        let body = format!("v1.{role}.{tenant}.{key_id}.{}.{nonce}", now_ms + LIFETIME_MS);
        let sig = hex::encode(mac(&self.key, &[b"session", body.as_bytes()]));
        format!("{body}.{sig}")
    }

    /// The session a cookie value stands for, if it is signed by this key and not expired.
    pub fn check(&self, value: &str, now_ms: u64) -> Option<Session> {
        let (body, sig) = value.rsplit_once('.')?;
        if !eq(&hex::decode(sig).ok()?, &mac(&self.key, &[b"session", body.as_bytes()])) {
            return None;
        }
        let f: Vec<&str> = body.split('.').collect();
        let ["v1", role, tenant, key_id, expires, _nonce] = f.as_slice() else { return None };
        let expires_ms: u64 = expires.parse().ok()?;
        if expires_ms <= now_ms {
            return None;
        }
        let text = |h: &str| hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok());
        let who = match *role {
            "a" => Who::Admin,
            "v" => Who::Viewer { tenant: text(tenant)?, key_id: text(key_id)? },
            _ => return None,
        };
        Some(Session { who, expires_ms, value: value.to_string() })
    }

    /// The CSRF token of a session: its forms carry it, and a POST without it is refused.
    pub fn csrf(&self, s: &Session) -> String {
        hex::encode(&mac(&self.key, &[b"csrf", s.value.as_bytes()])[..16])
    }

    /// Is `token` this session's CSRF token?
    pub fn csrf_ok(&self, s: &Session, token: &str) -> bool {
        eq(token.as_bytes(), self.csrf(s).as_bytes())
    }
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').map(str::trim).find_map(|c| c.strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_expire_and_bind_csrf_tokens() {
        let s = Sessions::new(Some("admin-token"));
        let viewer = Who::Viewer { tenant: "team-a".into(), key_id: "key_1".into() };
        let v = s.issue(&viewer, 1_000);
        let got = s.check(&v, 2_000).unwrap();
        assert_eq!(got.who, viewer);
        assert!(s.check(&v, 1_000 + LIFETIME_MS).is_none(), "expired after 12 h");
        // Any change to the body breaks the signature: a viewer cannot make itself admin.
        let forged = v.replacen("v1.v.", "v1.a.", 1);
        assert!(s.check(&forged, 2_000).is_none());
        assert!(s.check("v1.a....99999999999999.00.00", 2_000).is_none());
        assert!(Sessions::new(Some("other-token")).check(&v, 2_000).is_none(), "another admin token's sessions are not ours");
        let admin = s.check(&s.issue(&Who::Admin, 1_000), 2_000).unwrap();
        assert!(s.csrf_ok(&admin, &s.csrf(&admin)));
        assert!(!s.csrf_ok(&admin, &s.csrf(&got)), "a token belongs to one session");
        assert!(!s.csrf_ok(&admin, ""));
        assert_eq!(cookie_value("a=b; tollgate_session=xyz; c=d"), Some("xyz"));
        assert_eq!(cookie_value("tollgate_sessionx=1"), None);
    }
}
