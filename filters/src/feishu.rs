//! The Feishu (Lark) bot webhook (A9), without a socket: event decryption
//! (`encryptKey`: AES-256-CBC, key = SHA-256 of the encrypt key, IV = the first 16
//! bytes), the request signature, the events weir acts on, the question a message
//! asks, the reply's body, and the event ids already handled (Feishu retries a
//! delivery it thinks failed, for hours, with the same `event_id`).

use aes::cipher::{block_padding::Pkcs7, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

type Decryptor = cbc::Decryptor<aes::Aes256>;
type Encryptor = cbc::Encryptor<aes::Aes256>;

fn cipher_key(encrypt_key: &str) -> [u8; 32] {
    Sha256::digest(encrypt_key.as_bytes()).into()
}

/// The plain text of an `{"encrypt": …}` body.
pub fn decrypt(encrypt_key: &str, encrypted: &str) -> Result<Vec<u8>, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encrypted.trim())
        .map_err(|e| format!("`encrypt` is not base64: {e}"))?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err("`encrypt` is not an AES-CBC message (IV and whole blocks)".into());
    }
    let (iv, data) = raw.split_at(16);
    let key = cipher_key(encrypt_key);
    Decryptor::new(
        &key.into(),
        iv.try_into().map_err(|_| "bad IV".to_string())?,
    )
    .decrypt_padded_vec::<Pkcs7>(data)
    .map_err(|_| "`encrypt` does not open with the webhook's encryptKey".to_string())
}

/// What Feishu sends with encryption on: base64 of IV then ciphertext. Weir only
/// decrypts; this is the other side, for tests and tools.
pub fn encrypt(encrypt_key: &str, iv: [u8; 16], plain: &[u8]) -> String {
    let key = cipher_key(encrypt_key);
    let mut out = iv.to_vec();
    out.extend(Encryptor::new(&key.into(), &iv.into()).encrypt_padded_vec::<Pkcs7>(plain));
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// `X-Lark-Signature`: hex SHA-256 of timestamp, nonce, encrypt key and raw body.
pub fn signature(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(timestamp.as_bytes());
    h.update(nonce.as_bytes());
    h.update(encrypt_key.as_bytes());
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A mention in a message: its placeholder in the text and whom it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Mention {
    pub key: String,
    pub open_id: Option<String>,
}

/// `im.message.receive_v1`, the parts a reply needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub event_id: String,
    pub message_id: String,
    /// `p2p`, `group` or `topic_group`.
    pub chat_type: String,
    /// `text`, or another kind weir does not answer.
    pub message_type: String,
    /// The text as sent, `@_user_1` placeholders included.
    pub text: String,
    pub mentions: Vec<Mention>,
}

/// What an event callback asks of weir.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The URL check when the webhook is set up: answer the challenge.
    Challenge {
        challenge: String,
    },
    Message(Message),
    /// Any other event: acknowledged, nothing done.
    Other {
        event_id: Option<String>,
        event_type: String,
    },
}

/// An event and the verification token it carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    pub event: Event,
    pub token: Option<String>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

/// Reads a callback body, opening it first when it is encrypted. With an encrypt
/// key, Feishu encrypts every event: a plain one is refused.
pub fn parse(body: &[u8], encrypt_key: Option<&str>) -> Result<Callback, String> {
    let mut v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let encrypted = v.get("encrypt").and_then(Value::as_str);
    if encrypted.is_none() && encrypt_key.is_some_and(|k| !k.is_empty()) {
        return Err("the webhook has an encryptKey, and the event is not encrypted".into());
    }
    if let Some(encrypted) = encrypted {
        let key = encrypt_key
            .filter(|k| !k.is_empty())
            .ok_or("the event is encrypted and the webhook has no encryptKey")?;
        let plain = decrypt(key, encrypted)?;
        v = serde_json::from_slice(&plain)
            .map_err(|e| format!("the decrypted event is not JSON: {e}"))?;
    }
    if str_at(&v, &["type"]) == Some("url_verification") {
        let challenge = str_at(&v, &["challenge"]).ok_or("url_verification without a challenge")?;
        return Ok(Callback {
            event: Event::Challenge {
                challenge: challenge.to_string(),
            },
            token: str_at(&v, &["token"]).map(str::to_string),
        });
    }
    // Schema 2.0 keeps the token and type in `header`; 1.0 at the top and in `event`.
    let token = str_at(&v, &["header", "token"])
        .or_else(|| str_at(&v, &["token"]))
        .map(str::to_string);
    let event_type = str_at(&v, &["header", "event_type"])
        .or_else(|| str_at(&v, &["event", "type"]))
        .unwrap_or("")
        .to_string();
    let event_id = str_at(&v, &["header", "event_id"])
        .or_else(|| str_at(&v, &["uuid"]))
        .map(str::to_string);
    let event = match (event_type.as_str(), &event_id) {
        ("im.message.receive_v1", Some(id)) => Event::Message(message(&v, id)?),
        _ => Event::Other {
            event_id,
            event_type,
        },
    };
    Ok(Callback { event, token })
}

