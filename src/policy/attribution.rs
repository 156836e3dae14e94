//! Who owns a generation found on the platform: never a guess.
//!
//! A request whose outcome is unknown (timeout, reset, crash) is matched against the platform's
//! account-wide list. The list names no tenant, so two tenants who send the same prompt within
//! one window cannot be told apart by it, and handing either generation to either tenant may
//! give one tenant the output of another tenant's private image. So a listed generation is given
//! to a claim only when the matching is forced: the claim can be only that generation and the
//! generation can be only that claim. A cluster of claims and generations that could pair up in
//! more than one way is *ambiguous*: its generations are owned by nobody (an operator assigns or
//! dismisses them) and its claims find nothing (released after `unknown_after`).
//!
//! One exception: when every claim in a cluster is the same tenant's request with the same body
//! (a client's retries without an Idempotency-Key), any pairing gives that tenant exactly what it
//! asked for, so they are paired oldest to oldest.
//!
//! Claims and listings are compared on every field the platform's list returns: the prompt (by
//! digest), the creation window, and each request field the request sent that the list also
//! shows (duration, orientation, model …). A field only one side has constrains nothing.

use std::collections::BTreeMap;

/// What the gateway remembers of a forwarded request, to recognise it in the platform's list.
/// Stored with the hold as one string (`encode`); a bare hex digest (holds written before the
/// fingerprint existed) decodes as a prompt-only fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// Hex SHA-256 of the prompt ("" hashed when there was none).
    #[serde(rename = "p")]
    pub prompt_sha256: String,
    /// Hex SHA-256 of the family and the body as the tenant sent it: equal bodies, equal digests.
    #[serde(rename = "b", default)]
    pub body_sha256: String,
    /// The body's scalar fields other than the prompt, images and callback, as JSON text.
    #[serde(rename = "s", default)]
    pub shape: BTreeMap<String, String>,
}

impl Fingerprint {
    /// The stored form.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the stored form (or a bare prompt digest).
    pub fn decode(s: &str) -> Fingerprint {
        if s.starts_with('{') {
            if let Ok(f) = serde_json::from_str(s) {
                return f;
            }
        }
        Fingerprint { prompt_sha256: s.to_string(), ..Default::default() }
    }
}

/// Body fields that never appear in the shape: the prompt is matched by digest, and images and
/// callbacks are not echoed by the platform's list in a comparable form.
pub const NOT_SHAPE: &[&str] =
    &["prompt", "callback_url", "image_base64", "image_url", "images", "image_urls", "reference_images"];

/// An unknown outcome as attribution sees it.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Who would pay.
    pub tenant: String,
    /// Unix ms the hold was taken.
    pub created_ms: i64,
    /// What was sent.
    pub fingerprint: Fingerprint,
    /// Still in flight (an open hold): its own answer may yet name the generation, so nothing
    /// it could be is decided now.
    pub in_flight: bool,
}

/// A generation in the platform's list that nobody owns yet.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Hex SHA-256 of its prompt.
    pub prompt_sha256: String,
    /// Unix ms it was created, if the platform said.
    pub created_ms: Option<i64>,
    /// The other scalar fields the list shows, as JSON text (strings unquoted).
    pub fields: BTreeMap<String, String>,
}

/// The verdict for one family's claims and listings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// (claim index, listing index): the listing is that claim's.
    pub assigned: Vec<(usize, usize)>,
    /// Listings that could be more than one claim's: owned by nobody until an operator decides.
    /// Each with the tenants that could own it.
    pub ambiguous: Vec<(usize, Vec<String>)>,
    /// Claims in a cluster with a request in flight: decided in a later pass.
    pub waiting: Vec<usize>,
}

