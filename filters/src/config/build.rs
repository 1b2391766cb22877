//! From a parsed file to the `Runtime` the proxy reads: every field checked, every
//! problem collected with its field path, channels and gateways indexed. Nothing is
//! returned unless all is well.

use super::*;
use crate::access::AccessRule;
use crate::auth::{JwtSettings, JwtVerifier, KeyPosition};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub(super) fn runtime(file: FileConfig, stored: Stored) -> Result<Runtime, ConfigError> {
    let mut problems = Vec::new();
    validate_server(&file.server, &mut problems);
    if let Some(smtp) = &file.smtp {
        check_smtp(smtp, &mut problems);
    }
    let stored = without_clashes(&file, stored, &mut problems);
    let mut index = ChannelIndex::default();
    for (i, c) in file.channels.iter().enumerate() {
        index.add(&format!("channels[{i}]"), c, Source::File, &mut problems);
    }
    for c in &stored.channels {
        index.add(
            &format!("stored channel `{}`", c.name),
            c,
            Source::Store,
            &mut problems,
        );
    }
    let all_channels: Vec<ChannelConfig> = file
        .channels
        .iter()
        .chain(&stored.channels)
        .cloned()
        .collect();
    let served = Served::by(&all_channels);
    if file.gateways.is_empty() && stored.gateways.is_empty() {
        problems.push(
            "gateways: at least one gateway is needed (e.g. `{name: default, path: /v1}`)".into(),
        );
    }
    let mut seen = Taken::default();
    let file_gateways = file.gateways.iter().enumerate();
    let labelled = file_gateways
        .map(|(i, g)| (format!("gateways[{i}]"), g, Source::File))
        .chain(
            stored
                .gateways
                .iter()
                .map(|g| (format!("stored gateway `{}`", g.name), g, Source::Store)),
        );
    let mut gateways: Vec<Gateway> = labelled
        .map(|(at, g, source)| {
            let mut gw = gateway(&at, g, &served, &index.channels, &mut seen, &mut problems);
            gw.source = source;
            gw
        })
        .collect();
    gateways.sort_by_key(|g| std::cmp::Reverse(g.path.len()));
    let prices = prices(&file.models, &mut problems);
    for (i, m) in file.models.iter().enumerate() {
        if let Some(p) = &m.provider {
            if let Err(e) = check_provider(p, &all_channels) {
                problems.push(format!("models[{i}].provider: {e}"));
            }
        }
    }
    check_webhooks(&file, &stored, &served, &mut problems);
    check_storage(&file.storage, &mut problems);
    check_logs(&file.logs, &mut problems);
    let trusted_proxies = trusted_proxies(&file.server.trusted_proxies, &mut problems);
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    let cache = compile_cache(&file, &mut problems);
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    let ChannelIndex {
        channels,
        models,
        catch_all,
        ..
    } = index;
    Ok(Runtime {
        file,
        stored,
        gateways,
        channels,
        models,
        catch_all,
        prices,
        cache,
        trusted_proxies,
    })
}

/// `server.trusted_proxies`: CIDRs, or addresses meaning just themselves.
fn trusted_proxies(lines: &[String], problems: &mut Vec<String>) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim();
        match l
            .parse::<ipnet::IpNet>()
            .or_else(|_| l.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(net) => out.push(net),
            Err(_) => problems.push(format!(
                "server.trusted_proxies[{i}]: `{l}` is not an address or a CIDR such as 10.0.0.0/8"
            )),
        }
    }
    out
}

/// A name in the file and in the store is an error naming both places; the stored
/// entry is left out so that it is not reported twice.
fn without_clashes(file: &FileConfig, mut stored: Stored, problems: &mut Vec<String>) -> Stored {
    drop_clashes(
        "channels",
        &file.channels,
        &mut stored.channels,
        |c| &c.name,
        problems,
    );
    drop_clashes(
        "gateways",
        &file.gateways,
        &mut stored.gateways,
        |g| &g.name,
        problems,
    );
    drop_clashes(
        "webhooks",
        &file.webhooks,
        &mut stored.webhooks,
        |w| &w.name,
        problems,
    );
    stored
}

