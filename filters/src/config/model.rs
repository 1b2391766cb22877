//! The YAML file as written by an operator. Field names are the SPEC's configuration
//! contract; unknown keys are errors so a typo never silently does nothing.

use super::units::{Dur, Size};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    /// Model registry seed: prices per 1M tokens (the admin API can add and override).
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    #[serde(default = "default_gateways")]
    pub gateways: Vec<GatewayConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub logs: LogsConfig,
    /// Bot webhooks (A9); more can be added through the admin API.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Mail for new keys (K2); without it imported keys are not mailed.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
}

/// A bot webhook (A9): `POST /bot/{provider}/{name}/webhook/event` on the proxy
/// listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub provider: WebhookProvider,
    pub config: FeishuConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookProvider {
    Feishu,
}

/// A Feishu app's bot, in the names Feishu's console uses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FeishuConfig {
    pub app_id: String,
    pub app_secret: String,
    /// The weir key whose rights, limits and bill the bot's questions use.
    pub api_key: String,
    /// The model asked.
    pub model_id: String,
    /// Checked against every event's token when set.
    #[serde(default)]
    pub verification_token: Option<String>,
    /// Set when the app encrypts its events (and signs them).
    #[serde(default)]
    pub encrypt_key: Option<String>,
    #[serde(default = "feishu_api_base", rename = "api_base")]
    pub api_base: String,
    /// The gateway the questions go through; default `default`, else the first.
    #[serde(default)]
    pub gateway: Option<String>,
}

fn feishu_api_base() -> String {
    "https://open.feishu.cn".into()
}

/// How weir sends mail (K2): one SMTP relay, its TLS and login.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default by `tls`: 25 (`none`), 587 (`starttls`), 465 (`tls`).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, `noreply@example.com` or `weir <noreply@example.com>`.
    pub from: String,
    /// The base URL users point their OpenAI SDK at, named in the mail.
    pub public_url: String,
    /// Attempts after the first for one mail.
    #[serde(default = "default_mail_retries")]
    pub retries: u32,
    /// Wait before the first retry; doubled each time, at most 15 minutes.
    #[serde(default = "default_mail_retry_interval")]
    pub retry_interval: Dur,
    /// One attempt's limit, connection to the server's last answer.
    #[serde(default = "default_mail_timeout")]
    pub timeout: Dur,
}

fn default_mail_retries() -> u32 {
    5
}

fn default_mail_retry_interval() -> Dur {
    Dur::secs(30)
}

fn default_mail_timeout() -> Dur {
    Dur::secs(30)
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }
}

/// `none` (plain, for a relay on the same host), `starttls` (upgrade after
/// connecting) or `tls` (implicit TLS from the first byte).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

/// The call log's retention (A4).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Rows older than this are pruned, in small batches in the background.
    pub keep: Dur,
    /// A failed call's request and error bodies are kept this long.
    pub keep_failed_bodies: Dur,
    /// Each kept body is cut at this size.
    pub max_body: Size,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            keep: Dur::secs(30 * 86_400),
            keep_failed_bodies: Dur::secs(3600),
            max_body: Size(64 * 1024),
        }
    }
}

/// The exact-match response cache (P10).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `[]` (off), `"*"` (every model), `"free"` (models priced 0), or model names;
    /// models with `cache: true` in `models:` are cached too.
    pub models: CacheModels,
    pub ttl: Dur,
    /// Different answers kept per request; a request gets one of them at random.
    pub max_per_request: u32,
    /// Memory for cached answers; the least recently used go first.
    pub max_bytes: Size,
    /// Answers larger than this are not cached.
    pub max_entry_bytes: Size,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            models: CacheModels::Names(Vec::new()),
            ttl: Dur::secs(3600),
            max_per_request: 1,
            max_bytes: Size(64 * 1024 * 1024),
            max_entry_bytes: Size(1024 * 1024),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheModels {
    All,
    Free,
    Names(Vec<String>),
}

impl<'de> Deserialize<'de> for CacheModels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::One(s) if s == "*" => Ok(CacheModels::All),
            Raw::One(s) if s == "free" => Ok(CacheModels::Free),
            Raw::One(s) => Err(serde::de::Error::custom(format!(
                "`{s}`: use \"*\", \"free\" or a list of model names"
            ))),
            Raw::Many(v) => Ok(CacheModels::Names(v)),
        }
    }
}

