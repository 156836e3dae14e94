//! Ids the gateway makes for every request: request ids, trace and span ids, hold ids.
//!
//! They are labels, not secrets, so a per-thread xoshiro, seeded from the OS-seeded `ThreadRng`,
//! draws them: `ThreadRng` (ChaCha12) cost about 650 instructions per request for these bytes,
//! and `Uuid::new_v4` makes a `getrandom` system call each time. 128 bits keep them unique
//! across threads, processes and replicas. Secrets (webhook tokens and signing keys) still come
//! from `ThreadRng`.

pub(crate) mod trace;

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

thread_local! {
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(rand::thread_rng()).unwrap_or_else(|_| SmallRng::seed_from_u64(std::process::id().into())));
}

/// 128 random bits.
pub fn random_bits() -> u128 {
    IDS.with(|r| r.borrow_mut().gen())
}

/// A random (version 4) UUID.
pub fn uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(random_bits().to_be_bytes()).into_uuid()
}

/// The request header carrying the request id (set on every answer, sent to the platform).
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_are_v4() {
        let a: std::collections::HashSet<u128> = (0..10_000).map(|_| random_bits()).collect();
        assert_eq!(a.len(), 10_000);
        let u = uuid();
        assert_eq!(u.get_version_num(), 4);
        // Each thread draws its own sequence.
        let other = std::thread::spawn(random_bits).join().unwrap();
        assert!(!a.contains(&other));
    }
}