/// Every webhook's fields, wherever it is defined.
fn check_webhooks(file: &FileConfig, stored: &Stored, served: &Served, problems: &mut Vec<String>) {
    let labelled = file
        .webhooks
        .iter()
        .enumerate()
        .map(|(i, w)| (format!("webhooks[{i}]"), w))
        .chain(
            stored
                .webhooks
                .iter()
                .map(|w| (format!("stored webhook `{}`", w.name), w)),
        );
    let mut names = HashSet::new();
    for (at, w) in labelled {
        if !valid_name(&w.name) {
            problems.push(format!(
                "{at}.name: `{}` must be 1-64 letters, digits, `-`, `_` or `.`",
                w.name
            ));
        } else if !names.insert(w.name.clone()) {
            problems.push(format!(
                "{at}.name: `{}` is used by another webhook",
                w.name
            ));
        }
        let c = &w.config;
        for (field, v) in [
            ("appId", &c.app_id),
            ("appSecret", &c.app_secret),
            ("apiKey", &c.api_key),
            ("modelId", &c.model_id),
        ] {
            if v.trim().is_empty() {
                problems.push(format!("{at}.config.{field}: must not be empty"));
            }
        }
        if !c.model_id.trim().is_empty() && !served.serves(&c.model_id) {
            problems.push(format!(
                "{at}.config.modelId: no channel serves `{}`",
                c.model_id
            ));
        }
        match Upstream::parse(&c.api_base) {
            Err(e) => problems.push(format!("{at}.config.api_base: {e}")),
            Ok(u) if !u.base_path.is_empty() => problems.push(format!(
                "{at}.config.api_base: `{}` must be the open platform's address without a path",
                c.api_base
            )),
            Ok(_) => {}
        }
        let set = |v: &Option<String>| v.as_deref().is_some_and(|t| !t.trim().is_empty());
        if !set(&c.verification_token) && !set(&c.encrypt_key) {
            problems.push(format!(
                "{at}.config: set verificationToken or encryptKey (both, better): without them anyone can post events billed to apiKey"
            ));
        }
        if let Some(g) = &c.gateway {
            let known = file
                .gateways
                .iter()
                .chain(&stored.gateways)
                .any(|x| &x.name == g);
            if !known {
                problems.push(format!("{at}.config.gateway: no gateway is named `{g}`"));
            }
        }
    }
}

fn drop_clashes<T>(
    list: &str,
    file: &[T],
    stored: &mut Vec<T>,
    name: impl Fn(&T) -> &String,
    problems: &mut Vec<String>,
) {
    let in_file: HashMap<&str, usize> = file
        .iter()
        .enumerate()
        .map(|(i, e)| (name(e).as_str(), i))
        .collect();
    stored.retain(|e| match in_file.get(name(e).as_str()) {
        Some(i) => {
            problems.push(format!(
                "{list}[{i}].name: `{}` is defined in the file and in the store (created \
                 through the admin API); rename or delete one",
                name(e)
            ));
            false
        }
        None => true,
    });
}

/// Channels as the request path reads them, and which serve each model name.
#[derive(Default)]
struct ChannelIndex {
    channels: Vec<Channel>,
    models: HashMap<String, Vec<Route>>,
    catch_all: Vec<(usize, Option<String>)>,
    names: HashSet<String>,
}

