//! Configuration: the YAML contract (`model`), `${ENV}` substitution (`env`), units
//! (`units`), and the validated, indexed form the proxy reads per request (`Runtime`).
//!
//! A file is parsed and validated whole; every problem is reported with the path of
//! the field (`channels[2].weight: ...`), and nothing is swapped in unless all is well.

mod build;
pub mod env;
pub mod model;
pub mod units;

pub use model::*;

use crate::access::AccessRule;
use crate::auth::{JwtVerifier, KeyPosition};
use crate::limits::RateRule;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Every problem found in one file, each prefixed with the path of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(msg: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![msg.into()],
        }
    }
}

/// Parses YAML text (after `${ENV}` substitution from the process environment).
pub fn parse(text: &str) -> Result<Runtime, ConfigError> {
    parse_with_env(text, |k| std::env::var(k).ok())
}

/// Parses and checks the file alone, for a snapshot with the store's entities too.
pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    file_with_env(text, |k| std::env::var(k).ok())
}

pub fn parse_with_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Runtime, ConfigError> {
    Runtime::build(file_with_env(text, lookup)?)
}

fn file_with_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<FileConfig, ConfigError> {
    let text = env::substitute(text, lookup).map_err(ConfigError::one)?;
    let de = serde_yaml::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            ConfigError::one(inner)
        } else {
            ConfigError::one(format!("{path}: {inner}"))
        }
    })
}

/// Where a channel's requests go, resolved from `base_url` once at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path before `/v1`, without a trailing slash (often empty).
    pub base_path: String,
    /// `host` or `host:port` as the `Host` header wants it.
    pub authority: String,
    /// `scheme://authority/base_path`, made once: the call log names it per request.
    pub url: std::sync::Arc<str>,
}

