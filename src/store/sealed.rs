//! Provider keys at rest (A1): AES-256-GCM (ring, the TLS stack's own crypto) under a
//! key derived from `storage.secret_key` with HKDF-SHA256. Each sealed value is
//! `v1` + a random 96-bit nonce + the ciphertext and its tag, so a changed or
//! wrong secret is an error, never garbage keys.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

const VERSION: &[u8] = b"v1";
/// Fewer characters than this is not a secret worth the name.
pub const MIN_SECRET: usize = 16;

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    pub fn new(secret: &str) -> Result<Sealer, String> {
        if secret.chars().count() < MIN_SECRET {
            return Err(format!(
                "storage.secret_key: use at least {MIN_SECRET} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"weir storage.secret_key");
        let prk = salt.extract(secret.as_bytes());
        let info: [&[u8]; 1] = [b"provider keys v1"];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| "cannot derive the storage key".to_string())?;
        Ok(Sealer {
            key: LessSafeKey::new(UnboundKey::from(okm)),
            rng: SystemRandom::new(),
        })
    }

    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no randomness for a nonce".to_string())?;
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body)
            .map_err(|_| "cannot encrypt".to_string())?;
        let mut out = Vec::with_capacity(VERSION.len() + NONCE_LEN + body.len());
        out.extend_from_slice(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let rest = sealed
            .strip_prefix(VERSION)
            .filter(|r| r.len() > NONCE_LEN)
            .ok_or("not a sealed value of this weir")?;
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut body)
            .map_err(|_| {
                "cannot decrypt: storage.secret_key is not the one these keys were stored with"
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_with_the_same_secret_only() {
        let s = Sealer::new("a-secret-of-sixteen+").unwrap();
        let sealed = s.seal(b"sk-provider-key").unwrap();
        assert!(
            !sealed.windows(6).any(|w| w == b"sk-pro"),
            "stored in clear"
        );
        assert_eq!(s.open(&sealed).unwrap(), b"sk-provider-key");
        // A fresh nonce each time.
        assert_ne!(s.seal(b"sk-provider-key").unwrap(), sealed);
        let other = Sealer::new("another-secret-of-16").unwrap();
        assert!(other.open(&sealed).unwrap_err().contains("secret_key"));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(s.open(&tampered).is_err());
        assert!(s.open(b"v1short").is_err());
        assert!(Sealer::new("short").is_err());
    }
}