impl ChannelIndex {
    fn add(&mut self, at: &str, c: &ChannelConfig, source: Source, problems: &mut Vec<String>) {
        check_name(at, "channel", &c.name, &mut self.names, problems);
        let upstream = upstream(at, c, problems);
        let proxy = c.proxy.as_deref().and_then(|url| {
            ForwardProxy::parse(url)
                .map_err(|e| problems.push(format!("{at}.proxy: {e}")))
                .ok()
        });
        check_channel(at, c, problems);
        let rules = mapping_rules(at, c, problems);
        if c.models.is_empty() && rules.is_empty() {
            problems.push(format!("{at}.models: the channel serves no model"));
        }
        let exposed = exposed(c, &rules);
        let idx = self.channels.len();
        if c.enabled {
            for (from, to) in &exposed {
                self.models.entry(from.clone()).or_default().push(Route {
                    channel: idx,
                    upstream_model: to.clone(),
                });
            }
            let serves_default = c.models.iter().any(|m| m.trim() == CATCH_ALL_MODEL)
                || rules.iter().any(|r| r.from == CATCH_ALL_MODEL);
            if serves_default {
                let target = rules
                    .iter()
                    .find(|r| r.from == CATCH_ALL_MODEL)
                    .map(|r| r.to.clone());
                self.catch_all.push((idx, target));
            }
        }
        self.channels.push(Channel {
            name: c.name.clone(),
            kind: c.kind,
            upstream,
            keys: c.keys.iter().map(|k| k.trim().to_string()).collect(),
            priority: c.priority,
            weight: c.weight,
            groups: c.groups.clone(),
            retries: c.retries,
            backoff: c.backoff.as_ref().map(|b| (b.base.0, b.max.0)),
            connect_timeout: c.timeouts.connect.0,
            first_byte_timeout: c.timeouts.first_byte.0,
            total_timeout: c.timeouts.total.0,
            proxy,
            exposed: exposed.into_iter().map(|(from, _)| from).collect(),
            api_version: c.api_version.clone(),
            default_max_tokens: c.default_max_tokens,
            enabled: c.enabled,
            starts_suspended: c.suspended,
            source,
        });
    }
}

/// A name that is valid and not taken by another entry of the same list.
fn check_name(
    at: &str,
    what: &str,
    name: &str,
    taken: &mut HashSet<String>,
    problems: &mut Vec<String>,
) {
    if !valid_name(name) {
        problems.push(format!(
            "{at}.name: `{name}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"
        ));
    } else if !taken.insert(name.to_string()) {
        problems.push(format!("{at}.name: `{name}` is used by another {what}"));
    }
}

/// Where a channel sends its requests (`None` for `mock`, or when it is wrong).
fn upstream(at: &str, c: &ChannelConfig, problems: &mut Vec<String>) -> Option<Upstream> {
    let kind = c.kind;
    if kind == ChannelType::Mock {
        return None;
    }
    let Some(url) = c.base_url.as_deref().or(kind.default_base_url()) else {
        problems.push(format!(
            "{at}.base_url: a `{}` channel needs its endpoint, e.g. https://NAME.openai.azure.com",
            kind.as_str()
        ));
        return None;
    };
    Upstream::parse(url)
        .map_err(|e| problems.push(format!("{at}.base_url: {e}")))
        .ok()
}

fn check_channel(at: &str, c: &ChannelConfig, problems: &mut Vec<String>) {
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
        check_duration(&format!("{at}.timeouts.{name}"), d, DAY, problems);
    }
    if let Some(b) = &c.backoff {
        check_duration(&format!("{at}.backoff.base"), b.base, HOUR, problems);
        check_duration(&format!("{at}.backoff.max"), b.max, HOUR, problems);
        if b.base > b.max {
            problems.push(format!(
                "{at}.backoff.base: must not exceed {at}.backoff.max"
            ));
        }
    }
    for (m, model) in c.models.iter().enumerate() {
        if model.trim().is_empty() {
            problems.push(format!("{at}.models[{m}]: a model name must not be empty"));
        }
    }
}