impl Upstream {
    /// Accepts `http://h:8000`, `http://h:8000/`, `http://h:8000/v1`: all reach `/v1/...`.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => {
                return Err(format!(
                    "scheme `{other}` is not supported, use http or https"
                ))
            }
            None => {
                return Err(format!(
                    "`{url}` has no scheme; write http://… or https://…"
                ))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("`{url}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.query().is_some() {
            return Err(format!("`{url}` must not carry a query string"));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let mut base_path = uri.path().trim_end_matches('/').to_string();
        if base_path.ends_with("/v1") {
            base_path.truncate(base_path.len() - 3);
        }
        let default_port = if tls { 443 } else { 80 };
        let host_for_header = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = if port == default_port {
            host_for_header
        } else {
            format!("{host_for_header}:{port}")
        };
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{authority}{base_path}").into();
        Ok(Upstream {
            tls,
            host,
            port,
            base_path,
            authority,
            url,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelType,
    /// `None` only for `mock`.
    pub upstream: Option<Upstream>,
    pub keys: Vec<String>,
    pub priority: i32,
    pub weight: u32,
    /// `None`: every caller group.
    pub groups: Option<Vec<String>>,
    pub retries: u32,
    /// `(base, max)` of the wait before a retry here; `None`: the server's.
    pub backoff: Option<(Duration, Duration)>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub total_timeout: Duration,
    /// `proxy`: the forward proxy requests go through.
    pub proxy: Option<ForwardProxy>,
    /// Client-facing names this channel answers to, in a stable order.
    pub exposed: Vec<String>,
    /// `azure`: `api-version`.
    pub api_version: Option<String>,
    /// `anthropic`: `max_tokens` when a request names none.
    pub default_max_tokens: Option<u32>,
    /// A disabled channel is listed but serves nothing.
    pub enabled: bool,
    /// Enters the snapshot suspended (see `ChannelConfig::suspended`).
    pub starts_suspended: bool,
    pub source: Source,
}

/// Where an entity is defined: the YAML file (read-only through the API) or the
/// store (created through the admin API, an import or docking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Store,
}

/// Channels and gateways kept in the store (A1), merged with the file's into one
/// snapshot. Their keys are in clear here: the store decrypts them on load.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub channels: Vec<ChannelConfig>,
    pub gateways: Vec<GatewayConfig>,
    pub webhooks: Vec<WebhookConfig>,
}

impl Channel {
    pub fn serves_group(&self, group: &str) -> bool {
        self.groups
            .as_ref()
            .is_none_or(|g| g.iter().any(|x| x == group))
    }
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub name: String,
    /// Path prefix without a trailing slash, e.g. `/v1` or `/llm/api/team-a/v1`.
    pub path: String,
    pub models: Option<HashSet<String>>,
    pub active: bool,
    pub expires_at: Option<SystemTime>,
    pub retries: Option<u32>,
    /// `gateways[].timeout`; `None`: the server's `request_timeout`.
    pub timeout: Option<Duration>,
    /// `None`: an open gateway.
    pub auth: Option<GatewayAuth>,
    pub token_quota: Option<u64>,
    pub rate_rules: Vec<RateRule>,
    pub allow: Vec<AccessRule>,
    pub deny: Vec<AccessRule>,
    /// G6: contains `{{query}}`.
    pub prompt_template: Option<String>,
    pub param_map: indexmap::IndexMap<String, (serde_json::Value, serde_json::Value)>,
    pub param_fixed: indexmap::IndexMap<String, serde_json::Value>,
    /// `masking`, compiled.
    pub masking: Option<std::sync::Arc<crate::masking::Masker>>,
    /// `safety`, compiled.
    pub safety: Option<std::sync::Arc<crate::safety::Safety>>,
    /// `passthrough`: the channel's name and its place in the snapshot's list.
    pub passthrough: Option<(String, usize)>,
    /// `thinking`: the effort for requests that name none.
    pub thinking: Option<crate::adapters::features::Effort>,
    /// `web_search`: search for requests that do not ask.
    pub web_search: bool,
    /// The rewrite rules above in one string (part of cache keys).
    pub rewrite_digest: String,
    pub source: Source,
}

/// The `param_map` path that names the model: mapped before routing (G7).
pub const MODEL_PATH: &str = "model";

impl Gateway {
    /// G7 on `model`: the name a request for `model` is routed, granted, priced
    /// and cached as (the seed's `"model": ["deepseek", "deepseek-qwen2-7b"]`
    /// sends every `deepseek` request to the `deepseek-qwen2-7b` service).
    pub fn mapped_model(&self, model: &str) -> Option<&str> {
        let (old, new) = self.param_map.get(MODEL_PATH)?;
        (old.as_str() == Some(model))
            .then(|| new.as_str())
            .flatten()
    }

    /// Whether the gateway rewrites request bodies (G6, G7).
    pub fn rewrites(&self) -> bool {
        self.prompt_template.is_some() || !self.param_map.is_empty() || !self.param_fixed.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct GatewayAuth {
    pub position: KeyPosition,
    pub method: AuthCheck,
}

#[derive(Debug, Clone)]
pub enum AuthCheck {
    Database,
    Regex(regex::Regex),
    Jwt(Arc<JwtVerifier>),
}

/// A model's price list entry (per 1M tokens).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelPrice {
    pub price_in: f64,
    pub price_out: f64,
    pub multimodal: bool,
}

/// One way to serve a model: a channel and the model name it is sent upstream as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub channel: usize,
    pub upstream_model: String,
}

/// The validated configuration, indexed for the request path. Swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The YAML file as parsed: what ops wrote, without the stored entities.
    pub file: FileConfig,
    /// The entities from the store this snapshot was built with.
    pub stored: Stored,
    /// Longest path first, so the first prefix that matches is the most specific.
    pub gateways: Vec<Gateway>,
    pub channels: Vec<Channel>,
    models: HashMap<String, Vec<Route>>,
    /// Channels listing the `default` model, with their `default>x` target if any.
    catch_all: Vec<(usize, Option<String>)>,
    /// Prices from the file's `models:` (the store may add and override).
    pub prices: HashMap<String, ModelPrice>,
    /// `None`: the cache is off.
    pub cache: Option<CachePolicy>,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Which answers are cached, and how (P10).
#[derive(Debug, Clone)]
pub struct CachePolicy {
    pub models: CacheModels,
    /// Models with `cache: true` in `models:`.
    pub flagged: HashSet<String>,
    pub ttl: Duration,
    pub max_per_request: u32,
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
}

/// The parsed `a>b` / `!a>b` line of a channel's `model_mapping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingRule {
    pub from: String,
    pub to: String,
    /// `!a>b`: `b` itself is no longer offered by the channel.
    pub hide_target: bool,
}

