//! The route table: the platform's API (shared/platform-api.md §2) as the gateway serves it.
//!
//! Paths are the platform's own, so a tenant switches base URL and key and nothing else.

use http::Method;

use crate::core::error::GatewayError;
use crate::policy::catalog::Catalog;
use crate::policy::family::Family;

/// Longest generation id accepted (the platform's are UUIDs or short prefixed ids).
const MAX_ID_LEN: usize = 128;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/{family}/generate` (paid).
    Generate(Family),
    /// `POST /v1/{family}/quote`: what that generate would cost and whether it would pass now.
    Quote(Family),
    /// `GET /v1/{family}/generations/{id}` (with or without a trailing slash).
    Status(Family, String),
    /// `GET /v1/{family}/generations` (list).
    List(Family),
    /// `GET /v1/data/balance`.
    Balance,
    /// `GET /v1/gateway/usage`: the tenant's own budget and spend.
    Usage,
    /// `POST /webhooks/runblob/{token}`: the platform calling back (no tenant key).
    Webhook(String),
}

/// Route template for logs and metrics when no route matched.
pub const UNMATCHED: &str = "unmatched";

fn valid_id(id: &str) -> bool {
    // Every byte checked without an early exit, so the compiler vectorises it.
    let ok = |b: u8| b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_');
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().fold(true, |all, b| all & ok(b))
}

// === impl Route ===

impl Route {
    /// The route with its id elided, e.g. `/v1/sora/generations/{id}`.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Balance => "/v1/data/balance",
            Route::Usage => "/v1/gateway/usage",
            Route::Webhook(_) => "/webhooks/runblob/{token}",
            Route::Generate(f) => &f.templates()[0],
            Route::Status(f, _) => &f.templates()[1],
            Route::List(f) => &f.templates()[2],
            Route::Quote(f) => &f.templates()[3],
        }
    }
}

/// Matches method and path. Unknown paths are 404 `Not found`; a known path with the wrong
/// method is 405 with `Allow`. An id that cannot be a generation id is 404 `Generation not found`.
/// Families are those of `catalog`.
pub fn resolve(catalog: &Catalog, method: &Method, path: &str) -> Result<Route, GatewayError> {
    if let Some(token) = path.strip_prefix("/webhooks/runblob/") {
        if token.is_empty() || token.len() > MAX_ID_LEN || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(GatewayError::NotFound);
        }
        return if method == Method::POST {
            Ok(Route::Webhook(token.to_string()))
        } else {
            Err(GatewayError::MethodNotAllowed { allow: "POST" })
        };
    }
    let rest = path.strip_prefix("/v1/").ok_or(GatewayError::NotFound)?;
    // Like the generation paths, the two gateway reads take an optional trailing slash.
    let (route, allow) = if matches!(rest, "data/balance" | "data/balance/") {
        (Route::Balance, "GET")
    } else if matches!(rest, "gateway/usage" | "gateway/usage/") {
        (Route::Usage, "GET")
    } else {
        let Some((family, tail)) = catalog.split(rest) else {
            // `/v1/<name>/generate` or `/v1/<name>/generations…` with a name that is no family.
            let mut parts = rest.splitn(2, '/');
            let (name, tail) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !name.is_empty()
                && name.len() <= 40
                && (tail == "generate" || tail == "quote" || tail.starts_with("generations"))
            {
                return Err(GatewayError::UnknownFamily(name.to_string(), catalog.paths()));
            }
            return Err(GatewayError::NotFound);
        };
        match tail {
            "generate" => (Route::Generate(family), "POST"),
            "quote" => (Route::Quote(family), "POST"),
            "generations" | "generations/" => (Route::List(family), "GET"),
            _ => {
                let id = tail.strip_prefix("generations/").ok_or(GatewayError::NotFound)?;
                let id = id.strip_suffix('/').unwrap_or(id);
                if id.contains('/') {
                    return Err(GatewayError::NotFound);
                }
                if !valid_id(id) {
                    return Err(GatewayError::GenerationNotFound);
                }
                (Route::Status(family, id.to_string()), "GET")
            }
        }
    };
    let method_ok = match allow {
        "GET" => method == Method::GET,
        _ => method == Method::POST,
    };
    if method_ok {
        Ok(route)
    } else {
        Err(GatewayError::MethodNotAllowed { allow })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: Method, path: &str) -> Route {
        resolve(Catalog::builtin(), &method, path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn every_family_route_resolves() {
        for &f in Catalog::builtin().families() {
            let p = f.path();
            assert_eq!(ok(Method::POST, &format!("/v1/{p}/generate")), Route::Generate(f));
            assert_eq!(ok(Method::GET, &format!("/v1/{p}/generations/abc-123")), Route::Status(f, "abc-123".into()));
            assert_eq!(ok(Method::GET, &format!("/v1/{p}/generations/abc-123/")), Route::Status(f, "abc-123".into()));
            assert_eq!(ok(Method::GET, &format!("/v1/{p}/generations")), Route::List(f));
        }
        assert_eq!(ok(Method::GET, "/v1/data/balance"), Route::Balance);
        assert_eq!(ok(Method::GET, "/v1/data/balance/"), Route::Balance);
        assert_eq!(ok(Method::GET, "/v1/gateway/usage/"), Route::Usage);
    }

    #[test]
    fn longest_family_wins() {
        assert_eq!(ok(Method::POST, "/v1/kling/o3-photo/generate"), Route::Generate(Family::builtin("kling/o3-photo")));
        assert_eq!(ok(Method::POST, "/v1/kling/generate"), Route::Generate(Family::builtin("kling")));
        assert_eq!(
            ok(Method::GET, "/v1/kling/o1-photo/generations/photo-550e8400-e29b-41d4-a716"),
            Route::Status(Family::builtin("kling/o1-photo"), "photo-550e8400-e29b-41d4-a716".into())
        );
    }

    #[test]
    fn unknown_paths_are_404() {
        for p in [
            "/",
            "/v1",
            "/v1/",
            "/v2/sora/generate",
            "/v1/sora",
            "/v1/sora/",
            "/v1/sora/generatex",
            "/v1/midjourney",
            "/v1/sora/generations/a/b",
            "/v1/data/balance//",
            "/v1/data",
        ] {
            assert!(matches!(resolve(Catalog::builtin(), &Method::GET, p), Err(GatewayError::NotFound)), "{p}");
        }
    }

    #[test]
    fn odd_ids_are_unknown_generations() {
        for p in [
            "/v1/sora/generations/..%2f",
            "/v1/sora/generations/a.b",
            &format!("/v1/sora/generations/{}", "a".repeat(129)),
        ] {
            assert!(
                matches!(resolve(Catalog::builtin(), &Method::GET, p), Err(GatewayError::GenerationNotFound)),
                "{p}"
            );
        }
    }

    #[test]
    fn an_id_is_letters_digits_dashes_and_underscores_at_any_position() {
        for c in 0u8..=255 {
            let expected = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
            for at in [0, 1, 15, 16, 31, 32, 35] {
                let mut id = b"0123456789abcdef-0123456789_ABCDEF-x".to_vec();
                id[at] = c;
                // Not UTF-8 for bytes above 0x7f: those never reach the check as one byte.
                if let Ok(id) = std::str::from_utf8(&id) {
                    assert_eq!(valid_id(id), expected, "byte {c:#x} at {at}");
                }
            }
        }
        assert!(valid_id(&"a".repeat(MAX_ID_LEN)) && !valid_id(&"a".repeat(MAX_ID_LEN + 1)) && !valid_id(""));
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        assert!(matches!(
            resolve(Catalog::builtin(), &Method::GET, "/v1/sora/generate"),
            Err(GatewayError::MethodNotAllowed { allow: "POST" })
        ));
        assert!(matches!(
            resolve(Catalog::builtin(), &Method::DELETE, "/v1/sora/generations/x"),
            Err(GatewayError::MethodNotAllowed { allow: "GET" })
        ));
        assert!(matches!(
            resolve(Catalog::builtin(), &Method::POST, "/v1/data/balance"),
            Err(GatewayError::MethodNotAllowed { allow: "GET" })
        ));
    }

    #[test]
    fn templates_hide_ids() {
        assert_eq!(Route::Status(Family::builtin("sora"), "x".into()).template(), "/v1/sora/generations/{id}");
        assert_eq!(Route::Generate(Family::builtin("kling/o1-video")).template(), "/v1/kling/o1-video/generate");
        assert_eq!(Route::List(Family::builtin("gemini")).template(), "/v1/gemini/generations");
        assert_eq!(Route::Balance.template(), "/v1/data/balance");
        assert_eq!(ok(Method::POST, "/v1/kling/o1-video/quote"), Route::Quote(Family::builtin("kling/o1-video")));
        assert_eq!(Route::Quote(Family::builtin("veo")).template(), "/v1/veo/quote");
    }
}