fn mapping_rules(at: &str, c: &ChannelConfig, problems: &mut Vec<String>) -> Vec<MappingRule> {
    let mut rules = Vec::new();
    for (m, line) in c.model_mapping.iter().enumerate() {
        match MappingRule::parse(line) {
            Ok(r) => rules.push(r),
            Err(e) => problems.push(format!("{at}.model_mapping[{m}]: {e}")),
        }
    }
    rules
}

/// What clients may ask a channel for, and what goes upstream for each.
fn exposed(c: &ChannelConfig, rules: &[MappingRule]) -> Vec<(String, String)> {
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
    for r in rules {
        if r.from == CATCH_ALL_MODEL {
            continue;
        }
        exposed.retain(|(from, _)| from != &r.from);
        exposed.push((r.from.clone(), r.to.clone()));
    }
    exposed
}

/// Every name any channel (enabled or not) answers to, to catch typos in gateways.
struct Served {
    names: HashSet<String>,
    any_catch_all: bool,
}

impl Served {
    fn by(channels: &[ChannelConfig]) -> Served {
        let mut names: HashSet<String> = HashSet::new();
        for c in channels {
            names.extend(c.models.iter().map(|m| m.trim().to_string()));
            names.extend(
                c.model_mapping
                    .iter()
                    .filter_map(|l| MappingRule::parse(l).ok())
                    .map(|r| r.from),
            );
        }
        let any_catch_all = names.contains(CATCH_ALL_MODEL);
        Served {
            names,
            any_catch_all,
        }
    }

    fn serves(&self, model: &str) -> bool {
        self.any_catch_all || self.names.contains(model)
    }
}

/// Gateway names and paths already used.
#[derive(Default)]
struct Taken {
    names: HashSet<String>,
    paths: HashSet<String>,
}

fn gateway(
    at: &str,
    g: &GatewayConfig,
    served: &Served,
    channels: &[Channel],
    taken: &mut Taken,
    problems: &mut Vec<String>,
) -> Gateway {
    check_name(at, "gateway", &g.name, &mut taken.names, problems);
    let path = gateway_path(at, g, &mut taken.paths, problems);
    let expires_at = expires_at(at, g, problems);
    if let Some(list) = &g.models {
        for (m, name) in list.iter().enumerate() {
            if !served.serves(name) {
                problems.push(format!(
                    "{at}.models[{m}]: `{name}` is not served by any channel"
                ));
            }
        }
    }
    let auth = g.auth.as_ref().and_then(|a| {
        compile_auth(a)
            .map_err(|(field, e)| problems.push(format!("{at}.auth{field}: {e}")))
            .ok()
    });
    let rate_rules = crate::limits::parse_rules(&g.rate_limits).unwrap_or_else(|(i, e)| {
        problems.push(format!("{at}.rate_limits[{i}]: {e}"));
        Vec::new()
    });
    if let Err(e) = crate::limits::check_distinct(&rate_rules) {
        problems.push(format!("{at}.rate_limits: {e}"));
    }
    let [allow, deny] = access_lists(at, g, problems);
    let needs_key = rate_rules
        .iter()
        .any(|r| r.scope == crate::limits::Scope::Secret)
        || allow
            .iter()
            .chain(&deny)
            .any(|r| matches!(r, AccessRule::Secret(_)));
    check_rewrites(at, g, problems);
    let masking = g.masking.as_ref().and_then(|m| {
        let custom: Vec<(String, String)> = m
            .custom
            .iter()
            .map(|c| (c.name.clone(), c.pattern.clone()))
            .collect();
        crate::masking::Masker::new(&m.detectors, &custom, m.restore)
            .map(std::sync::Arc::new)
            .map_err(|e| problems.push(format!("{at}.masking.{e}")))
            .ok()
    });
    let safety = g.safety.as_ref().and_then(|c| {
        safety(c, channels)
            .map(std::sync::Arc::new)
            .map_err(|e| problems.push(format!("{at}.safety.{e}")))
            .ok()
    });
    let passthrough = g.passthrough.as_ref().and_then(|name| {
        passthrough(name, channels)
            .map_err(|e| problems.push(format!("{at}.passthrough: {e}")))
            .ok()
    });
    if let Some(t) = g.timeout {
        check_duration(&format!("{at}.timeout"), t, DAY, problems);
    }
    if needs_key && g.auth.is_none() {
        problems.push(format!(
            "{at}.auth: `secret:` rules need callers with keys; add an `auth` section"
        ));
    }
    Gateway {
        name: g.name.clone(),
        path,
        models: g.models.as_ref().map(|l| l.iter().cloned().collect()),
        active: g.active,
        expires_at,
        retries: g.retries,
        timeout: g.timeout.map(|t| t.0),
        auth,
        token_quota: match g.token_quota {
            Quota::NoLimit => None,
            Quota::Tokens(n) => Some(n),
        },
        rate_rules,
        allow,
        deny,
        prompt_template: g.prompt_template.clone(),
        param_map: g.param_map.clone(),
        param_fixed: g.param_fixed.clone(),
        masking,
        safety,
        passthrough,
        thinking: g.thinking,
        web_search: g.web_search,
        // Masking too: an answer cached with placeholders in it is not one with
        // the originals restored. Safety: an answer cached under other rules
        // may break the new ones.
        rewrite_digest: serde_json::json!([
            g.prompt_template,
            g.param_map,
            g.param_fixed,
            g.masking,
            g.safety,
            g.thinking,
            g.web_search
        ])
        .to_string(),
        source: Source::File,
    }
}

