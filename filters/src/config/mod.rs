//! Configuration: the YAML contract (`model`), `${ENV}` substitution (`env`), units
//! (`units`), and the validated, indexed form the proxy reads per request (`Runtime`).
//!
//! A file is parsed and validated whole; every problem is reported with the path of
//! the field (`channels[2].weight: ...`), and nothing is swapped in unless all is well.

pub mod env;
pub mod model;
pub mod units;

pub use model::*;

use crate::access::AccessRule;
use crate::auth::{JwtSettings, JwtVerifier, KeyPosition};
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

pub fn parse_with_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Runtime, ConfigError> {
    let text = env::substitute(text, lookup).map_err(ConfigError::one)?;
    let de = serde_yaml::Deserializer::from_str(&text);
    let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            ConfigError::one(inner)
        } else {
            ConfigError::one(format!("{path}: {inner}"))
        }
    })?;
    Runtime::build(file)
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
        Ok(Upstream {
            tls,
            host,
            port,
            base_path,
            authority,
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
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub total_timeout: Duration,
    /// Client-facing names this channel answers to, in a stable order.
    pub exposed: Vec<String>,
    /// `azure`: `api-version`.
    pub api_version: Option<String>,
    /// `anthropic`: `max_tokens` when a request names none.
    pub default_max_tokens: Option<u32>,
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
    /// The rewrite rules above in one string (part of cache keys).
    pub rewrite_digest: String,
}

impl Gateway {
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
    pub file: FileConfig,
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

fn compile_cache(file: &FileConfig, problems: &mut Vec<String>) -> Option<CachePolicy> {
    let c = &file.cache;
    if c.max_per_request == 0 || c.max_per_request > 16 {
        problems.push("cache.max_per_request: must be between 1 and 16".into());
    }
    check_duration(
        "cache.ttl",
        c.ttl,
        Duration::from_secs(30 * 86_400),
        problems,
    );
    let flagged: HashSet<String> = file
        .models
        .iter()
        .filter(|m| m.cache)
        .map(|m| m.name.clone())
        .collect();
    let off = matches!(&c.models, CacheModels::Names(n) if n.is_empty()) && flagged.is_empty();
    (!off).then(|| CachePolicy {
        models: c.models.clone(),
        flagged,
        ttl: c.ttl.0,
        max_per_request: c.max_per_request.clamp(1, 16),
        max_bytes: c.max_bytes.0,
        max_entry_bytes: c.max_entry_bytes.0,
    })
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

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Runtime {
    pub fn build(file: FileConfig) -> Result<Runtime, ConfigError> {
        let mut problems = Vec::new();
        validate_server(&file.server, &mut problems);

        let mut channels = Vec::with_capacity(file.channels.len());
        let mut models: HashMap<String, Vec<Route>> = HashMap::new();
        let mut catch_all = Vec::new();
        let mut names = HashSet::new();
        for (i, c) in file.channels.iter().enumerate() {
            let at = format!("channels[{i}]");
            if !valid_name(&c.name) {
                problems.push(format!(
                    "{at}.name: `{}` must be 1-64 characters of letters, digits, `-`, `_` or `.`",
                    c.name
                ));
            } else if !names.insert(c.name.clone()) {
                problems.push(format!(
                    "{at}.name: `{}` is used by another channel",
                    c.name
                ));
            }
            let upstream = match c.kind {
                ChannelType::Mock => None,
                kind => match c.base_url.as_deref().or(kind.default_base_url()) {
                    None => {
                        problems.push(format!(
                            "{at}.base_url: a `{}` channel needs its endpoint, e.g. https://NAME.openai.azure.com",
                            kind.as_str()
                        ));
                        None
                    }
                    Some(url) => match Upstream::parse(url) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            problems.push(format!("{at}.base_url: {e}"));
                            None
                        }
                    },
                },
            };
            if c.api_version.is_some() && c.kind != ChannelType::Azure {
                problems.push(format!("{at}.api_version: only `azure` channels use it"));
            }
            if c.default_max_tokens.is_some() && c.kind != ChannelType::Anthropic {
                problems.push(format!(
                    "{at}.default_max_tokens: only `anthropic` channels use it"
                ));
            }
            for (k, key) in c.keys.iter().enumerate() {
                if key.trim().is_empty() {
                    problems.push(format!("{at}.keys[{k}]: a key must not be empty"));
                } else if key.chars().any(|ch| ch.is_control() || ch == ' ') {
                    problems.push(format!(
                        "{at}.keys[{k}]: a key must not contain spaces or control characters"
                    ));
                }
            }
            if c.weight == 0 {
                problems.push(format!(
                    "{at}.weight: must be at least 1 (set `enabled: false` to take a channel out)"
                ));
            }
            for (name, d) in [
                ("connect", c.timeouts.connect),
                ("first_byte", c.timeouts.first_byte),
                ("total", c.timeouts.total),
            ] {
                check_duration(&format!("{at}.timeouts.{name}"), d, DAY, &mut problems);
            }
            for (m, model) in c.models.iter().enumerate() {
                if model.trim().is_empty() {
                    problems.push(format!("{at}.models[{m}]: a model name must not be empty"));
                }
            }
            let mut rules = Vec::new();
            for (m, line) in c.model_mapping.iter().enumerate() {
                match MappingRule::parse(line) {
                    Ok(r) => rules.push(r),
                    Err(e) => problems.push(format!("{at}.model_mapping[{m}]: {e}")),
                }
            }
            if c.models.is_empty() && rules.is_empty() {
                problems.push(format!("{at}.models: the channel serves no model"));
            }

            // What clients may ask this channel for, and what goes upstream for each.
            let hidden: HashSet<&str> = rules
                .iter()
                .filter(|r| r.hide_target)
                .map(|r| r.to.as_str())
                .collect();
            let mut exposed: Vec<(String, String)> = Vec::new();
            for m in &c.models {
                let m = m.trim();
                if m == CATCH_ALL_MODEL || hidden.contains(m) {
                    continue;
                }
                exposed.push((m.to_string(), m.to_string()));
            }
            for r in &rules {
                if r.from == CATCH_ALL_MODEL {
                    continue;
                }
                exposed.retain(|(from, _)| from != &r.from);
                exposed.push((r.from.clone(), r.to.clone()));
            }
            let serves_default = c.models.iter().any(|m| m.trim() == CATCH_ALL_MODEL)
                || rules.iter().any(|r| r.from == CATCH_ALL_MODEL);
            let idx = channels.len();
            if c.enabled {
                for (from, to) in &exposed {
                    models.entry(from.clone()).or_default().push(Route {
                        channel: idx,
                        upstream_model: to.clone(),
                    });
                }
                if serves_default {
                    let target = rules
                        .iter()
                        .find(|r| r.from == CATCH_ALL_MODEL)
                        .map(|r| r.to.clone());
                    catch_all.push((idx, target));
                }
            }
            channels.push(Channel {
                name: c.name.clone(),
                kind: c.kind,
                upstream,
                keys: c.keys.iter().map(|k| k.trim().to_string()).collect(),
                priority: c.priority,
                weight: c.weight,
                groups: c.groups.clone(),
                retries: c.retries,
                connect_timeout: c.timeouts.connect.0,
                first_byte_timeout: c.timeouts.first_byte.0,
                total_timeout: c.timeouts.total.0,
                exposed: exposed.into_iter().map(|(from, _)| from).collect(),
                api_version: c.api_version.clone(),
                default_max_tokens: c.default_max_tokens,
            });
        }

        // Every name any channel (enabled or not) answers to, to catch typos in gateways.
        let mut all_models: HashSet<String> = HashSet::new();
        for c in &file.channels {
            all_models.extend(c.models.iter().map(|m| m.trim().to_string()));
            all_models.extend(
                c.model_mapping
                    .iter()
                    .filter_map(|l| MappingRule::parse(l).ok())
                    .map(|r| r.from),
            );
        }
        let any_catch_all = all_models.contains(CATCH_ALL_MODEL);

        let mut gateways = Vec::with_capacity(file.gateways.len());
        let mut gw_names = HashSet::new();
        let mut gw_paths = HashSet::new();
        if file.gateways.is_empty() {
            problems.push(
                "gateways: at least one gateway is needed (e.g. `{name: default, path: /v1}`)"
                    .into(),
            );
        }
        for (i, g) in file.gateways.iter().enumerate() {
            let at = format!("gateways[{i}]");
            if !valid_name(&g.name) {
                problems.push(format!(
                    "{at}.name: `{}` must be 1-64 characters of letters, digits, `-`, `_` or `.`",
                    g.name
                ));
            } else if !gw_names.insert(g.name.clone()) {
                problems.push(format!(
                    "{at}.name: `{}` is used by another gateway",
                    g.name
                ));
            }
            let path = g.path.trim().trim_end_matches('/').to_string();
            if !g.path.starts_with('/') || path.is_empty() {
                problems.push(format!(
                    "{at}.path: `{}` must start with `/` and name a prefix such as `/v1`",
                    g.path
                ));
            } else if path.contains(['?', '#', ' ']) {
                problems.push(format!("{at}.path: `{}` must be a plain path", g.path));
            } else if !gw_paths.insert(path.clone()) {
                problems.push(format!(
                    "{at}.path: `{}` is used by another gateway",
                    g.path
                ));
            }
            let expires_at = match &g.expires_at {
                None => None,
                Some(s) => match humantime::parse_rfc3339_weak(s.trim()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        problems.push(format!(
                            "{at}.expires_at: `{s}` is not an RFC 3339 time such as 2027-06-30T00:00:00Z ({e})"
                        ));
                        None
                    }
                },
            };
            if let Some(list) = &g.models {
                for (m, name) in list.iter().enumerate() {
                    if !all_models.contains(name) && !any_catch_all {
                        problems.push(format!(
                            "{at}.models[{m}]: `{name}` is not served by any channel"
                        ));
                    }
                }
            }
            let auth = g.auth.as_ref().and_then(|a| match compile_auth(a) {
                Ok(auth) => Some(auth),
                Err((field, e)) => {
                    problems.push(format!("{at}.auth{field}: {e}"));
                    None
                }
            });
            let token_quota = match g.token_quota {
                Quota::NoLimit => None,
                Quota::Tokens(n) => Some(n),
            };
            let rate_rules = crate::limits::parse_rules(&g.rate_limits).unwrap_or_else(|(i, e)| {
                problems.push(format!("{at}.rate_limits[{i}]: {e}"));
                Vec::new()
            });
            if let Err(e) = crate::limits::check_distinct(&rate_rules) {
                problems.push(format!("{at}.rate_limits: {e}"));
            }
            let mut lists = [Vec::new(), Vec::new()];
            for (list, (name, lines)) in lists
                .iter_mut()
                .zip([("allow", &g.allow), ("deny", &g.deny)])
            {
                for (i, line) in lines.iter().enumerate() {
                    match line.parse::<AccessRule>() {
                        Ok(r) => list.push(r),
                        Err(e) => problems.push(format!("{at}.{name}[{i}]: {e}")),
                    }
                }
            }
            let [allow, deny] = lists;
            let needs_key = rate_rules
                .iter()
                .any(|r| r.scope == crate::limits::Scope::Secret)
                || allow
                    .iter()
                    .chain(&deny)
                    .any(|r| matches!(r, AccessRule::Secret(_)));
            if let Some(t) = &g.prompt_template {
                if !t.contains("{{query}}") {
                    problems.push(format!(
                        "{at}.prompt_template: must contain `{{{{query}}}}`, where the user's question goes"
                    ));
                }
            }
            for (what, keys) in [
                ("param_map", g.param_map.keys().collect::<Vec<_>>()),
                ("param_fixed", g.param_fixed.keys().collect::<Vec<_>>()),
            ] {
                for k in keys {
                    if k.is_empty() || k.split('.').any(str::is_empty) {
                        problems.push(format!("{at}.{what}: `{k}` is not a key or a dotted path"));
                    }
                }
            }
            if needs_key && auth.is_none() && g.auth.is_none() {
                problems.push(format!(
                    "{at}.auth: `secret:` rules need callers with keys; add an `auth` section"
                ));
            }
            gateways.push(Gateway {
                name: g.name.clone(),
                path,
                models: g.models.as_ref().map(|l| l.iter().cloned().collect()),
                active: g.active,
                expires_at,
                retries: g.retries,
                auth,
                token_quota,
                rate_rules,
                allow,
                deny,
                prompt_template: g.prompt_template.clone(),
                param_map: g.param_map.clone(),
                param_fixed: g.param_fixed.clone(),
                rewrite_digest: serde_json::json!([g.prompt_template, g.param_map, g.param_fixed])
                    .to_string(),
            });
        }
        gateways.sort_by_key(|g| std::cmp::Reverse(g.path.len()));

        let mut prices = HashMap::new();
        for (i, m) in file.models.iter().enumerate() {
            let at = format!("models[{i}]");
            if m.name.trim().is_empty() {
                problems.push(format!("{at}.name: must not be empty"));
            }
            for (field, v) in [("price_in", m.price_in), ("price_out", m.price_out)] {
                if !v.is_finite() || v < 0.0 {
                    problems.push(format!("{at}.{field}: must be a price of 0 or more"));
                }
            }
            if prices
                .insert(
                    m.name.clone(),
                    ModelPrice {
                        price_in: m.price_in,
                        price_out: m.price_out,
                        multimodal: m.multimodal,
                    },
                )
                .is_some()
            {
                problems.push(format!("{at}.name: `{}` is listed twice", m.name));
            }
        }
        if file.storage.sqlite.trim().is_empty() {
            problems.push("storage.sqlite: name the database file".into());
        }
        // At most a second of usage may be lost to `kill -9`.
        if file.storage.flush_interval.0 > Duration::from_secs(1)
            || file.storage.flush_interval.0.is_zero()
        {
            problems.push("storage.flush_interval: must be between 1ms and 1s".into());
        }

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let cache = compile_cache(&file, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Runtime {
            file,
            gateways,
            channels,
            models,
            catch_all,
            prices,
            cache,
        })
    }

    pub fn server(&self) -> &ServerConfig {
        &self.file.server
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
        if let Some(key) = v.pointer_mut("/server/admin_key") {
            if !key.is_null() {
                *key = serde_json::Value::String(REDACTED.into());
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

/// Builds a gateway's auth; errors carry the field below `auth` they concern.
fn compile_auth(a: &AuthConfig) -> Result<GatewayAuth, (&'static str, String)> {
    let position: KeyPosition = a.key_from.parse().map_err(|e| (".key_from", e))?;
    let method = match a.method {
        AuthMethod::Database => AuthCheck::Database,
        AuthMethod::Regex => {
            let re = a
                .regex
                .as_deref()
                .ok_or((".regex", "the regex method needs a `regex`".to_string()))?;
            // Anchored: the whole key must match, not a part of it (extra anchors
            // inside the group are harmless).
            let anchored = format!("^(?:{re})$");
            AuthCheck::Regex(
                regex::Regex::new(&anchored)
                    .map_err(|e| (".regex", format!("`{re}` is not a regular expression: {e}")))?,
            )
        }
        AuthMethod::Jwt => {
            let j = a
                .jwt
                .as_ref()
                .ok_or((".jwt", "the jwt method needs a `jwt` section".to_string()))?;
            let pem = match &j.public_key {
                Some(k) if k.trim_start().starts_with("-----BEGIN") => Some(k.clone()),
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| (".jwt.public_key", format!("cannot read `{path}`: {e}")))?,
                ),
                None => None,
            };
            let verifier = JwtVerifier::new(&JwtSettings {
                secret: j.secret.as_deref(),
                public_key_pem: pem.as_deref(),
                algorithms: &j.algorithms,
                identity_claim: &j.identity_claim,
                group_claim: j.group_claim.as_deref(),
                leeway_secs: j.leeway.map(|d| d.0.as_secs()).unwrap_or(0),
                audience: j.audience.as_deref(),
                issuer: j.issuer.as_deref(),
            })
            .map_err(|e| (".jwt", e))?;
            AuthCheck::Jwt(Arc::new(verifier))
        }
    };
    if a.regex.is_some() && a.method != AuthMethod::Regex {
        return Err((".regex", "only the regex method uses `regex`".into()));
    }
    if a.jwt.is_some() && a.method != AuthMethod::Jwt {
        return Err((".jwt", "only the jwt method uses `jwt`".into()));
    }
    Ok(GatewayAuth { position, method })
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn check_duration(path: &str, d: units::Dur, max: Duration, problems: &mut Vec<String>) {
    if d.0.is_zero() {
        problems.push(format!("{path}: must be longer than zero"));
    } else if d.0 > max {
        problems.push(format!(
            "{path}: must not exceed {}",
            humantime::format_duration(max)
        ));
    }
}

fn validate_server(s: &ServerConfig, problems: &mut Vec<String>) {
    let listen = s.listen.parse::<std::net::SocketAddr>();
    if let Err(e) = &listen {
        problems.push(format!(
            "server.listen: `{}` is not an address such as 0.0.0.0:8080 ({e})",
            s.listen
        ));
    }
    let admin = s.admin_listen.parse::<std::net::SocketAddr>();
    if let Err(e) = &admin {
        problems.push(format!(
            "server.admin_listen: `{}` is not an address such as 127.0.0.1:8081 ({e})",
            s.admin_listen
        ));
    }
    if let (Ok(a), Ok(b)) = (listen, admin) {
        // Port 0 twice is two ports the kernel picks, not one address twice.
        if a == b && a.port() != 0 {
            problems.push("server.admin_listen: must differ from server.listen".into());
        }
    }
    if let Some(ca) = &s.ca_file {
        if !std::path::Path::new(ca).is_file() {
            problems.push(format!("server.ca_file: `{ca}` is not a readable file"));
        }
    }
    if s.max_body.0 == 0 {
        problems.push("server.max_body: must be larger than zero".into());
    }
    // Bounded so that no deadline computed from them can overflow.
    check_duration("server.grace_period", s.grace_period, HOUR, problems);
    check_duration("server.backoff.max", s.backoff.max, HOUR, problems);
    check_duration("server.health.cooldown", s.health.cooldown, DAY, problems);
    check_duration(
        "server.health.max_cooldown",
        s.health.max_cooldown,
        DAY,
        problems,
    );
    check_duration("server.dns_ttl", s.dns_ttl, DAY, problems);
    if s.backoff.base > s.backoff.max {
        problems.push("server.backoff.base: must not exceed server.backoff.max".into());
    }
    if s.health.failures == 0 {
        problems.push("server.health.failures: must be at least 1".into());
    }
    if s.health.cooldown > s.health.max_cooldown {
        problems.push("server.health.cooldown: must not exceed server.health.max_cooldown".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