impl MappingRule {
    pub fn parse(line: &str) -> Result<MappingRule, String> {
        let line = line.trim();
        let (hide_target, rest) = match line.strip_prefix('!') {
            Some(r) => (true, r),
            None => (false, line),
        };
        let (from, to) = rest
            .split_once('>')
            .ok_or_else(|| format!("`{line}` is not `source>target` or `!source>target`"))?;
        let (from, to) = (from.trim(), to.trim());
        if from.is_empty() || to.is_empty() || to.contains('>') {
            return Err(format!(
                "`{line}` is not `source>target` or `!source>target`"
            ));
        }
        Ok(MappingRule {
            from: from.to_string(),
            to: to.to_string(),
            hide_target,
        })
    }
}

/// The model name that stands for "any model no channel names explicitly".
pub const CATCH_ALL_MODEL: &str = "default";

impl Runtime {
    /// Validates a whole file and indexes it for the request path; every problem
    /// found is reported, each with its field path.
    pub fn build(file: FileConfig) -> Result<Runtime, ConfigError> {
        build::runtime(file, Stored::default())
    }

    /// The name channel `index` is sent for the client-facing `model` (its mapping),
    /// or `model` itself when it has none.
    pub fn upstream_name(&self, index: usize, model: &str) -> String {
        self.models
            .get(model)
            .and_then(|routes| routes.iter().find(|r| r.channel == index))
            .map(|r| r.upstream_model.clone())
            .unwrap_or_else(|| model.to_string())
    }

    /// Whether a model's `provider` names a channel type or one of this snapshot's
    /// channels.
    pub fn check_provider(&self, provider: &str) -> Result<(), String> {
        let channels: Vec<ChannelConfig> = self
            .file
            .channels
            .iter()
            .chain(&self.stored.channels)
            .cloned()
            .collect();
        build::check_provider(provider, &channels)
    }

    /// The file's entities and the store's, in one snapshot; a name in both is an
    /// error naming both places.
    pub fn build_with(file: FileConfig, stored: Stored) -> Result<Runtime, ConfigError> {
        build::runtime(file, stored)
    }

    pub fn server(&self) -> &ServerConfig {
        &self.file.server
    }

    /// The webhook named `name`, from the file or the store.
    pub fn webhook(&self, name: &str) -> Option<(&WebhookConfig, Source)> {
        let file = self.file.webhooks.iter().map(|w| (w, Source::File));
        let stored = self.stored.webhooks.iter().map(|w| (w, Source::Store));
        file.chain(stored).find(|(w, _)| w.name == name)
    }

    /// The gateway a webhook's questions go through: the one it names, else
    /// `default`, else the first.
    pub fn webhook_gateway(&self, w: &WebhookConfig) -> Option<&Gateway> {
        let named = |n: &str| self.gateways.iter().find(|g| g.name == n);
        match &w.config.gateway {
            Some(g) => named(g),
            None => named("default").or(self.gateways.first()),
        }
    }

