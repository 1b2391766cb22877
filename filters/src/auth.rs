//! Authentication (G2, G3): where the key is, and whether it is good.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::str::FromStr;

/// Where a gateway reads the caller's key: `header:NAME`, `body:FIELD`, `arg:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPosition {
    /// Header name, lowercase. A `Bearer ` prefix is stripped.
    Header(String),
    /// Top-level field of the JSON body; removed before the body goes upstream.
    Body(String),
    /// Query parameter; removed before the request goes upstream.
    Arg(String),
}

impl FromStr for KeyPosition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not `header:NAME`, `body:FIELD` or `arg:NAME`"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("`{s}` names no {kind}"));
        }
        match kind.trim() {
            "header" => {
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a header name"))?;
                Ok(KeyPosition::Header(name.to_ascii_lowercase()))
            }
            "body" => Ok(KeyPosition::Body(name.to_string())),
            "arg" => Ok(KeyPosition::Arg(name.to_string())),
            other => Err(format!(
                "`{other}` is not a key position; use header, body or arg"
            )),
        }
    }
}

/// A header value without its `Bearer ` prefix.
pub fn strip_bearer(v: &str) -> &str {
    let v = v.trim();
    match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
        _ => v,
    }
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The query without parameter `name` (so a key never travels upstream).
pub fn remove_query_param(query: &str, name: &str) -> String {
    let kept: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish()
}

/// How API keys are stored: SHA-256, hex. Keys are random and long, so a fast hash
/// is the right one (a password hash would only slow every request).
pub fn hash_key(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// A new API key: `sk-` and 48 random letters and digits (285 bits).
pub fn generate_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    let tail: String = (0..48)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("sk-{tail}")
}

/// What a verified JWT says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    pub identity: String,
    pub group: Option<String>,
}

/// JWT verification with the algorithm pinned by config: HMAC algorithms only with a
/// secret, RSA/EC only with a public key, so neither `alg: none` nor algorithm
/// confusion (an RSA public key used as an HMAC secret) can get through.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    identity_claim: String,
    group_claim: Option<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("identity_claim", &self.identity_claim)
            .finish_non_exhaustive()
    }
}

pub struct JwtSettings<'a> {
    pub secret: Option<&'a str>,
    /// PEM text of an RSA or EC public key.
    pub public_key_pem: Option<&'a str>,
    pub algorithms: &'a [String],
    pub identity_claim: &'a str,
    pub group_claim: Option<&'a str>,
    pub leeway_secs: u64,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

impl JwtVerifier {
    pub fn new(s: &JwtSettings<'_>) -> Result<Self, String> {
        if s.algorithms.is_empty() {
            return Err("algorithms: pin at least one (e.g. [HS256])".into());
        }
        let mut algs = Vec::new();
        for a in s.algorithms {
            let alg = match a.as_str() {
                "HS256" => Algorithm::HS256,
                "HS384" => Algorithm::HS384,
                "HS512" => Algorithm::HS512,
                "RS256" => Algorithm::RS256,
                "ES256" => Algorithm::ES256,
                other => {
                    return Err(format!(
                        "algorithms: `{other}` is not one of HS256, HS384, HS512, RS256, ES256"
                    ))
                }
            };
            algs.push(alg);
        }
        let hmac =
            |a: &Algorithm| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let key = match (s.secret, s.public_key_pem) {
            (Some(secret), None) => {
                if !algs.iter().all(hmac) {
                    return Err("algorithms: a `secret` verifies only HS256/HS384/HS512".into());
                }
                if secret.len() < 16 {
                    return Err("secret: use at least 16 bytes".into());
                }
                DecodingKey::from_secret(secret.as_bytes())
            }
            (None, Some(pem)) => {
                if algs.iter().any(hmac) {
                    return Err("algorithms: a `public_key` verifies only RS256 or ES256, never an HMAC algorithm".into());
                }
                let rsa = algs.contains(&Algorithm::RS256);
                let ec = algs.contains(&Algorithm::ES256);
                if rsa && ec {
                    return Err("algorithms: one public key is RSA or EC, not both".into());
                }
                if rsa {
                    DecodingKey::from_rsa_pem(pem.as_bytes())
                        .map_err(|e| format!("public_key: not an RSA public key in PEM ({e})"))?
                } else {
                    DecodingKey::from_ec_pem(pem.as_bytes())
                        .map_err(|e| format!("public_key: not an EC public key in PEM ({e})"))?
                }
            }
            (Some(_), Some(_)) => {
                return Err("give either `secret` or `public_key`, not both".into())
            }
            (None, None) => {
                return Err("give a `secret` (HS*) or a `public_key` (RS256/ES256)".into())
            }
        };
        let mut validation = Validation::new(algs[0]);
        validation.algorithms = algs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = s.leeway_secs;
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        match s.audience {
            Some(aud) => validation.set_audience(&[aud]),
            // Identity-provider tokens carry `aud`; unpinned, it is not checked.
            None => validation.validate_aud = false,
        }
        if let Some(iss) = s.issuer {
            validation.set_issuer(&[iss]);
        }
        if s.identity_claim.is_empty() {
            return Err("identity_claim: name the claim that identifies the caller".into());
        }
        Ok(JwtVerifier {
            key,
            validation,
            identity_claim: s.identity_claim.to_string(),
            group_claim: s.group_claim.map(str::to_string),
        })
    }

