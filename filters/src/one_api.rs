//! One API / New API import (A7), the part without a database: which fork a
//! `channels` table comes from, and what each of its rows and tokens becomes in weir.
//! The two forks number their channel types differently after 2, so the fork is
//! found from the columns first. Every field that weir cannot carry is named in the
//! row's notes instead of being dropped silently.

use crate::config::ChannelConfig;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// `POST /admin/import/one-api` and `weir import one-api`: where the source is and
/// what to do.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// `mysql://user:pass@host:3306/db`, One API's `user:pass@tcp(host:3306)/db`,
    /// or `sqlite:PATH`.
    pub dsn: String,
    #[serde(default)]
    pub dry_run: bool,
    /// Also import the tokens, as keys their clients keep using.
    #[serde(default)]
    pub tokens: bool,
    /// Channel names are `{prefix}-{source id}`; default: the fork's name.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// Quota units per US dollar in both forks (`QuotaPerUnit`).
pub const QUOTA_PER_USD: f64 = 500_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fork {
    OneApi,
    NewApi,
}

impl Fork {
    pub fn as_str(self) -> &'static str {
        match self {
            Fork::OneApi => "one-api",
            Fork::NewApi => "new-api",
        }
    }
}

/// Columns both forks' `channels` have and the import reads.
pub const REQUIRED: &[&str] = &[
    "id",
    "type",
    "key",
    "status",
    "name",
    "base_url",
    "models",
    "group",
    "model_mapping",
    "priority",
    "weight",
];

/// Columns only New API's `channels` has.
const NEW_API_ONLY: &[&str] = &[
    "channel_info",
    "tag",
    "param_override",
    "auto_ban",
    "status_code_mapping",
    "test_model",
    "setting",
    "settings",
    "header_override",
    "remark",
    "other_info",
];

/// The fork whose `channels` table has `columns`, or what makes it neither.
pub fn detect(columns: &[String]) -> Result<Fork, String> {
    let has = |c: &str| columns.iter().any(|x| x.eq_ignore_ascii_case(c));
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|c| !has(c)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "the `channels` table is neither One API's nor New API's: it lacks {} (it has: {})",
            missing.join(", "),
            columns.join(", ")
        ));
    }
    Ok(if NEW_API_ONLY.iter().any(|c| has(c)) {
        Fork::NewApi
    } else {
        Fork::OneApi
    })
}

/// One row of `channels`, as read (every text column may be NULL).
#[derive(Debug, Clone, Default)]
pub struct SourceChannel {
    pub id: i64,
    pub kind: i64,
    pub key: Option<String>,
    pub status: i64,
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub models: Option<String>,
    pub group: Option<String>,
    pub model_mapping: Option<String>,
    pub priority: Option<i64>,
    pub weight: Option<i64>,
    /// Legacy per-type value: Azure's api-version among others.
    pub other: Option<String>,
    /// One API's JSON `ChannelConfig` (`api_version`, cloud credentials).
    pub config: Option<String>,
    pub system_prompt: Option<String>,
}

/// What a source type becomes in weir.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Kind {
    weir: &'static str,
    label: &'static str,
    /// The provider's address when the row has no base URL.
    base: Option<&'static str>,
    /// False: the source talks another protocol; imported disabled.
    openai_wire: bool,
}

const fn k(
    weir: &'static str,
    label: &'static str,
    base: Option<&'static str>,
    wire: bool,
) -> Kind {
    Kind {
        weir,
        label,
        base,
        openai_wire: wire,
    }
}

