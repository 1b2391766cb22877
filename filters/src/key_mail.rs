//! The mail a new key goes out in (K2), and when a failed one is tried again. Plain
//! text, English then Chinese, so it reads in every client and survives every relay.

use std::time::Duration;

/// One key to mail: what the message needs, nothing else.
#[derive(Clone, PartialEq)]
pub struct KeyMail {
    pub key_id: i64,
    pub name: String,
    pub email: String,
    pub key: String,
}

// The secret must not reach a log line through a `{:?}`.
impl std::fmt::Debug for KeyMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMail")
            .field("key_id", &self.key_id)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// The subject and body of the mail for `m`, naming the base URL to call.
pub fn compose(m: &KeyMail, public_url: &str) -> (String, String) {
    let url = public_url.trim_end_matches('/');
    let subject = "Your API key / 您的 API 密钥".to_string();
    let body = format!(
        "Hello {name},\n\
         \n\
         An API key has been created for you.\n\
         \n\
         API key:  {key}\n\
         Base URL: {url}\n\
         \n\
         Use them with any OpenAI SDK (base_url and api_key), or:\n\
         \n\
         curl {url}/chat/completions \\\n  \
         -H \"Authorization: Bearer {key}\" \\\n  \
         -H \"Content-Type: application/json\" \\\n  \
         -d '{{\"model\": \"MODEL\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n\
         \n\
         Keep the key to yourself; whoever has it spends on your account.\n\
         \n\
         ----\n\
         \n\
         {name}，您好：\n\
         \n\
         已为您创建 API 密钥。\n\
         \n\
         API 密钥：{key}\n\
         接口地址：{url}\n\
         \n\
         在任意 OpenAI SDK 中填入 base_url 与 api_key 即可使用，命令行示例见上文。\n\
         请妥善保管密钥，持有者即可使用您的额度。\n",
        name = m.name,
        key = m.key,
    );
    (subject, body)
}

/// The wait before retry `n` (1-based): `first`, doubled each time, never more than
/// 15 minutes.
pub fn retry_delay(first: Duration, n: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(15 * 60);
    let factor = 1u32 << n.saturating_sub(1).min(16);
    first.saturating_mul(factor).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> KeyMail {
        KeyMail {
            key_id: 7,
            name: "Ann".into(),
            email: "ann@example.com".into(),
            key: "sk-weir-secret".into(),
        }
    }

    #[test]
    fn the_mail_names_key_and_base_url_in_both_languages() {
        let (subject, body) = compose(&ann(), "https://llm.example.com/v1/");
        assert!(subject.contains("API key") && subject.contains("密钥"));
        assert_eq!(body.matches("sk-weir-secret").count(), 3, "{body}");
        assert!(body.contains("Base URL: https://llm.example.com/v1\n"));
        assert!(body.contains("接口地址：https://llm.example.com/v1\n"));
        assert!(body.contains("curl https://llm.example.com/v1/chat/completions"));
        assert!(body.starts_with("Hello Ann,"));
        assert!(body.contains("Ann，您好"));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", ann());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("ann@example.com"));
    }

    #[test]
    fn retries_back_off_and_stop_growing() {
        let s = Duration::from_secs(30);
        assert_eq!(retry_delay(s, 1), s);
        assert_eq!(retry_delay(s, 2), s * 2);
        assert_eq!(retry_delay(s, 3), s * 4);
        assert_eq!(retry_delay(s, 10), Duration::from_secs(900));
        assert_eq!(retry_delay(s, u32::MAX), Duration::from_secs(900));
    }
}