/// `passthrough`: a channel whose API has files and batches (OpenAI's, Anthropic's).
fn passthrough(name: &str, channels: &[Channel]) -> Result<(String, usize), String> {
    let i = channels
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| format!("no channel is named `{name}`"))?;
    match channels[i].kind {
        ChannelType::Openai | ChannelType::Anthropic => Ok((name.to_string(), i)),
        other => Err(format!(
            "`{name}` is a `{}` channel; requests pass verbatim only to `openai` and `anthropic` ones",
            other.as_str()
        )),
    }
}

/// `safety`, compiled; its moderation channel found among the snapshot's.
fn safety(c: &SafetyConfig, channels: &[Channel]) -> Result<crate::safety::Safety, String> {
    let moderation = match &c.moderation {
        None => None,
        Some(m) => {
            let Some(i) = channels.iter().position(|ch| ch.name == m.channel) else {
                return Err(format!(
                    "moderation.channel: no channel is named `{}`",
                    m.channel
                ));
            };
            if channels[i].kind != ChannelType::Openai {
                return Err(format!(
                    "moderation.channel: `{}` is a `{}` channel; moderation speaks OpenAI's \
                     /v1/moderations, so it needs an `openai` one",
                    m.channel,
                    channels[i].kind.as_str()
                ));
            }
            if m.timeout.0.is_zero() || m.timeout.0 > Duration::from_secs(60) {
                return Err("moderation.timeout: must be between 1ms and 60s".into());
            }
            Some(crate::safety::Moderation {
                channel: m.channel.clone(),
                channel_index: i,
                model: m.model.clone(),
                timeout: m.timeout.0,
                on_error: m.on_error,
                categories: m.categories.clone(),
                answers: m.answers,
            })
        }
    };
    crate::safety::Safety::new(crate::safety::Spec {
        deny: &c.deny,
        patterns: &c.patterns,
        window: c.window,
        requests: c.requests,
        answers: c.answers,
        moderation,
    })
}