/// The same type in both forks (codes 0, 1, 3, 8-24 mostly agree).
fn shared(code: i64) -> Option<Kind> {
    Some(match code {
        0 => k("openai", "Unknown", None, true),
        1 => k("openai", "OpenAI", Some("https://api.openai.com"), true),
        3 => k("azure", "Azure", None, true),
        6 => k(
            "openai",
            "OpenAIMax",
            Some("https://api.openaimax.com"),
            true,
        ),
        7 => k("openai", "OhMyGPT", Some("https://api.ohmygpt.com"), true),
        8 => k("openai", "Custom", None, true),
        9 => k("openai", "Ails", Some("https://api.caipacity.com"), true),
        10 => k("openai", "AIProxy", Some("https://api.aiproxy.io"), true),
        11 => k("openai", "PaLM", None, false),
        12 => k("openai", "API2GPT", Some("https://api.api2gpt.com"), true),
        13 => k("openai", "AIGC2D", Some("https://api.aigc2d.com"), true),
        14 => k(
            "anthropic",
            "Anthropic",
            Some("https://api.anthropic.com"),
            true,
        ),
        15 => k("openai", "Baidu", None, false),
        16 => k("openai", "Zhipu", None, false),
        17 => k("openai", "Ali", None, false),
        18 => k("openai", "Xunfei", None, false),
        19 => k("openai", "360", Some("https://ai.360.cn"), true),
        20 => k(
            "openai",
            "OpenRouter",
            Some("https://openrouter.ai/api"),
            true,
        ),
        21 => k("openai", "AIProxyLibrary", None, false),
        22 => k("openai", "FastGPT", None, true),
        23 => k("openai", "Tencent", None, false),
        24 => k(
            "gemini",
            "Gemini",
            Some("https://generativelanguage.googleapis.com"),
            true,
        ),
        25 => k("openai", "Moonshot", Some("https://api.moonshot.cn"), true),
        31 => k(
            "openai",
            "LingYiWanWu",
            Some("https://api.lingyiwanwu.com"),
            true,
        ),
        _ => return None,
    })
}

fn one_api_kind(code: i64) -> Kind {
    shared(code).unwrap_or(match code {
        2 => k("openai", "API2D", Some("https://oa.api2d.net"), true),
        4 => k(
            "openai",
            "CloseAI",
            Some("https://api.closeai-proxy.xyz"),
            true,
        ),
        5 => k(
            "openai",
            "OpenAI-SB",
            Some("https://api.openai-sb.com"),
            true,
        ),
        26 => k(
            "openai",
            "Baichuan",
            Some("https://api.baichuan-ai.com"),
            true,
        ),
        27 => k("openai", "Minimax", None, false),
        28 => k("openai", "Mistral", Some("https://api.mistral.ai"), true),
        29 => k("openai", "Groq", Some("https://api.groq.com/openai"), true),
        30 => k("openai", "Ollama", Some("http://localhost:11434"), true),
        32 => k("openai", "StepFun", Some("https://api.stepfun.com"), true),
        36 => k("openai", "DeepSeek", Some("https://api.deepseek.com"), true),
        39 => k(
            "openai",
            "TogetherAI",
            Some("https://api.together.xyz"),
            true,
        ),
        43 => k("openai", "Proxy", None, true),
        44 => k(
            "openai",
            "SiliconFlow",
            Some("https://api.siliconflow.cn"),
            true,
        ),
        45 => k("openai", "xAI", Some("https://api.x.ai"), true),
        48 => k(
            "openai",
            "XunfeiV2",
            Some("https://spark-api-open.xf-yun.com"),
            true,
        ),
        49 => k(
            "openai",
            "AliBailian",
            Some("https://dashscope.aliyuncs.com/compatible-mode"),
            true,
        ),
        50 => k("openai", "OpenAICompatible", None, true),
        51 => k(
            "gemini",
            "GeminiOpenAICompatible",
            Some("https://generativelanguage.googleapis.com"),
            true,
        ),
        // AwsClaude, Coze, Cohere, Cloudflare, DeepL, Doubao, Novita, VertexAI,
        // Replicate, BaiduV2 and what comes after: their own protocols.
        _ => k("openai", "other", None, false),
    })
}

