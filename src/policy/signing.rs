//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">`, keyed with the base64 part of a `whsec_…` secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A tenant's signing secret, decoded.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Why a secret is unusable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret must be `whsec_` followed by base64 of at least 24 bytes (tollgate keygen --webhook-secret)")]
pub struct BadSecret;

impl SigningKey {
    /// Parses `whsec_<base64>`.
    pub fn parse(secret: &str) -> Result<SigningKey, BadSecret> {
        let b64 = secret.trim().strip_prefix("whsec_").ok_or(BadSecret)?;
        let bytes = base64_simd::STANDARD.decode_to_vec(b64).map_err(|_| BadSecret)?;
        if bytes.len() < 24 {
            return Err(BadSecret);
        }
        Ok(SigningKey(bytes))
    }

    /// The `webhook-signature` header value for one delivery.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", base64_simd::STANDARD.encode_to_string(mac.finalize().into_bytes()))
    }
}

/// A new random secret, `whsec_` + base64 of 32 bytes.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("whsec_{}", base64_simd::STANDARD.encode_to_string(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's test vectors.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(SigningKey::parse("nope").is_err());
        assert!(SigningKey::parse("whsec_!!!").is_err());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").is_err());
        assert!(SigningKey::parse(&new_secret()).is_ok());
    }
}