impl Serialize for CacheModels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CacheModels::All => s.serialize_str("*"),
            CacheModels::Free => s.serialize_str("free"),
            CacheModels::Names(v) => v.serialize(s),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The OpenAI-compatible listener.
    pub listen: String,
    /// Admin API and `/metrics`.
    pub admin_listen: String,
    /// Bootstrap admin credential; empty or absent disables `/admin/*`.
    pub admin_key: Option<String>,
    pub max_body: Size,
    /// Largest body passed on as it streams (uploads, `passthrough`); the part
    /// read to find an upload's `model` is held within `max_body`.
    pub max_upload: Size,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header: Size,
    /// Worker threads of the proxy service; 0 means one per CPU.
    pub threads: usize,
    /// How long a graceful stop waits for requests in flight.
    pub grace_period: Dur,
    pub backoff: BackoffConfig,
    pub health: HealthConfig,
    /// How long a resolved upstream address is reused.
    pub dns_ttl: Dur,
    pub log_format: LogFormat,
    /// PEM bundle that verifies `https` upstreams instead of the system roots
    /// (which also honour `SSL_CERT_FILE` / `SSL_CERT_DIR`).
    pub ca_file: Option<String>,
    /// Also serve the manager's user view (never its admin pages) at `/manager/`
    /// on the proxy listener, for operators who keep the admin port private.
    pub public_manager: bool,
    /// Load balancers and proxies in front of weir (CIDRs or addresses): only a
    /// peer among them is believed about the client (`X-Forwarded-For`,
    /// `Forwarded`), for `ip:` rules and the call log.
    pub trusted_proxies: Vec<String>,
    /// One deadline for a whole request, every attempt and the answer's stream
    /// included (a gateway's `timeout` overrides it): failover never multiplies a
    /// client's wait.
    pub request_timeout: Dur,
    /// TLS on `listen` (and on `admin_listen` with `admin: true`), HTTP/2 by ALPN.
    pub tls: Option<TlsConfig>,
    /// Cleartext HTTP/2 with prior knowledge on `listen` (h2c), beside HTTP/1.1.
    pub h2c: bool,
}

/// `server.tls`: PEM files, reread when they change (rotation without restart).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Also serve the admin listener over TLS.
    #[serde(default)]
    pub admin: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:8081".into(),
            admin_key: None,
            max_body: Size(32 * 1024 * 1024),
            max_upload: Size(1024 * 1024 * 1024),
            max_header: Size(64 * 1024),
            threads: 0,
            grace_period: Dur::secs(10),
            backoff: BackoffConfig::default(),
            health: HealthConfig::default(),
            dns_ttl: Dur::secs(60),
            log_format: LogFormat::Text,
            ca_file: None,
            public_manager: false,
            trusted_proxies: Vec::new(),
            request_timeout: Dur::secs(600),
            tls: None,
            h2c: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Keys, groups, models, usage; created and migrated on start.
    pub sqlite: String,
    /// How often usage and counters are written (at most this much is lost on `kill -9`).
    pub flush_interval: Dur,
    /// Encrypts provider keys of channels stored through the admin API (A1); give it
    /// from the environment (`${WEIR_SECRET_KEY}`). Without it such keys are refused.
    pub secret_key: Option<String>,
    /// Shared counting for several instances (S1): rate limits, quotas, money and
    /// the response cache on one Redis. `redis://…`, `rediss://…` or `unix:///…`,
    /// or a map with `url`, `timeout` and `prefix`.
    #[serde(deserialize_with = "url_or_map")]
    pub redis: Option<RedisConfig>,
    /// The store on PostgreSQL instead of `sqlite` (S1): `postgres://…`, or a map
    /// with `url` and `timeout` (per statement).
    #[serde(deserialize_with = "url_or_map")]
    pub postgres: Option<PostgresConfig>,
}

/// A backend given as its URL alone, or as a map with the URL and settings.
pub trait FromUrl: Sized {
    fn from_url(url: String) -> Self;
}

fn url_or_map<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + FromUrl,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form<T> {
        Url(String),
        Full(T),
    }
    Ok(Option::<Form<T>>::deserialize(d)?.map(|f| match f {
        Form::Url(url) => T::from_url(url),
        Form::Full(full) => full,
    }))
}

/// `storage.postgres`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: String,
    #[serde(default = "default_postgres_timeout")]
    pub timeout: Dur,
}

impl FromUrl for PostgresConfig {
    fn from_url(url: String) -> Self {
        PostgresConfig {
            url,
            timeout: default_postgres_timeout(),
        }
    }
}

fn default_postgres_timeout() -> Dur {
    Dur::secs(5)
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sqlite: "data/weir.db".into(),
            flush_interval: Dur::millis(250),
            secret_key: None,
            redis: None,
            postgres: None,
        }
    }
}

/// `storage.redis`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// The most one Redis call may cost a request before weir counts locally.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
    /// Prepended to every key, so several deployments can share one Redis.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
}

impl FromUrl for RedisConfig {
    fn from_url(url: String) -> Self {
        RedisConfig {
            url,
            timeout: RedisConfig::DEFAULT_TIMEOUT,
            prefix: default_redis_prefix(),
        }
    }
}

impl RedisConfig {
    pub const DEFAULT_TIMEOUT: Dur = Dur::millis(5);