/// Can `l` be the generation `c` asked for? `window` = (before, after) ms around the claim.
pub fn compatible(c: &Claim, l: &Listing, window: (i64, i64)) -> bool {
    if c.fingerprint.prompt_sha256 != l.prompt_sha256 {
        return false;
    }
    if let Some(t) = l.created_ms {
        if t < c.created_ms - window.0 || t > c.created_ms + window.1 {
            return false;
        }
    }
    c.fingerprint.shape.iter().all(|(k, v)| l.fields.get(k).is_none_or(|x| x == v))
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Decides ownership (see the module docs). Claims and listings are each oldest first. Clusters
/// with a request still in flight are left for a later pass (neither assigned nor ambiguous).
pub fn attribute(claims: &[Claim], listings: &[Listing], window: (i64, i64)) -> Verdict {
    let (nc, nl) = (claims.len(), listings.len());
    let edges: Vec<(usize, usize)> = (0..nc)
        .flat_map(|c| (0..nl).filter(move |&l| compatible(&claims[c], &listings[l], window)).map(move |l| (c, l)))
        .collect();
    // Connected clusters of the claim–listing graph (claims 0..nc, listings nc..nc+nl).
    let mut parent: Vec<usize> = (0..nc + nl).collect();
    for &(c, l) in &edges {
        let (a, b) = (find(&mut parent, c), find(&mut parent, nc + l));
        parent[a] = b;
    }
    let mut clusters: BTreeMap<usize, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for &(c, l) in &edges {
        let root = find(&mut parent, c);
        let e = clusters.entry(root).or_default();
        if !e.0.contains(&c) {
            e.0.push(c);
        }
        if !e.1.contains(&l) {
            e.1.push(l);
        }
    }
    let mut out = Verdict::default();
    for (_, (mut cs, mut ls)) in clusters {
        cs.sort_unstable();
        ls.sort_unstable();
        if cs.iter().any(|&c| claims[c].in_flight) {
            out.waiting.extend(cs.iter().filter(|&&c| !claims[c].in_flight));
            continue;
        }
        if cs.len() == 1 && ls.len() == 1 {
            out.assigned.push((cs[0], ls[0]));
            continue;
        }
        let first = &claims[cs[0]];
        let one_request = cs.iter().all(|&c| {
            claims[c].tenant == first.tenant && claims[c].fingerprint.body_sha256 == first.fingerprint.body_sha256
        }) && !first.fingerprint.body_sha256.is_empty();
        if one_request {
            // Identical requests of one tenant: oldest claim to the oldest listing it can be.
            let mut used = vec![false; nl];
            for &c in &cs {
                if let Some(&l) = ls.iter().find(|&&l| !used[l] && edges.contains(&(c, l))) {
                    used[l] = true;
                    out.assigned.push((c, l));
                }
            }
            continue;
        }
        for &l in &ls {
            let mut tenants: Vec<String> =
                cs.iter().filter(|&&c| edges.contains(&(c, l))).map(|&c| claims[c].tenant.clone()).collect();
            tenants.sort();
            tenants.dedup();
            out.ambiguous.push((l, tenants));
        }
    }
    out.assigned.sort_unstable();
    out.waiting.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claim(tenant: &str, prompt: &str, body: &str, at: i64) -> Claim {
        Claim {
            tenant: tenant.into(),
            created_ms: at,
            fingerprint: Fingerprint { prompt_sha256: prompt.into(), body_sha256: body.into(), shape: BTreeMap::new() },
            in_flight: false,
        }
    }
    fn listing(prompt: &str, at: i64) -> Listing {
        Listing { prompt_sha256: prompt.into(), created_ms: Some(at), fields: BTreeMap::new() }
    }
    const W: (i64, i64) = (1000, 5000);

    #[test]
    fn fingerprints_round_trip_and_old_digests_still_read() {
        let f = Fingerprint {
            prompt_sha256: "ab".into(),
            body_sha256: "cd".into(),
            shape: [("duration".to_string(), "10".to_string())].into(),
        };
        assert_eq!(Fingerprint::decode(&f.encode()), f);
        assert_eq!(Fingerprint::decode("ab12"), Fingerprint { prompt_sha256: "ab12".into(), ..Default::default() });
    }

    #[test]
    fn one_claim_one_listing_is_assigned() {
        let v = attribute(&[claim("a", "p", "x", 100)], &[listing("p", 200)], W);
        assert_eq!(v.assigned, vec![(0, 0)]);
        assert!(v.ambiguous.is_empty());
    }

    #[test]
    fn two_tenants_same_prompt_are_owned_by_nobody() {
        let v = attribute(
            &[claim("a", "p", "x", 100), claim("b", "p", "y", 150)],
            &[listing("p", 200), listing("p", 250)],
            W,
        );
        assert!(v.assigned.is_empty());
        assert_eq!(v.ambiguous, vec![(0, vec!["a".into(), "b".into()]), (1, vec!["a".into(), "b".into()])]);
        // Only one of them was created: still nobody's.
        let v = attribute(&[claim("a", "p", "x", 100), claim("b", "p", "y", 150)], &[listing("p", 200)], W);
        assert!(v.assigned.is_empty());
        assert_eq!(v.ambiguous.len(), 1);
    }

    #[test]
    fn shape_fields_tell_requests_apart() {
        let mut a = claim("a", "p", "x", 100);
        a.fingerprint.shape.insert("duration".into(), "10".into());
        let mut b = claim("b", "p", "y", 100);
        b.fingerprint.shape.insert("duration".into(), "15".into());
        let mut l10 = listing("p", 200);
        l10.fields.insert("duration".into(), "10".into());
        let mut l15 = listing("p", 210);
        l15.fields.insert("duration".into(), "15".into());
        let v = attribute(&[a, b], &[l15, l10], W);
        assert_eq!(v.assigned, vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn identical_requests_of_one_tenant_pair_up() {
        let v = attribute(
            &[claim("a", "p", "x", 100), claim("a", "p", "x", 120)],
            &[listing("p", 200), listing("p", 220)],
            W,
        );
        assert_eq!(v.assigned, vec![(0, 0), (1, 1)]);
        // Same tenant, different bodies (other images): not interchangeable.
        let v = attribute(
            &[claim("a", "p", "x", 100), claim("a", "p", "z", 120)],
            &[listing("p", 200), listing("p", 220)],
            W,
        );
        assert!(v.assigned.is_empty());
    }

    #[test]
    fn a_request_in_flight_defers_its_cluster() {
        let mut b = claim("b", "p", "y", 150);
        b.in_flight = true;
        let v = attribute(&[claim("a", "p", "x", 100), b], &[listing("p", 200)], W);
        assert_eq!(v, Verdict { waiting: vec![0], ..Default::default() });
    }

    #[test]
    fn outside_the_window_is_not_a_candidate() {
        let v = attribute(&[claim("a", "p", "x", 100), claim("b", "p", "y", 100_000)], &[listing("p", 200)], W);
        assert_eq!(v.assigned, vec![(0, 0)]);
    }

    proptest! {
        /// Random overlaps of tenants, prompts and platform outcomes: a listing made from one
        /// tenant's request is never given to another tenant.
        #[test]
        fn no_tenant_ever_owns_another_tenants_generation(
            reqs in proptest::collection::vec((0..3usize, 0..3usize, 0..2usize, 0..4000i64, any::<bool>(), 0..2usize, any::<bool>()), 1..12)
        ) {
            // Each request: (tenant, prompt, body variant, time, created on the platform?,
            // duration, still in flight?)
            let mut claims = Vec::new();
            let mut listings = Vec::new();
            let mut made_by = Vec::new();
            for (t, p, b, at, created, d, in_flight) in &reqs {
                let tenant = format!("t{t}");
                let mut c = claim(&tenant, &format!("p{p}"), &format!("{t}-{p}-{b}-{d}"), *at);
                c.fingerprint.shape.insert("duration".into(), format!("{}", 10 + 5 * d));
                c.in_flight = *in_flight;
                claims.push(c);
                if *created {
                    let mut l = listing(&format!("p{p}"), at + 50);
                    l.fields.insert("duration".into(), format!("{}", 10 + 5 * d));
                    listings.push(l);
                    made_by.push(tenant);
                }
            }
            let v = attribute(&claims, &listings, W);
            let mut seen_l = std::collections::HashSet::new();
            let mut seen_c = std::collections::HashSet::new();
            for (c, l) in &v.assigned {
                prop_assert_eq!(&claims[*c].tenant, &made_by[*l]);
                prop_assert!(!claims[*c].in_flight);
                prop_assert!(seen_l.insert(*l) && seen_c.insert(*c), "one listing, one claim");
            }
            for (l, _) in &v.ambiguous {
                prop_assert!(!seen_l.contains(l));
            }
        }
    }
}