    /// The gateway whose path prefix matches, and the rest of the path after it
    /// (`/chat/completions`). A prefix matches only at a segment boundary.
    pub fn gateway_for<'a, 'p>(&'a self, path: &'p str) -> Option<(&'a Gateway, &'p str)> {
        self.gateways.iter().find_map(|g| {
            let rest = path.strip_prefix(g.path.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((g, rest))
        })
    }

    /// Ways to serve `model` for a caller in `group`, and the label the model is
    /// counted under (the configured name, or `default` for the catch-all), or `None`
    /// when nothing serves it.
    pub fn routes(
        &self,
        gateway: &Gateway,
        model: &str,
        group: &str,
    ) -> Option<(Vec<Route>, String)> {
        if let Some(allowed) = &gateway.models {
            if !allowed.contains(model) && !allowed.contains(CATCH_ALL_MODEL) {
                return None;
            }
        }
        let in_group = |r: &Route| self.channels[r.channel].serves_group(group);
        if let Some(routes) = self.models.get(model) {
            let routes: Vec<Route> = routes.iter().filter(|r| in_group(r)).cloned().collect();
            if !routes.is_empty() {
                return Some((routes, model.to_string()));
            }
        }
        let routes: Vec<Route> = self
            .catch_all
            .iter()
            .map(|(channel, target)| Route {
                channel: *channel,
                upstream_model: target.clone().unwrap_or_else(|| model.to_string()),
            })
            .filter(|r| in_group(r))
            .collect();
        (!routes.is_empty()).then(|| (routes, CATCH_ALL_MODEL.to_string()))
    }

    /// Client-facing model names a caller in `group` can use on `gateway`, sorted.
    pub fn list_models(&self, gateway: &Gateway, group: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .models
            .iter()
            .filter(|(_, routes)| {
                routes
                    .iter()
                    .any(|r| self.channels[r.channel].serves_group(group))
            })
            .map(|(m, _)| m.clone())
            .filter(|m| {
                gateway
                    .models
                    .as_ref()
                    .is_none_or(|allowed| allowed.contains(m))
            })
            .collect();
        out.sort();
        out
    }

    /// The file as JSON with every secret replaced, for `GET /admin/config`.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.file).unwrap_or(serde_json::Value::Null);
        let hide = |v: &mut serde_json::Value, pointer: &str| {
            if let Some(secret) = v.pointer_mut(pointer) {
                if !secret.is_null() {
                    *secret = serde_json::Value::String(REDACTED.into());
                }
            }
        };
        for secret in ["/server/admin_key", "/storage/secret_key", "/smtp/password"] {
            hide(&mut v, secret);
        }
        if let (Some(url), Some(redis)) = (
            v.pointer_mut("/storage/redis/url"),
            &self.file.storage.redis,
        ) {
            *url = serde_json::Value::String(redis.redacted_url());
        }
        if let Some(url) = v.pointer_mut("/storage/postgres/url") {
            if let Some(u) = url.as_str() {
                *url = serde_json::Value::String(hide_password(u));
            }
        }
        if let Some(hooks) = v.get_mut("webhooks").and_then(|c| c.as_array_mut()) {
            for w in hooks {
                for field in ["appSecret", "apiKey", "encryptKey", "verificationToken"] {
                    hide(w, &format!("/config/{field}"));
                }
            }
        }
        if let Some(gateways) = v.get_mut("gateways").and_then(|c| c.as_array_mut()) {
            for g in gateways {
                if let Some(secret) = g.pointer_mut("/auth/jwt/secret") {
                    if !secret.is_null() {
                        *secret = serde_json::Value::String(REDACTED.into());
                    }
                }
            }
        }
        if let Some(channels) = v.get_mut("channels").and_then(|c| c.as_array_mut()) {
            for c in channels {
                if let Some(url) = c.get_mut("proxy") {
                    if let Some(u) = url.as_str() {
                        *url = serde_json::Value::String(hide_password(u));
                    }
                }
                if let Some(keys) = c.get_mut("keys").and_then(|k| k.as_array_mut()) {
                    for k in keys.iter_mut() {
                        *k = serde_json::Value::String(REDACTED.into());
                    }
                }
            }
        }
        v
    }
}

pub const REDACTED: &str = "[redacted]";

