//! Dashboard sessions: a signed cookie, so every replica behind one admin address accepts the
//! sessions of the others without a session table. The signing key is a random secret the store
//! keeps (`Store::shared_secret`), so nothing a browser holds says anything about the admin
//! token; an admin session carries a tag keyed by that secret and the token, so changing the
//! token ends every admin session. Signing out ends a session on every replica (the store
//! remembers it until it would have expired). A viewer's session names its key, which is checked
//! against the live directory on every page, so revoking the key ends the session too. The
//! sign-in form carries a token bound to a cookie of its own, so no other site can sign a
//! browser in (login CSRF).

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

/// The sign-in form's cookie, which its CSRF token is bound to.
pub const LOGIN_COOKIE: &str = "tollgate_login";

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Whose.
    pub who: Who,
    /// Unix ms it ends.
    pub expires_ms: u64,
    /// The cookie value it came from (what the CSRF token is bound to).
    value: String,
    /// Its random id (what signing out ends).
    pub id: String,
}

/// Signs and checks session cookies and CSRF tokens.
pub struct Sessions {
    key: [u8; 32],
    /// What admin sessions carry: a MAC of the admin token (none: no admin sessions).
    admin_tag: Option<String>,
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
        m.update(b"\n");
    }
    m.finalize().into_bytes().into()
}

use crate::policy::secret::constant_time_eq as eq;

impl Sessions {
    /// Signs with `key` (the store's shared secret); admin sessions exist only with a token.
    pub fn new(key: [u8; 32], admin_token: Option<&str>) -> Sessions {
        let admin_tag = admin_token.map(|t| hex::encode(&mac(&key, &[b"admin token", t.as_bytes()])[..16]));
        Sessions { key, admin_tag }
    }

    /// A new session's cookie value.
    pub fn issue(&self, who: &Who, now_ms: u64) -> String {
        let (role, tenant, key_id, tag) = match who {
            Who::Admin => ("a", String::new(), String::new(), self.admin_tag.clone().unwrap_or_default()),
            Who::Viewer { tenant, key_id } => ("v", hex::encode(tenant), hex::encode(key_id), String::new()),
        };
        let nonce = format!("{:032x}", rand::random::<u128>());
        let body = format!("v2.{role}.{tenant}.{key_id}.{}.{nonce}.{tag}", now_ms + LIFETIME_MS);
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
        let ["v2", role, tenant, key_id, expires, nonce, tag] = f.as_slice() else { return None };
        let expires_ms: u64 = expires.parse().ok()?;
        if expires_ms <= now_ms {
            return None;
        }
        let text = |h: &str| hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok());
        let who = match *role {
            // Signed under another admin token: that token's sessions ended with it.
            "a" if self.admin_tag.as_deref().is_some_and(|t| eq(t.as_bytes(), tag.as_bytes())) => Who::Admin,
            "v" => Who::Viewer { tenant: text(tenant)?, key_id: text(key_id)? },
            _ => return None,
        };
        Some(Session { who, expires_ms, value: value.to_string(), id: nonce.to_string() })
    }

    /// A new sign-in form's cookie value (random).
    pub fn login_nonce() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    /// The CSRF token of the sign-in form whose cookie holds `nonce`.
    pub fn login_csrf(&self, nonce: &str) -> String {
        hex::encode(&mac(&self.key, &[b"login", nonce.as_bytes()])[..16])
    }

    /// Does `token` belong to the sign-in form whose cookie holds `nonce`?
    pub fn login_csrf_ok(&self, nonce: &str, token: &str) -> bool {
        !nonce.is_empty() && eq(token.as_bytes(), self.login_csrf(nonce).as_bytes())
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
    named_cookie(header, COOKIE)
}

/// Cookie `name`'s value in a `Cookie` header.
pub fn named_cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').map(str::trim).find_map(|c| c.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_expire_and_bind_csrf_tokens() {
        let s = Sessions::new([7; 32], Some("admin-token"));
        let viewer = Who::Viewer { tenant: "team-a".into(), key_id: "key_1".into() };
        let v = s.issue(&viewer, 1_000);
        let got = s.check(&v, 2_000).unwrap();
        assert_eq!(got.who, viewer);
        assert!(s.check(&v, 1_000 + LIFETIME_MS).is_none(), "expired after 12 h");
        // Any change to the body breaks the signature: a viewer cannot make itself admin.
        let forged = v.replacen("v2.v.", "v2.a.", 1);
        assert!(s.check(&forged, 2_000).is_none());
        assert!(s.check("v2.a....99999999999999.00..00", 2_000).is_none());
        assert!(
            Sessions::new([8; 32], Some("admin-token")).check(&v, 2_000).is_none(),
            "another store's sessions are not ours"
        );
        let admin_value = s.issue(&Who::Admin, 1_000);
        assert!(
            Sessions::new([7; 32], Some("new-admin-token")).check(&admin_value, 2_000).is_none(),
            "a new admin token ends admin sessions"
        );
        assert!(Sessions::new([7; 32], Some("new-admin-token")).check(&v, 2_000).is_some(), "viewers' sessions stay");
        assert!(!admin_value.contains("admin-token"));
        let admin = s.check(&admin_value, 2_000).unwrap();
        assert_ne!(admin.id, got.id);
        let nonce = Sessions::login_nonce();
        assert!(s.login_csrf_ok(&nonce, &s.login_csrf(&nonce)));
        assert!(!s.login_csrf_ok(&Sessions::login_nonce(), &s.login_csrf(&nonce)), "bound to its form's cookie");
        assert!(!s.login_csrf_ok("", &s.login_csrf("")));
        assert!(s.csrf_ok(&admin, &s.csrf(&admin)));
        assert!(!s.csrf_ok(&admin, &s.csrf(&got)), "a token belongs to one session");
        assert!(!s.csrf_ok(&admin, ""));
        assert_eq!(cookie_value("a=b; tollgate_session=xyz; c=d"), Some("xyz"));
        assert_eq!(cookie_value("tollgate_sessionx=1"), None);
    }
}