    pub fn verify(&self, token: &str) -> Result<JwtIdentity, String> {
        let data = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| format!("invalid token: {e}"))?;
        let claim = |name: &str| match data.claims.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let identity = claim(&self.identity_claim)
            .ok_or_else(|| format!("invalid token: no `{}` claim", self.identity_claim))?;
        let group = self.group_claim.as_deref().and_then(claim);
        Ok(JwtIdentity { identity, group })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-of-32-bytes-length";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs256() -> JwtVerifier {
        let hs = ["HS256".to_string()];
        JwtVerifier::new(&JwtSettings {
            group_claim: Some("team"),
            ..keyed(Some(SECRET), None, &hs)
        })
        .unwrap()
    }

    fn token(alg: Algorithm, claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn parses_key_positions() {
        assert_eq!(
            "header:Authorization".parse::<KeyPosition>().unwrap(),
            KeyPosition::Header("authorization".into())
        );
        assert_eq!(
            "body:user_id".parse::<KeyPosition>().unwrap(),
            KeyPosition::Body("user_id".into())
        );
        assert_eq!(
            "arg:token".parse::<KeyPosition>().unwrap(),
            KeyPosition::Arg("token".into())
        );
        assert!("cookie:x".parse::<KeyPosition>().is_err());
        assert!("header:".parse::<KeyPosition>().is_err());
        assert!("header:bad name".parse::<KeyPosition>().is_err());
    }

    #[test]
    fn strips_bearer_and_edits_queries() {
        assert_eq!(strip_bearer("Bearer sk-1"), "sk-1");
        assert_eq!(strip_bearer("bearer  sk-1 "), "sk-1");
        assert_eq!(strip_bearer("sk-1"), "sk-1");
        assert_eq!(
            query_param("a=1&token=x%2By&b=2", "token").as_deref(),
            Some("x+y")
        );
        assert_eq!(remove_query_param("a=1&token=x&b=2", "token"), "a=1&b=2");
        assert_eq!(remove_query_param("token=x", "token"), "");
    }

    #[test]
    fn keys_are_long_random_and_hashed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 51);
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn good_expired_future_tampered_and_none_tokens() {
        let v = hs256();
        let good = token(
            Algorithm::HS256,
            json!({"sub": "alice", "team": "red", "exp": now() + 60}),
            SECRET,
        );
        assert_eq!(
            v.verify(&good).unwrap(),
            JwtIdentity {
                identity: "alice".into(),
                group: Some("red".into())
            }
        );
        let expired = token(
            Algorithm::HS256,
            json!({"sub": "alice", "exp": now() - 10}),
            SECRET,
        );
        assert!(v.verify(&expired).unwrap_err().contains("Expired"));
        let early = token(
            Algorithm::HS256,
            json!({"sub": "alice", "exp": now() + 60, "nbf": now() + 30}),
            SECRET,
        );
        assert!(v.verify(&early).is_err());
        let no_exp = token(Algorithm::HS256, json!({"sub": "alice"}), SECRET);
        assert!(v.verify(&no_exp).is_err());
        let wrong_secret = token(
            Algorithm::HS256,
            json!({"sub": "alice", "exp": now() + 60}),
            "another-secret-of-32-bytes-long!",
        );
        assert!(v.verify(&wrong_secret).is_err());
        // Tampered payload: same signature, other claims.
        let parts: Vec<&str> = good.split('.').collect();
        let forged_payload = {
            use base64_like::encode_url;
            encode_url(&serde_json::to_vec(&json!({"sub": "mallory", "exp": now() + 60})).unwrap())
        };
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(v.verify(&tampered).is_err());
        // alg: none, unsigned.
        let none_header = base64_like::encode_url(br#"{"alg":"none","typ":"JWT"}"#);
        let none = format!("{none_header}.{}.", parts[1]);
        assert!(v.verify(&none).is_err());
        // A pinned HS256 verifier refuses HS512 tokens even with the right secret.
        let hs512 = token(
            Algorithm::HS512,
            json!({"sub": "alice", "exp": now() + 60}),
            SECRET,
        );
        assert!(v.verify(&hs512).is_err());
    }

    #[test]
    fn audience_and_issuer() {
        let v = hs256();
        // An identity provider's token carries `aud`; unpinned, it is accepted.
        let t = token(
            Algorithm::HS256,
            json!({"sub": "a", "aud": "my-app", "exp": now() + 60}),
            SECRET,
        );
        assert!(v.verify(&t).is_ok());
        let hs = ["HS256".to_string()];
        let pinned = JwtVerifier::new(&JwtSettings {
            audience: Some("weir"),
            issuer: Some("https://idp"),
            ..keyed(Some(SECRET), None, &hs)
        })
        .unwrap();
        assert!(pinned.verify(&t).is_err());
        let ok = token(
            Algorithm::HS256,
            json!({"sub": "a", "aud": "weir", "iss": "https://idp", "exp": now() + 60}),
            SECRET,
        );
        assert!(pinned.verify(&ok).is_ok());
        let wrong_iss = token(
            Algorithm::HS256,
            json!({"sub": "a", "aud": "weir", "iss": "https://evil", "exp": now() + 60}),
            SECRET,
        );
        assert!(pinned.verify(&wrong_iss).is_err());
    }

    /// Settings with only a secret or a public key, and the algorithms.
    fn keyed<'a>(
        secret: Option<&'a str>,
        pem: Option<&'a str>,
        algorithms: &'a [String],
    ) -> JwtSettings<'a> {
        JwtSettings {
            secret,
            public_key_pem: pem,
            algorithms,
            identity_claim: "sub",
            group_claim: None,
            leeway_secs: 0,
            audience: None,
            issuer: None,
        }
    }

    #[test]
    fn config_refuses_algorithm_confusion() {
        let rs = ["RS256".to_string()];
        let e = JwtVerifier::new(&keyed(Some(SECRET), None, &rs)).unwrap_err();
        assert!(e.contains("HS256"), "{e}");
        let hs = ["HS256".to_string()];
        let pem = Some("-----BEGIN PUBLIC KEY-----");
        let e = JwtVerifier::new(&keyed(None, pem, &hs)).unwrap_err();
        assert!(e.contains("never an HMAC"), "{e}");
        let none = ["none".to_string()];
        assert!(JwtVerifier::new(&keyed(Some(SECRET), None, &none)).is_err());
    }

    mod base64_like {
        use base64::Engine;
        pub fn encode_url(data: &[u8]) -> String {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
        }
    }
}