fn new_api_kind(code: i64) -> Kind {
    shared(code).unwrap_or(match code {
        4 => k("openai", "Ollama", Some("http://localhost:11434"), true),
        40 => k(
            "openai",
            "SiliconFlow",
            Some("https://api.siliconflow.cn"),
            true,
        ),
        42 => k("openai", "Mistral", Some("https://api.mistral.ai"), true),
        43 => k("openai", "DeepSeek", Some("https://api.deepseek.com"), true),
        47 => k("openai", "Xinference", None, true),
        48 => k("openai", "xAI", Some("https://api.x.ai"), true),
        // Midjourney, Perplexity, Aws, Cohere, Suno, Dify, Jina, Cloudflare, Vertex,
        // VolcEngine, Coze, video providers and what comes after.
        _ => k("openai", "other", None, false),
    })
}

/// What the import would store for one source channel.
#[derive(Debug, Clone)]
pub struct PlannedChannel {
    pub source_id: i64,
    pub source_name: String,
    pub channel: ChannelConfig,
    /// What the source had that weir leaves behind or changed, for the plan.
    pub notes: Vec<String>,
}

fn text(v: &Option<String>) -> &str {
    v.as_deref().map(str::trim).unwrap_or("")
}

/// Comma-separated names, trimmed, empty ones and repeats left out.
fn list(v: &Option<String>, sep: char) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in text(v).split(sep).map(str::trim).filter(|s| !s.is_empty()) {
        if !out.iter().any(|x| x == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// Every key of a row: New API keeps several newline-separated or as a JSON array.
pub fn split_keys(key: &str) -> Vec<String> {
    let key = key.trim();
    if key.starts_with('[') {
        if let Ok(keys) = serde_json::from_str::<Vec<String>>(key) {
            return list(&Some(keys.join("\n")), '\n');
        }
    }
    list(&Some(key.to_string()), '\n')
}

/// A mapping `{"asked": "sent"}` as weir's `asked>sent` lines.
pub fn mapping_lines(raw: &Option<String>) -> Result<Vec<String>, String> {
    let raw = text(raw);
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let map: Map<String, Value> =
        serde_json::from_str(raw).map_err(|e| format!("model_mapping: not a JSON object ({e})"))?;
    let mut lines = Vec::new();
    for (from, to) in &map {
        let to = to
            .as_str()
            .ok_or_else(|| format!("model_mapping: `{from}` maps to {to}, not a model name"))?;
        let (from, to) = (from.trim(), to.trim());
        if !from.is_empty() && !to.is_empty() && from != to {
            lines.push(format!("{from}>{to}"));
        }
    }
    Ok(lines)
}

/// Azure's api-version: One API's `config.api_version`, else the legacy `other`.
fn api_version(row: &SourceChannel) -> Option<String> {
    let from_config = serde_json::from_str::<Value>(text(&row.config))
        .ok()
        .and_then(|c| {
            c.get("api_version")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| !v.trim().is_empty());
    from_config.or_else(|| Some(text(&row.other).to_string()).filter(|v| !v.is_empty()))
}

/// The weir channel for `row`, named `{prefix}-{id}` so that a second run finds it.
pub fn plan_channel(
    fork: Fork,
    prefix: &str,
    row: &SourceChannel,
) -> Result<PlannedChannel, String> {
    let kind = match fork {
        Fork::OneApi => one_api_kind(row.kind),
        Fork::NewApi => new_api_kind(row.kind),
    };
    let mut notes = Vec::new();
    let keys = split_keys(text(&row.key));
    if keys.is_empty() {
        return Err("key: the channel has no key".into());
    }
    let models = list(&row.models, ',');
    if models.is_empty() {
        return Err("models: the channel lists no model".into());
    }
    let base_url = match (text(&row.base_url), kind.base) {
        ("", Some(default)) => default.to_string(),
        ("", None) => {
            return Err(format!(
                "base_url: empty, and type {} ({}) has no address of its own",
                row.kind, kind.label
            ))
        }
        (url, _) => url.to_string(),
    };
    let mut enabled = row.status == 1 || row.status == 3;
    match row.status {
        1 | 2 => {}
        3 => notes.push(
            "auto-disabled in the source: starts suspended until a test or probe passes".into(),
        ),
        s => notes.push(format!("status {s} is not 1, 2 or 3: imported disabled")),
    }
    if !kind.openai_wire {
        enabled = false;
        notes.push(format!(
            "type {} ({}) has its own protocol, not OpenAI's: imported disabled as `openai`; enable it behind an OpenAI-compatible endpoint",
            row.kind, kind.label
        ));
    }
    if !text(&row.system_prompt).is_empty() {
        notes.push(
            "system_prompt not carried: weir sets prompts per gateway (prompt_template)".into(),
        );
    }
    let groups = list(&row.group, ',');
    let mut entry = json!({
        "name": format!("{prefix}-{}", row.id),
        "type": kind.weir,
        "base_url": base_url,
        "keys": keys,
        "models": models,
        "model_mapping": mapping_lines(&row.model_mapping)?,
        "priority": row.priority.unwrap_or(0).clamp(i32::MIN as i64, i32::MAX as i64),
        // Both forks store 0 for "no weight"; weir's equal share is 1.
        "weight": row.weight.unwrap_or(0).clamp(1, u32::MAX as i64),
        "enabled": enabled,
    });
    if !groups.is_empty() {
        entry["groups"] = json!(groups);
    }
    if row.status == 3 {
        entry["suspended"] = json!(true);
    }
    if kind.weir == "azure" {
        if let Some(v) = api_version(row) {
            entry["api_version"] = json!(v);
        }
    }
    let channel = serde_json::from_value(entry).map_err(|e| format!("cannot map the row: {e}"))?;
    Ok(PlannedChannel {
        source_id: row.id,
        source_name: text(&row.name).to_string(),
        channel,
        notes,
    })
}

/// One row of `tokens`, with its user's group.
#[derive(Debug, Clone, Default)]
pub struct SourceToken {
    pub id: i64,
    pub key: String,
    pub status: i64,
    pub name: Option<String>,
    /// Unix seconds; -1 never.
    pub expired_time: Option<i64>,
    pub remain_quota: Option<i64>,
    pub unlimited_quota: bool,
    /// One API's comma-separated allowed models.
    pub models: Option<String>,
    /// New API's model limits, used when enabled.
    pub model_limits_enabled: bool,
    pub model_limits: Option<String>,
    /// New API's token group, else the owner's group.
    pub group: Option<String>,
    pub user_group: Option<String>,
}

/// The weir key a token becomes: its clients keep sending the same secret.
#[derive(Clone, PartialEq)]
pub struct PlannedKey {
    pub source_id: i64,
    pub name: String,
    pub secret: String,
    pub group: String,
    pub balance: Option<f64>,
    pub expires_at: Option<i64>,
    pub active: bool,
    /// Models granted to the key itself; `*` for a token without limits.
    pub models: Vec<String>,
}

impl std::fmt::Debug for PlannedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedKey")
            .field("source_id", &self.source_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The key for a token: `sk-` + its stored key (both forks keep it without), the
/// remaining quota as balance in dollars, expiry, and its model limits as grants.
pub fn plan_token(t: &SourceToken) -> Result<PlannedKey, String> {
    let key = t.key.trim();
    if key.is_empty() {
        return Err("key: the token has no key".into());
    }
    let secret = if key.starts_with("sk-") {
        key.to_string()
    } else {
        format!("sk-{key}")
    };
    let expires_at = t.expired_time.filter(|&e| e > 0);
    if expires_at.is_some_and(|e| e > 253_402_300_799) {
        return Err(format!(
            "expired_time: {} is past the year 9999",
            t.expired_time.unwrap_or(0)
        ));
    }
    let limits = if t.model_limits_enabled {
        list(&t.model_limits, ',')
    } else {
        list(&t.models, ',')
    };
    if let Some(m) = limits
        .iter()
        .find(|m| m.len() > 128 || m.chars().any(char::is_control))
    {
        return Err(format!(
            "models: `{}` is not a model name weir can grant",
            m.escape_debug()
        ));
    }
    let group = [&t.group, &t.user_group]
        .into_iter()
        .map(text)
        .find(|g| !g.is_empty() && *g != "auto")
        .unwrap_or("default")
        .to_string();
    let name = match text(&t.name) {
        "" => format!("token {}", t.id),
        n => n.chars().take(128).collect(),
    };
    Ok(PlannedKey {
        source_id: t.id,
        name,
        secret,
        group,
        balance: (!t.unlimited_quota)
            .then(|| t.remain_quota.unwrap_or(0).max(0) as f64 / QUOTA_PER_USD),
        expires_at,
        // 2 disabled; 3 expired without a date weir could enforce.
        active: !(t.status == 2 || (t.status == 3 && expires_at.is_none())),
        models: if limits.is_empty() {
            vec!["*".into()]
        } else {
            limits
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_fork_is_told_by_its_columns() {
        let mut one = cols(REQUIRED);
        one.extend(cols(&["config", "system_prompt", "other"]));
        assert_eq!(detect(&one), Ok(Fork::OneApi));
        let mut new = cols(REQUIRED);
        new.extend(cols(&["channel_info", "tag", "other"]));
        assert_eq!(detect(&new), Ok(Fork::NewApi));
        let e = detect(&cols(&["id", "type", "key", "name"])).unwrap_err();
        assert!(e.contains("lacks status, base_url, models"), "{e}");
        assert!(e.contains("it has: id, type, key, name"), "{e}");
    }

    fn row(kind: i64) -> SourceChannel {
        SourceChannel {
            id: 7,
            kind,
            key: Some("sk-a\n sk-b \n\nsk-a".into()),
            status: 1,
            name: Some("我的渠道".into()),
            base_url: Some("".into()),
            models: Some("gpt-4o, gpt-4o-mini,,gpt-4o".into()),
            group: Some("default,vip".into()),
            model_mapping: Some(r#"{"gpt-4":"gpt-4o","same":"same"}"#.into()),
            priority: Some(5),
            weight: Some(0),
            ..SourceChannel::default()
        }
    }

    #[test]
    fn an_openai_row_keeps_keys_models_mapping_priority_and_groups() {
        let p = plan_channel(Fork::OneApi, "one-api", &row(1)).unwrap();
        let c = &p.channel;
        assert_eq!(c.name, "one-api-7");
        assert_eq!(c.keys, ["sk-a", "sk-b"]);
        assert_eq!(c.models, ["gpt-4o", "gpt-4o-mini"]);
        assert_eq!(c.model_mapping, ["gpt-4>gpt-4o"]);
        assert_eq!((c.priority, c.weight, c.enabled), (5, 1, true));
        assert_eq!(
            c.groups.as_deref(),
            Some(&["default".to_string(), "vip".to_string()][..])
        );
        assert_eq!(c.base_url.as_deref(), Some("https://api.openai.com"));
        assert_eq!(p.source_name, "我的渠道");
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn types_follow_the_fork_numbering() {
        let mut r = row(43);
        // One API 43 is a proxy that needs its address; New API 43 is DeepSeek.
        assert!(plan_channel(Fork::OneApi, "x", &r)
            .unwrap_err()
            .contains("base_url"));
        let p = plan_channel(Fork::NewApi, "x", &r).unwrap();
        assert_eq!(
            p.channel.base_url.as_deref(),
            Some("https://api.deepseek.com")
        );
        r.kind = 14;
        let p = plan_channel(Fork::NewApi, "x", &r).unwrap();
        assert_eq!(p.channel.kind.as_str(), "anthropic");
        r.kind = 24;
        assert_eq!(
            plan_channel(Fork::OneApi, "x", &r)
                .unwrap()
                .channel
                .kind
                .as_str(),
            "gemini"
        );
        r.kind = 15;
        r.base_url = Some("https://aip.baidubce.com".into());
        let p = plan_channel(Fork::OneApi, "x", &r).unwrap();
        assert!(!p.channel.enabled);
        assert!(p.notes[0].contains("Baidu"), "{:?}", p.notes);
    }

    #[test]
    fn azure_keeps_its_api_version_and_status_maps() {
        let mut r = row(3);
        r.base_url = Some("https://res.openai.azure.com".into());
        r.config = Some(r#"{"api_version":"2024-06-01"}"#.into());
        r.status = 3;
        let p = plan_channel(Fork::OneApi, "one-api", &r).unwrap();
        assert_eq!(p.channel.api_version.as_deref(), Some("2024-06-01"));
        assert!(p.channel.enabled && p.channel.suspended);
        r.config = None;
        r.other = Some("2023-05-15".into());
        r.status = 2;
        let p = plan_channel(Fork::NewApi, "new-api", &r).unwrap();
        assert_eq!(p.channel.api_version.as_deref(), Some("2023-05-15"));
        assert!(!p.channel.enabled && !p.channel.suspended);
    }

    #[test]
    fn bad_rows_say_what_is_wrong() {
        let mut r = row(1);
        r.model_mapping = Some("{not json".into());
        assert!(plan_channel(Fork::OneApi, "x", &r)
            .unwrap_err()
            .starts_with("model_mapping"));
        r.model_mapping = Some(r#"{"a": 3}"#.into());
        assert!(plan_channel(Fork::OneApi, "x", &r)
            .unwrap_err()
            .contains("not a model name"));
        r.model_mapping = None;
        r.key = Some(" \n ".into());
        assert!(plan_channel(Fork::OneApi, "x", &r)
            .unwrap_err()
            .starts_with("key"));
        r.key = Some("k".into());
        r.models = Some(",".into());
        assert!(plan_channel(Fork::OneApi, "x", &r)
            .unwrap_err()
            .starts_with("models"));
    }

    #[test]
    fn json_array_keys_split_too() {
        assert_eq!(split_keys(r#"["k1","k2"]"#), ["k1", "k2"]);
        assert_eq!(split_keys("a|b|c"), ["a|b|c"]);
    }

    #[test]
    fn tokens_keep_their_secret_quota_expiry_and_limits() {
        let t = SourceToken {
            id: 3,
            key: "abc123".into(),
            status: 1,
            name: Some("ci".into()),
            expired_time: Some(-1),
            remain_quota: Some(1_250_000),
            models: Some("gpt-4o,gpt-4o-mini".into()),
            user_group: Some("vip".into()),
            ..SourceToken::default()
        };
        let k = plan_token(&t).unwrap();
        assert_eq!(k.secret, "sk-abc123");
        assert_eq!(k.balance, Some(2.5));
        assert_eq!((k.expires_at, k.active), (None, true));
        assert_eq!(k.models, ["gpt-4o", "gpt-4o-mini"]);
        assert_eq!(k.group, "vip");
        assert!(!format!("{k:?}").contains("abc123"));
        let unlimited = SourceToken {
            unlimited_quota: true,
            status: 2,
            expired_time: Some(1_900_000_000),
            group: Some("team".into()),
            models: None,
            ..t.clone()
        };
        let k = plan_token(&unlimited).unwrap();
        assert_eq!(
            (k.balance, k.expires_at, k.active),
            (None, Some(1_900_000_000), false)
        );
        assert_eq!(
            (k.models.as_slice(), k.group.as_str()),
            (&["*".to_string()][..], "team")
        );
        let limited = SourceToken {
            model_limits_enabled: true,
            model_limits: Some("m1".into()),
            ..t
        };
        assert_eq!(plan_token(&limited).unwrap().models, ["m1"]);
        let far = SourceToken {
            expired_time: Some(i64::MAX),
            ..limited.clone()
        };
        assert!(plan_token(&far).unwrap_err().starts_with("expired_time"));
        let odd = SourceToken {
            model_limits: Some("a\u{7}b".into()),
            ..limited
        };
        assert!(plan_token(&odd).unwrap_err().starts_with("models"));
    }
}
