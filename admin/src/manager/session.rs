//! Manager sessions: a random id in an HttpOnly cookie, the key's hash (never the
//! key) and a CSRF token on the server. Each request asks the backend again who the
//! hash belongs to, so a session ends the moment its key is disabled, reset or
//! deleted. Sessions live in memory: a restart logs everyone out, which is the safe
//! direction.

use rand::RngCore;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

pub const SESSION_COOKIE: &str = "weir_session";
/// The login form's double-submit token, before there is a session.
pub const LOGIN_COOKIE: &str = "weir_login";
pub const LANG_COOKIE: &str = "weir_lang";

/// A session ends this long after its last request.
const IDLE: Duration = Duration::from_secs(2 * 3600);
/// And this long after login, however busy.
const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Beyond this many, the longest idle session is dropped for a new one.
const MAX_SESSIONS: usize = 10_000;

/// What the last form post left for the page it returns to: shown once.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Flash {
    /// The form that was sent (its `_form` field), so the message sits next to it.
    pub form: String,
    pub ok: bool,
    pub message: String,
    /// The API's answer, for forms whose answer is the point (a new key's secret,
    /// a channel test, a docking result).
    pub answer: Option<Value>,
    /// What was typed, to fill the form again after an error (never a secret).
    pub values: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub key_hash: String,
    pub csrf: String,
    created: Instant,
    seen: Instant,
    pub flash: Option<Flash>,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes from the OS-seeded CSPRNG, as hex.
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two tokens in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    /// A new session for the key with this hash; answers its id.
    pub fn create(&self, key_hash: String) -> String {
        let id = token();
        let now = Instant::now();
        let session = Session {
            key_hash,
            csrf: token(),
            created: now,
            seen: now,
            flash: None,
        };
        let mut map = self.lock();
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session);
        id
    }

    /// The live session with this id (its flash taken), or `None`.
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        let s = map.get_mut(id)?;
        if !live(s, now) {
            map.remove(id);
            return None;
        }
        s.seen = now;
        let out = s.clone();
        s.flash = None;
        Some(out)
    }

    pub fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(s) = self.lock().get_mut(id) {
            s.flash = Some(flash);
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock cannot leave a session half-written
        // (each change is one insert or remove), so a poisoned map is still good.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < MAX_AGE
}

/// The value of one cookie in a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim()).filter(|v| !v.is_empty())
    })
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Strict always, Secure under TLS;
/// `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path=/manager; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_compare_exactly() {
        let (a, b) = (token(), token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token("", ""));
    }

    #[test]
    fn sessions_carry_a_flash_once_and_end_on_remove() {
        let s = Sessions::default();
        let id = s.create("hash".into());
        s.set_flash(
            &id,
            Flash {
                message: "saved".into(),
                ..Flash::default()
            },
        );
        assert_eq!(s.touch(&id).unwrap().flash.unwrap().message, "saved");
        assert!(s.touch(&id).unwrap().flash.is_none());
        s.remove(&id);
        assert!(s.touch(&id).is_none());
        assert!(s.touch("nope").is_none());
    }

    #[test]
    fn cookies_parse_and_are_strict() {
        let h = Some("a=1; weir_session=abc ; b=");
        assert_eq!(cookie(h, "weir_session"), Some("abc"));
        assert_eq!(cookie(h, "b"), None);
        assert_eq!(cookie(None, "a"), None);
        let c = set_cookie("weir_session", "x", None, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(set_cookie("a", "", Some(0), false).contains("Max-Age=0"));
    }
}