/// The gateway's path prefix, without a trailing `/`.
fn gateway_path(
    at: &str,
    g: &GatewayConfig,
    taken: &mut HashSet<String>,
    problems: &mut Vec<String>,
) -> String {
    let path = g.path.trim().trim_end_matches('/').to_string();
    if !g.path.starts_with('/') || path.is_empty() {
        problems.push(format!(
            "{at}.path: `{}` must start with `/` and name a prefix such as `/v1`",
            g.path
        ));
    } else if path.contains(['?', '#', ' ']) {
        problems.push(format!("{at}.path: `{}` must be a plain path", g.path));
    } else if !taken.insert(path.clone()) {
        problems.push(format!(
            "{at}.path: `{}` is used by another gateway",
            g.path
        ));
    }
    path
}

fn expires_at(
    at: &str,
    g: &GatewayConfig,
    problems: &mut Vec<String>,
) -> Option<std::time::SystemTime> {
    let s = g.expires_at.as_ref()?;
    humantime::parse_rfc3339_weak(s.trim())
        .map_err(|e| {
            problems.push(format!(
                "{at}.expires_at: `{s}` is not an RFC 3339 time such as 2027-06-30T00:00:00Z ({e})"
            ))
        })
        .ok()
}

/// The gateway's `allow` and `deny` lists.
fn access_lists(at: &str, g: &GatewayConfig, problems: &mut Vec<String>) -> [Vec<AccessRule>; 2] {
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
    lists
}

/// The prompt template and parameter rewrites (G6, G7).
fn check_rewrites(at: &str, g: &GatewayConfig, problems: &mut Vec<String>) {
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
}

/// A model's provider names a channel type or a channel.
pub fn check_provider(provider: &str, channels: &[ChannelConfig]) -> Result<(), String> {
    let is_type = serde_json::from_value::<ChannelType>(serde_json::Value::from(provider)).is_ok();
    if is_type || channels.iter().any(|c| c.name == provider) {
        return Ok(());
    }
    Err(format!(
        "`{provider}` is neither a channel type (openai, azure, anthropic, gemini, mock) nor a channel's name"
    ))
}

fn prices(models: &[ModelConfig], problems: &mut Vec<String>) -> HashMap<String, ModelPrice> {
    let mut prices = HashMap::new();
    for (i, m) in models.iter().enumerate() {
        let at = format!("models[{i}]");
        if m.name.trim().is_empty() {
            problems.push(format!("{at}.name: must not be empty"));
        }
        for (field, v) in [("price_in", m.price_in), ("price_out", m.price_out)] {
            if !v.is_finite() || v < 0.0 {
                problems.push(format!("{at}.{field}: must be a price of 0 or more"));
            }
        }
        let price = ModelPrice {
            price_in: m.price_in,
            price_out: m.price_out,
            multimodal: m.multimodal,
        };
        if prices.insert(m.name.clone(), price).is_some() {
            problems.push(format!("{at}.name: `{}` is listed twice", m.name));
        }
    }
    prices
}

fn check_storage(storage: &StorageConfig, problems: &mut Vec<String>) {
    if storage.sqlite.trim().is_empty() {
        problems.push("storage.sqlite: name the database file".into());
    }
    // At most a second of usage may be lost to `kill -9`.
    let flush = storage.flush_interval.0;
    if flush > Duration::from_secs(1) || flush.is_zero() {
        problems.push("storage.flush_interval: must be between 1ms and 1s".into());
    }
    if let Some(pg) = &storage.postgres {
        if !(pg.url.starts_with("postgres://") || pg.url.starts_with("postgresql://")) {
            problems
                .push("storage.postgres.url: must start with postgres:// or postgresql://".into());
        }
        let t = pg.timeout.0;
        if t < Duration::from_millis(10) || t > Duration::from_secs(60) {
            problems.push("storage.postgres.timeout: must be between 10ms and 60s".into());
        }
    }
    if let Some(redis) = &storage.redis {
        let schemes = ["redis://", "rediss://", "unix://", "redis+unix://"];
        if !schemes.iter().any(|s| redis.url.starts_with(s)) {
            problems.push(format!(
                "storage.redis.url: `{}` is not a redis://, rediss:// or unix:// URL",
                redis.redacted_url()
            ));
        }
        let t = redis.timeout.0;
        if t.is_zero() || t > Duration::from_secs(5) {
            problems.push("storage.redis.timeout: must be between 1ms and 5s".into());
        }
    }
}