/// A channel's forward proxy (P2), parsed from `http://[user:pass@]host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardProxy {
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` when the URL carries credentials (`Basic …`).
    pub authorization: Option<String>,
    /// The URL with its password hidden, for logs and errors.
    pub shown: String,
}

/// Never the credentials: a channel printed for debugging shows the proxy hidden.
impl std::fmt::Debug for ForwardProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl ForwardProxy {
    pub fn parse(url: &str) -> Result<ForwardProxy, String> {
        use base64::Engine as _;
        let url = url.trim();
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            "must be an `http://host:port` proxy (https upstreams go through it by CONNECT)"
                .to_string()
        })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err("a proxy URL has no path or query".into());
        }
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            // `[::1]` alone: the colons are the address's, not a port's.
            Some(_) if hostport.starts_with('[') && hostport.ends_with(']') => (hostport, 80),
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`{p}` is not a port"))?;
                (h, port)
            }
            _ => (hostport, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the proxy URL names no host".into());
        }
        // user and password are percent-encoded in a URL (`p%40ss` for `p@ss`).
        let authorization = creds.map(|c| {
            let (user, password) = c.split_once(':').unwrap_or((c, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let pair = format!("{}:{}", decode(user), decode(password));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(ForwardProxy {
            host: host.to_string(),
            port,
            authorization,
            shown: model::hide_password(url),
        })
    }
}

/// A key's public hint for logs and the admin API: never more than its last 4 chars,
/// and nothing at all for short keys.
pub fn key_hint(key: &str) -> String {
    let n = key.chars().count();
    if n >= 16 {
        let tail: String = key.chars().skip(n - 4).collect();
        format!("…{tail}")
    } else {
        "…".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_proxies_parse_with_credentials_hidden() {
        let p = ForwardProxy::parse("http://u:pa%3Ass@proxy.corp:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        // `u:pa:ss` once decoded.
        assert_eq!(p.authorization.as_deref(), Some("Basic dTpwYTpzcw=="));
        assert!(!format!("{p:?}").contains("pa"), "{p:?}");
        assert_eq!(ForwardProxy::parse("http://[::1]").unwrap().port, 80);
        assert_eq!(p.shown, "http://u:***@proxy.corp:3128/");
        let p = ForwardProxy::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.authorization),
            ("::1", 8080, None)
        );
        assert_eq!(ForwardProxy::parse("http://proxy").unwrap().port, 80);
        for bad in [
            "https://p:1",
            "socks5://p:1",
            "http://p:0",
            "http://p:x",
            "http://:1",
            "http://p:1/path",
        ] {
            assert!(ForwardProxy::parse(bad).is_err(), "{bad}");
        }
        let e = parse("channels:\n  - {name: a, type: openai, base_url: 'http://h', models: [m], proxy: 'ftp://p'}\n")
            .unwrap_err();
        assert!(
            e.problems[0].starts_with("channels[0].proxy: must be an `http://"),
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn backends_are_a_url_or_a_map_and_their_passwords_never_show() {
        let rt = parse("storage:\n  redis: 'redis://:pw@r:6379/0'\n  postgres: {url: 'postgres://w:pw@p/w', timeout: 2s}\n").unwrap();
        let st = &rt.file.storage;
        let redis = st.redis.as_ref().unwrap();
        assert_eq!(
            (redis.timeout, redis.prefix.as_str()),
            (RedisConfig::DEFAULT_TIMEOUT, "weir:")
        );
        assert_eq!(st.postgres.as_ref().unwrap().timeout, units::Dur::secs(2));
        let shown = rt.redacted_json().to_string();
        assert!(!shown.contains("pw"), "{shown}");
        assert!(parse("storage:\n  redis: {url: 'redis://r', tiemout: 1s}\n").is_err());
        let e = parse("storage:\n  postgres: 'mysql://x'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.postgres.url"), "{e}");
    }

    fn load(yaml: &str) -> Result<Runtime, ConfigError> {
        parse_with_env(yaml, |k| {
            (k == "VLLM_KEY").then(|| "sk-from-env".to_string())
        })
    }

    const BASIC: &str = r#"
channels:
  - name: local
    type: openai
    base_url: http://10.0.0.5:8000/v1
    keys: [sk-a, "${VLLM_KEY}"]
    models: [qwen2-7b, deepseek]
    model_mapping: ["gpt-4o>qwen2-7b", "!fast>deepseek"]
    priority: 10
    weight: 4
  - name: mock
    type: mock
    models: [default]
gateways:
  - {name: default, path: /v1}
  - {name: team-a, path: /llm/api/team-a/v1/, models: [qwen2-7b]}
"#;

    #[test]
    fn loads_the_contract_example() {
        let rt = load(BASIC).unwrap();
        assert_eq!(rt.channels[0].keys, vec!["sk-a", "sk-from-env"]);
        let up = rt.channels[0].upstream.as_ref().unwrap();
        assert_eq!(
            (up.host.as_str(), up.port, up.base_path.as_str(), up.tls),
            ("10.0.0.5", 8000, "", false)
        );
        assert_eq!(rt.server().max_body.0, 32 * 1024 * 1024);
    }

    #[test]
    fn smtp_is_checked_field_by_field() {
        let good = format!(
            "{BASIC}smtp: {{host: mail.example.com, tls: tls, username: u, password: mail-pass, from: 'weir <noreply@example.com>', public_url: 'https://llm.example.com/v1'}}\n"
        );
        let rt = load(&good).unwrap();
        assert!(!rt.redacted_json().to_string().contains("mail-pass"));
        let smtp = rt.file.smtp.as_ref().unwrap();
        assert_eq!((smtp.port(), smtp.retries), (465, 5));
        let bad = format!(
            "{BASIC}smtp: {{host: '', port: 0, from: nobody, public_url: llm.example.com, username: u, retry_interval: 0s}}\n"
        );
        let text = load(&bad).unwrap_err().to_string();
        for field in [
            "smtp.host",
            "smtp.port",
            "smtp.from: `nobody`",
            "smtp.public_url",
            "smtp.username",
            "smtp.retry_interval",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        let typo =
            format!("{BASIC}smtp: {{host: h, from: a@b.c, public_url: http://x, tls: ssl}}\n");
        let text = load(&typo).unwrap_err().to_string();
        assert!(text.contains("smtp.tls"), "{text}");
    }

    #[test]
    fn webhooks_in_the_file_are_checked() {
        let good = format!(
            "{BASIC}webhooks:\n  - name: team\n    provider: feishu\n    config: {{appId: cli_a, appSecret: s, apiKey: sk-x, modelId: qwen2-7b, verificationToken: vt}}\n"
        );
        let rt = load(&good).unwrap();
        let shown = rt.redacted_json().to_string();
        assert!(
            !shown.contains("sk-x") && shown.contains("cli_a"),
            "{shown}"
        );
        let (w, source) = rt.webhook("team").unwrap();
        assert_eq!(
            (w.config.api_base.as_str(), source),
            ("https://open.feishu.cn", Source::File)
        );
        assert_eq!(rt.webhook_gateway(w).unwrap().name, "default");
        let bad = format!(
            "{BASIC}webhooks:\n  - name: 'a b'\n    provider: feishu\n    config: {{appId: '', appSecret: s, apiKey: k, modelId: nope, gateway: ghost}}\n"
        );
        let text = load(&bad).unwrap_err().to_string();
        for want in ["webhooks[0].name", "config.appId", "config.gateway"] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let typo = format!("{BASIC}webhooks:\n  - {{name: t, provider: slack, config: {{}}}}\n");
        assert!(load(&typo).unwrap_err().to_string().contains("webhooks[0]"));
    }

    #[test]
    fn base_url_with_or_without_v1_is_the_same() {
        let a = Upstream::parse("http://h:8000").unwrap();
        assert_eq!(a, Upstream::parse("http://h:8000/v1").unwrap());
        assert_eq!(a, Upstream::parse("http://h:8000/v1/").unwrap());
        let g = Upstream::parse("https://api.groq.com/openai/v1").unwrap();
        assert_eq!(
            (g.base_path.as_str(), g.port, g.authority.as_str()),
            ("/openai", 443, "api.groq.com")
        );
        assert!(Upstream::parse("ftp://h").is_err());
        assert!(Upstream::parse("h:8000").is_err());
    }

    #[test]
    fn mapping_exposes_sources_and_hides_bang_targets() {
        let rt = load(BASIC).unwrap();
        let gw = rt.gateway_for("/v1/chat/completions").unwrap().0;
        let (routes, label) = rt.routes(gw, "gpt-4o", "default").unwrap();
        assert_eq!(label, "gpt-4o");
        assert_eq!(
            routes,
            vec![Route {
                channel: 0,
                upstream_model: "qwen2-7b".into()
            }]
        );
        let (routes, _) = rt.routes(gw, "fast", "default").unwrap();
        assert_eq!(routes[0].upstream_model, "deepseek");
        // `deepseek` is hidden on `local`, so only the catch-all mock serves it.
        let (routes, label) = rt.routes(gw, "deepseek", "default").unwrap();
        assert_eq!((routes[0].channel, label.as_str()), (1, "default"));
        assert_eq!(routes[0].upstream_model, "deepseek");
        let listed = rt.list_models(gw, "default");
        assert_eq!(listed, vec!["fast", "gpt-4o", "qwen2-7b"]);
    }

    #[test]
    fn gateways_match_by_longest_prefix_at_segment_boundaries() {
        let rt = load(BASIC).unwrap();
        let (gw, rest) = rt
            .gateway_for("/llm/api/team-a/v1/chat/completions")
            .unwrap();
        assert_eq!((gw.name.as_str(), rest), ("team-a", "/chat/completions"));
        assert!(rt.gateway_for("/v10/models").is_none());
        assert!(rt.routes(gw, "gpt-4o", "default").is_none());
        assert!(rt.routes(gw, "qwen2-7b", "default").is_some());
    }

    #[test]
    fn errors_name_the_field_path() {
        let e = load("channels:\n  - {name: a, type: mock, models: [m]}\n  - {name: b, type: mock, models: [m], weight: lots}\n").unwrap_err();
        assert!(e.to_string().starts_with("channels[1].weight: "), "{e}");
        let e = load("server:\n  listen: 0.0.0.0:1\n  colour: blue\n").unwrap_err();
        assert!(
            e.to_string().contains("server: unknown field `colour`"),
            "{e}"
        );
        let e = load("channels:\n  - {name: a, type: openai, base_url: 'ftp://x', models: [m], model_mapping: ['nope']}\n").unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(e.problems[0].starts_with("channels[0].base_url"), "{e}");
        assert!(
            e.problems[1].starts_with("channels[0].model_mapping[0]"),
            "{e}"
        );
        let e = load("channels:\n  - {name: a, type: mock, models: [m]}\n  - {name: a, type: mock, models: [m]}\n").unwrap_err();
        assert!(e.to_string().contains("channels[1].name"), "{e}");
        let e = load("gateways:\n  - {name: g, path: /v1, expires_at: tomorrow}\n").unwrap_err();
        assert!(e.to_string().starts_with("gateways[0].expires_at"), "{e}");
        let e = load(
            "channels:\n  - {name: a, type: mock, models: [m], timeouts: {total: 1000000000y}}\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("channels[0].timeouts.total: must not exceed"),
            "{e}"
        );
        let e = load("channels:\n  - {name: a, type: azure, models: [m]}\n").unwrap_err();
        assert!(e.to_string().starts_with("channels[0].base_url"), "{e}");
        let e = load("gateways:\n  - {name: g, path: /v1, prompt_template: 'no placeholder'}\n")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("gateways[0].prompt_template"),
            "{e}"
        );
        let e = load("channels:\n  - {name: a, type: mock, models: [m], keys: ['${NOPE}']}\n")
            .unwrap_err();
        assert!(e.to_string().contains("NOPE"), "{e}");
    }

    #[test]
    fn the_logs_section_is_accepted_and_checked() {
        let rt = load("logs: {keep: 7d, keep_failed_bodies: 2h, max_body: 8KiB}\n").unwrap();
        assert_eq!(rt.file.logs.keep.0.as_secs(), 7 * 86_400);
        assert_eq!(rt.file.logs.max_body.0, 8 * 1024);
        assert_eq!(load("").unwrap().file.logs, LogsConfig::default());
        let e = load("logs: {keep: 1h, keep_failed_bodies: 2h}\n").unwrap_err();
        assert!(e.to_string().starts_with("logs.keep_failed_bodies"), "{e}");
        let e = load("logs: {keep: 0s}\n").unwrap_err();
        assert!(e.to_string().starts_with("logs.keep: "), "{e}");
        let e = load("logs: {keep: forever}\n").unwrap_err();
        assert!(e.to_string().starts_with("logs.keep"), "{e}");
        let e = load("logs: {retention: 1d}\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `retention`"), "{e}");
    }

    #[test]
    fn a_model_provider_is_a_channel_type_or_a_channel() {
        let ok = "channels:\n  - {name: c1, type: mock, models: [m]}\nmodels:\n  - {name: m, provider: c1}\n  - {name: n, provider: anthropic}\n";
        assert!(load(ok).is_ok());
        let e = load("models:\n  - {name: m, provider: elsewhere}\n").unwrap_err();
        assert!(e.to_string().starts_with("models[0].provider: "), "{e}");
    }

    #[test]
    fn redaction_hides_every_secret() {
        let rt = load(&format!("server: {{admin_key: adm-secret-1}}\n{BASIC}")).unwrap();
        let s = rt.redacted_json().to_string();
        for secret in ["adm-secret-1", "sk-a", "sk-from-env"] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        assert!(s.contains(REDACTED));
    }

    #[test]
    fn disabled_channels_serve_nothing_and_groups_filter() {
        let rt = load("channels:\n  - {name: a, type: mock, models: [m], enabled: false}\n  - {name: b, type: mock, models: [n], groups: [vip]}\n").unwrap();
        let gw = &rt.gateways[0];
        assert!(rt.routes(gw, "m", "default").is_none());
        assert!(rt.routes(gw, "n", "default").is_none());
        assert!(rt.routes(gw, "n", "vip").is_some());
    }

    #[test]
    fn key_hints_never_show_short_keys() {
        assert_eq!(key_hint("sk-abc"), "…");
        assert_eq!(key_hint("sk-0123456789abcdef"), "…cdef");
    }
}
