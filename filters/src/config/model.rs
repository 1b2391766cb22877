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
    pub channels: Vec<ChannelConfig>,
    #[serde(default = "default_gateways")]
    pub gateways: Vec<GatewayConfig>,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:8081".into(),
            admin_key: None,
            max_body: Size(32 * 1024 * 1024),
            threads: 0,
            grace_period: Dur::secs(10),
            backoff: BackoffConfig::default(),
            health: HealthConfig::default(),
            dns_ttl: Dur::secs(60),
            log_format: LogFormat::Text,
            ca_file: None,
        }
    }
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
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            failures: 3,
            cooldown: Dur::secs(30),
            max_cooldown: Dur::secs(300),
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
    #[serde(default = "default_groups")]
    pub groups: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Extra attempts on this channel after the first.
    #[serde(default = "one")]
    pub retries: u32,
    #[serde(default)]
    pub timeouts: Timeouts,
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
}

fn default_gateways() -> Vec<GatewayConfig> {
    vec![GatewayConfig {
        name: "default".into(),
        path: "/v1".into(),
        models: None,
        active: true,
        expires_at: None,
        retries: None,
    }]
}

fn default_groups() -> Vec<String> {
    vec!["default".into()]
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}