fn check_logs(logs: &LogsConfig, problems: &mut Vec<String>) {
    let ten_years = Duration::from_secs(3650 * 86_400);
    check_duration("logs.keep", logs.keep, ten_years, problems);
    check_duration(
        "logs.keep_failed_bodies",
        logs.keep_failed_bodies,
        ten_years,
        problems,
    );
    if logs.keep_failed_bodies.0 > logs.keep.0 {
        problems.push(
            "logs.keep_failed_bodies: must not exceed logs.keep (a body outlives no row)".into(),
        );
    }
    if logs.max_body.0 > 16 * 1024 * 1024 {
        problems.push("logs.max_body: must not exceed 16MiB".into());
    }
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

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
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

fn check_smtp(m: &SmtpConfig, problems: &mut Vec<String>) {
    if m.host.trim().is_empty() {
        problems.push("smtp.host: name the mail server".into());
    }
    if m.port == Some(0) {
        problems.push("smtp.port: must be a port between 1 and 65535".into());
    }
    let address = match m.from.rsplit_once('<') {
        Some((_, rest)) => rest.strip_suffix('>').unwrap_or(""),
        None => m.from.trim(),
    };
    if !crate::people::plausible_email(address) {
        problems.push(format!(
            "smtp.from: `{}` is not an address such as `weir <noreply@example.com>`",
            m.from
        ));
    }
    if !(m.public_url.starts_with("http://") || m.public_url.starts_with("https://")) {
        problems.push(format!(
            "smtp.public_url: `{}` must be the http(s) base URL users call, e.g. https://llm.example.com/v1",
            m.public_url
        ));
    }
    if m.username.is_some() != m.password.is_some() {
        problems.push("smtp.username: a login needs both username and password".into());
    }
    let loopback = matches!(m.host.as_str(), "localhost" | "127.0.0.1" | "::1");
    if m.tls == SmtpTls::None && m.password.is_some() && !loopback {
        problems
            .push("smtp.tls: `none` would send the password in clear; use starttls or tls".into());
    }
    if m.retries > 20 {
        problems.push("smtp.retries: must not exceed 20".into());
    }
    check_duration("smtp.retry_interval", m.retry_interval, HOUR, problems);
    check_duration(
        "smtp.timeout",
        m.timeout,
        Duration::from_secs(600),
        problems,
    );
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
    if let Some(tls) = &s.tls {
        for (field, path) in [("cert", &tls.cert), ("key", &tls.key)] {
            if !std::path::Path::new(path).is_file() {
                problems.push(format!(
                    "server.tls.{field}: `{path}` is not a readable file"
                ));
            }
        }
    }
    if s.max_body.0 == 0 {
        problems.push("server.max_body: must be larger than zero".into());
    }
    // Pingora reads at most 1 MiB of head whatever weir allows.
    if !(1024..=1024 * 1024).contains(&s.max_header.0) {
        problems.push("server.max_header: must be between 1KiB and 1MiB".into());
    }
    // Bounded so that no deadline computed from them can overflow.
    check_duration("server.grace_period", s.grace_period, HOUR, problems);
    check_duration("server.backoff.max", s.backoff.max, HOUR, problems);
    check_duration("server.health.cooldown", s.health.cooldown, DAY, problems);
    check_duration("server.health.probe", s.health.probe, DAY, problems);
    check_duration(
        "server.health.max_cooldown",
        s.health.max_cooldown,
        DAY,
        problems,
    );
    check_duration("server.dns_ttl", s.dns_ttl, DAY, problems);
    check_duration("server.request_timeout", s.request_timeout, DAY, problems);
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