    /// The URL with any password replaced, for logs and `/admin/config`.
    pub fn redacted_url(&self) -> String {
        hide_password(&self.url)
    }
}

/// A `scheme://user:password@host…` URL with the password shown as `***`, in
/// the user part and in a `password=` query parameter alike.
pub fn hide_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match (base.split_once("://"), base.rfind('@')) {
        (Some((scheme, _)), Some(at)) if at > scheme.len() + 3 => {
            let creds = &base[scheme.len() + 3..at];
            let user = creds.split_once(':').map_or(creds, |(u, _)| u);
            format!("{scheme}://{user}:***@{}", &base[at + 1..])
        }
        _ => base.to_string(),
    };
    let Some(query) = query else {
        return base;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

fn default_redis_timeout() -> Dur {
    RedisConfig::DEFAULT_TIMEOUT
}

fn default_redis_prefix() -> String {
    "weir:".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    /// Price per 1M prompt tokens.
    #[serde(default)]
    pub price_in: f64,
    /// Price per 1M completion tokens.
    #[serde(default)]
    pub price_out: f64,
    #[serde(default)]
    pub multimodal: bool,
    #[serde(default)]
    pub cache: bool,
    /// Who serves it: a channel type (`openai`, `anthropic`…) or a channel's name.
    #[serde(default)]
    pub provider: Option<String>,
    /// Free-form settings kept with the model.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Exponential backoff between retries on one channel: `base * 2^n`, capped at `max`,
/// with full jitter over the upper half.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub base: Dur,
    pub max: Dur,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Dur::millis(200),
            max: Dur::secs(5),
        }
    }
}

/// Passive health: `failures` consecutive failures suspend a channel or key for
/// `cooldown`; each failed trial doubles it up to `max_cooldown`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub failures: u32,
    pub cooldown: Dur,
    pub max_cooldown: Dur,
    /// How often suspended channels are probed in the background (A5).
    pub probe: Dur,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            failures: 3,
            cooldown: Dur::secs(30),
            max_cooldown: Dur::secs(300),
            probe: Dur::secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelType {
    Openai,
    Azure,
    Anthropic,
    Gemini,
    Mock,
}

impl ChannelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::Openai => "openai",
            ChannelType::Azure => "azure",
            ChannelType::Anthropic => "anthropic",
            ChannelType::Gemini => "gemini",
            ChannelType::Mock => "mock",
        }
    }

    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ChannelType::Openai => Some("https://api.openai.com"),
            ChannelType::Anthropic => Some("https://api.anthropic.com"),
            ChannelType::Gemini => Some("https://generativelanguage.googleapis.com"),
            ChannelType::Azure | ChannelType::Mock => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ChannelType,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub model_mapping: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "one")]
    pub weight: u32,
    /// Caller groups that may use the channel; absent: every group.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Extra attempts on this channel after the first.
    #[serde(default = "one")]
    pub retries: u32,
    /// The wait before each retry on this channel; absent: `server.backoff`.
    #[serde(default)]
    pub backoff: Option<BackoffConfig>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// A forward proxy the channel's requests go through: `http://[user:pass@]host:port`
    /// (absolute-form requests for `http` upstreams, a CONNECT tunnel for `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// `azure`: the `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `anthropic`: `max_tokens` when the request names none (the Messages API needs it).
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
    /// Starts out of rotation, as health's suspension: a channel test with
    /// `readmit`, the background probe or the trial after the cooldown lets it back
    /// in. An import gives this to One API's auto-disabled channels (status 3).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect: Dur,
    /// Until the response header (time to first token for most servers).
    pub first_byte: Dur,
    /// The whole exchange, stream included.
    pub total: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Dur::secs(10),
            first_byte: Dur::secs(60),
            total: Dur::secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub name: String,
    pub path: String,
    /// The models this gateway serves; absent means every configured model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub active: bool,
    /// RFC 3339 time after which the gateway answers "gateway expired".
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Extra attempts for the whole request across channels; absent means every
    /// candidate gets its own `retries`.
    #[serde(default)]
    pub retries: Option<u32>,
    /// The deadline of a whole request across its attempts, stream included;
    /// absent: `server.request_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Absent: an open gateway (no key asked).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Total tokens (prompt + completion) the gateway may use: a number or `no-limit`.
    #[serde(default)]
    pub token_quota: Quota,
    /// `ingress:N/minute|hour|day`, `secret:N/minute|hour|day`, or `no-limit`.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// `ip:CIDR`, `secret:REGEX`, `time:HH:MM-HH:MM`; when set, only matches pass.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    /// The last user message becomes this text with `{{query}}` replaced by it.
    #[serde(default)]
    pub prompt_template: Option<String>,
    /// `"key": [old, new]`: where the body's value at `key` (dotted for nested
    /// fields) is `old`, it becomes `new`.
    #[serde(default)]
    pub param_map: indexmap::IndexMap<String, (serde_json::Value, serde_json::Value)>,
    /// `"key": value`: the body's value at `key` is set to `value`.
    #[serde(default)]
    pub param_fixed: indexmap::IndexMap<String, serde_json::Value>,
    /// Data masking: findings replaced by placeholders before the request leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<MaskingConfig>,
    /// Content safety: deny rules and moderation on requests and answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyConfig>,
    /// The channel that serves what names no model: `GET`/`DELETE` (files,
    /// batches), and uploads and `POST`s without a `model` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<String>,
    /// Deep thinking for requests that do not say (`reasoning_effort`): `none`,
    /// `minimal`, `low`, `medium` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<crate::adapters::features::Effort>,
    /// Web search for requests that do not ask (`web_search_options`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub web_search: bool,
}