fn message(v: &Value, event_id: &str) -> Result<Message, String> {
    let m = v
        .pointer("/event/message")
        .ok_or("im.message.receive_v1 without event.message")?;
    let field = |k: &str| str_at(m, &[k]).unwrap_or("").to_string();
    let message_type = field("message_type");
    let text = if message_type == "text" {
        let content: Value = serde_json::from_str(&field("content"))
            .map_err(|e| format!("event.message.content is not JSON: {e}"))?;
        str_at(&content, &["text"]).unwrap_or("").to_string()
    } else {
        String::new()
    };
    let mentions = m
        .get("mentions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|x| Mention {
            key: str_at(x, &["key"]).unwrap_or("").to_string(),
            open_id: str_at(x, &["id", "open_id"]).map(str::to_string),
        })
        .collect();
    Ok(Message {
        event_id: event_id.to_string(),
        message_id: field("message_id"),
        chat_type: field("chat_type"),
        message_type,
        text,
        mentions,
    })
}

/// What the bot is asked, or `None` when it should stay quiet: private chats are
/// answered; in groups only a message that mentions the bot by its `open_id` (not
/// known: quiet). Mention placeholders are taken out.
pub fn question(m: &Message, bot_open_id: Option<&str>) -> Option<String> {
    if m.message_type != "text" {
        return None;
    }
    if m.chat_type != "p2p" {
        let mentioned = bot_open_id
            .is_some_and(|bot| m.mentions.iter().any(|x| x.open_id.as_deref() == Some(bot)));
        if !mentioned {
            return None;
        }
    }
    let mut text = m.text.clone();
    for x in m.mentions.iter().filter(|x| !x.key.is_empty()) {
        text = text.replace(&x.key, "");
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!text.is_empty()).then_some(text)
}

/// The body of `POST /open-apis/im/v1/messages/{id}/reply`: a text message, with a
/// `uuid` from the event so that Feishu drops a second reply to the same event.
pub fn reply_body(event_id: &str, text: &str) -> Value {
    let uuid: String = event_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(50)
        .collect();
    json!({
        "msg_type": "text",
        "content": json!({"text": text}).to_string(),
        "uuid": uuid,
    })
}

/// Open API codes that mean the tenant_access_token must be fetched again.
pub fn token_expired(code: i64) -> bool {
    matches!(code, 99991661 | 99991663 | 99991664 | 99991668 | 99991671)
}