/// `gateways[].safety`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// Keywords (ASCII case ignored) that refuse a request or stop an answer.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Regular expressions doing the same.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Check what clients send.
    #[serde(default = "yes")]
    pub requests: bool,
    /// Check what models answer (chat and completions, streams included).
    #[serde(default = "yes")]
    pub answers: bool,
    /// Bytes of a streamed text already passed that a check looks back over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<ModerationConfig>,
}

/// `gateways[].safety.moderation`: an endpoint in OpenAI's moderation shape.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationConfig {
    /// An `openai` channel: its base URL, keys and proxy are used.
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default = "default_moderation_timeout")]
    pub timeout: Dur,
    /// `closed` (refuse when the endpoint cannot judge) or `open`.
    #[serde(default)]
    pub on_error: crate::safety::OnError,
    /// Only these categories refuse; empty: the endpoint's `flagged`.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Also judge JSON answers before they go out (streams are not).
    #[serde(default)]
    pub answers: bool,
}

fn default_moderation_timeout() -> Dur {
    Dur::secs(3)
}

/// `gateways[].masking`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// `email`, `phone`, `cn_id`, `bank_card`, `ipv4`, `secret`, or `all`.
    #[serde(default)]
    pub detectors: Vec<String>,
    /// The operator's own patterns, each with a name its placeholder is made of.
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    /// Put the originals back in the answer (streams included).
    #[serde(default)]
    pub restore: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    pub pattern: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quota {
    #[default]
    NoLimit,
    Tokens(u64),
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Quota::Tokens(n)),
            Raw::S(s) if s == "no-limit" => Ok(Quota::NoLimit),
            Raw::S(s) => s.parse().map(Quota::Tokens).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{s}` is neither a number of tokens nor `no-limit`"
                ))
            }),
        }
    }
}

impl Serialize for Quota {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Quota::NoLimit => s.serialize_str("no-limit"),
            Quota::Tokens(n) => s.serialize_u64(*n),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// The key must be one of the keys in the store (kept hashed).
    Database,
    /// The key must match `regex`.
    Regex,
    /// The key must be a JWT that verifies with the gateway's secret or public key.
    Jwt,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub method: AuthMethod,
    /// `header:NAME` (a `Bearer ` prefix is stripped), `body:FIELD`, `arg:NAME`.
    #[serde(default = "default_key_from")]
    pub key_from: String,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
}

fn default_key_from() -> String {
    "header:Authorization".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HMAC secret (HS256/384/512).
    #[serde(default)]
    pub secret: Option<String>,
    /// RSA or EC public key (RS256/ES256): PEM text, or a path to a PEM file.
    #[serde(default)]
    pub public_key: Option<String>,
    /// The algorithms accepted; a token with any other `alg` is refused.
    pub algorithms: Vec<String>,
    /// The claim that names the caller for limits and usage.
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// A claim naming the caller's group (default group `default`).
    #[serde(default)]
    pub group_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default)]
    pub leeway: Option<Dur>,
    /// When set, the token's `aud` must contain it; when not, `aud` is not checked.
    #[serde(default)]
    pub audience: Option<String>,
    /// When set, the token's `iss` must equal it.
    #[serde(default)]
    pub issuer: Option<String>,
}

fn default_identity_claim() -> String {
    "sub".into()
}

fn default_gateways() -> Vec<GatewayConfig> {
    vec![GatewayConfig {
        name: "default".into(),
        path: "/v1".into(),
        models: None,
        active: true,
        expires_at: None,
        retries: None,
        timeout: None,
        auth: None,
        token_quota: Quota::NoLimit,
        rate_limits: Vec::new(),
        allow: Vec::new(),
        deny: Vec::new(),
        prompt_template: None,
        param_map: indexmap::IndexMap::new(),
        param_fixed: indexmap::IndexMap::new(),
        masking: None,
        safety: None,
        passthrough: None,
        thinking: None,
        web_search: false,
    }]
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}