/// Event ids seen within `keep`, at most `max` of them (the oldest go first).
pub struct SeenEvents {
    keep: Duration,
    max: usize,
    at: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl SeenEvents {
    pub fn new(keep: Duration, max: usize) -> SeenEvents {
        SeenEvents {
            keep,
            max,
            at: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// True the first time `id` is offered within `keep`.
    pub fn first(&mut self, id: &str, now: Instant) -> bool {
        while let Some((t, old)) = self.order.front() {
            if now.duration_since(*t) < self.keep && self.order.len() < self.max {
                break;
            }
            if self.at.get(old) == Some(t) {
                self.at.remove(old);
            }
            self.order.pop_front();
        }
        if self.at.contains_key(id) {
            return false;
        }
        self.at.insert(id.to_string(), now);
        self.order.push_back((now, id.to_string()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_event(chat_type: &str, text: &str, mentions: Value) -> Value {
        json!({
            "schema": "2.0",
            "header": {"event_id": "ev-1", "event_type": "im.message.receive_v1", "token": "vt",
                        "create_time": "1700000000000", "app_id": "cli_x", "tenant_key": "t"},
            "event": {
                "sender": {"sender_id": {"open_id": "ou_user"}, "sender_type": "user"},
                "message": {"message_id": "om_1", "chat_id": "oc_1", "chat_type": chat_type,
                            "message_type": "text", "content": json!({"text": text}).to_string(),
                            "mentions": mentions}
            }
        })
    }

    #[test]
    fn encrypted_bodies_open_with_the_encrypt_key() {
        let plain = br#"{"challenge":"c-1","token":"vt","type":"url_verification"}"#;
        let sealed = encrypt("kudryavka", [7; 16], plain);
        assert_eq!(decrypt("kudryavka", &sealed).unwrap(), plain);
        let body = json!({"encrypt": sealed}).to_string();
        let cb = parse(body.as_bytes(), Some("kudryavka")).unwrap();
        assert_eq!(
            cb.event,
            Event::Challenge {
                challenge: "c-1".into()
            }
        );
        assert_eq!(cb.token.as_deref(), Some("vt"));
        assert!(parse(body.as_bytes(), Some("other"))
            .unwrap_err()
            .contains("does not open"));
        assert!(parse(body.as_bytes(), None)
            .unwrap_err()
            .contains("no encryptKey"));
        assert!(decrypt("k", "not base64!").is_err());
        assert!(decrypt("k", "AAAA").is_err());
    }

    // The example of Feishu's documentation: encryptKey "test key", plain "hello world".
    #[test]
    fn feishu_documented_vector() {
        let got = decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=").unwrap();
        assert_eq!(got, b"hello world");
    }

    #[test]
    fn the_signature_is_sha256_hex_of_its_parts() {
        let s = signature("1", "n", "k", b"{}");
        assert_eq!(s.len(), 64);
        assert_eq!(s, signature("1", "n", "k", b"{}"));
        assert_ne!(s, signature("1", "n", "k", b"{ }"));
    }

    #[test]
    fn private_messages_are_answered_and_groups_only_when_the_bot_is_mentioned() {
        let p2p = parse(
            text_event("p2p", "hello", json!([])).to_string().as_bytes(),
            None,
        )
        .unwrap();
        let Event::Message(m) = p2p.event else {
            panic!("{p2p:?}")
        };
        assert_eq!(
            (m.message_id.as_str(), p2p.token.as_deref()),
            ("om_1", Some("vt"))
        );
        assert_eq!(question(&m, None).as_deref(), Some("hello"));

        let at_bot = json!([{"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "weir"}]);
        let group = parse(
            text_event("group", "@_user_1  what is 2+2?", at_bot)
                .to_string()
                .as_bytes(),
            None,
        )
        .unwrap();
        let Event::Message(m) = group.event else {
            panic!()
        };
        assert_eq!(
            question(&m, Some("ou_bot")).as_deref(),
            Some("what is 2+2?")
        );
        assert_eq!(question(&m, Some("ou_other")), None);
        assert_eq!(question(&m, None), None, "the bot's id unknown: quiet");

        let plain_group = parse(
            text_event("group", "chatter", json!([]))
                .to_string()
                .as_bytes(),
            None,
        )
        .unwrap();
        let Event::Message(m) = plain_group.event else {
            panic!()
        };
        assert_eq!(question(&m, None), None);
    }

    #[test]
    fn other_events_and_bad_bodies() {
        let other = json!({"schema": "2.0", "header": {"event_id": "e", "event_type": "im.chat.updated_v1", "token": "vt"}, "event": {}});
        let cb = parse(other.to_string().as_bytes(), None).unwrap();
        assert!(
            matches!(cb.event, Event::Other { ref event_type, .. } if event_type == "im.chat.updated_v1")
        );
        assert!(parse(b"{", None).unwrap_err().contains("not JSON"));
        let bad = json!({"header": {"event_id": "e", "event_type": "im.message.receive_v1"}});
        assert!(parse(bad.to_string().as_bytes(), None).is_err());
    }

    #[test]
    fn a_reply_is_text_with_an_idempotent_uuid() {
        let b = reply_body("5e3702a84e847582be8db7fb73283c02", "4");
        assert_eq!(b["msg_type"], "text");
        assert_eq!(b["content"], r#"{"text":"4"}"#);
        assert_eq!(b["uuid"], "5e3702a84e847582be8db7fb73283c02");
    }

    #[test]
    fn event_ids_are_seen_once_within_the_window_and_memory_is_bounded() {
        let mut seen = SeenEvents::new(Duration::from_secs(60), 3);
        let t = Instant::now();
        assert!(seen.first("a", t));
        assert!(!seen.first("a", t + Duration::from_secs(1)));
        assert!(
            seen.first("a", t + Duration::from_secs(61)),
            "forgotten after the window"
        );
        for id in ["b", "c", "d", "e"] {
            seen.first(id, t + Duration::from_secs(62));
        }
        assert!(seen.at.len() <= 3 && seen.order.len() <= 3);
    }
}
