//! Channel tests (A5): one minimal real request per model through the channel's own
//! provider adapter, from weir itself, with no client and no bill. The admin API
//! runs them on demand; the background prober runs them for suspended channels.

use super::exchange::{discard, exchange, Answer, Outbound};
use crate::state::AppState;
use bytes::Bytes;
use serde::Serialize;
use std::time::{Duration, Instant};
use weir_filters::config::{Channel, Runtime, CATCH_ALL_MODEL};
use weir_filters::health::HealthId;
use weir_filters::route::Endpoint;
use weir_filters::GatewayError;

/// What one model's test came to.
#[derive(Debug, Clone, Serialize)]
pub struct ModelResult {
    pub model: String,
    pub ok: bool,
    /// The upstream's status; `null` when none answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// Embedding models get an embedding request; everything else a one-token chat.
fn endpoint_for(model: &str) -> Endpoint {
    if model.to_ascii_lowercase().contains("embed") {
        Endpoint::Embeddings
    } else {
        Endpoint::ChatCompletions
    }
}

fn body_for(endpoint: Endpoint, model: &str) -> Bytes {
    let v = match endpoint {
        Endpoint::Embeddings => serde_json::json!({"model": model, "input": "ping"}),
        _ => serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        }),
    };
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// The models a test covers by default: the channel's own names (the catch-all
/// `default` is not a model anyone can be sent).
pub fn default_models(channel: &Channel) -> Vec<String> {
    channel
        .exposed
        .iter()
        .filter(|m| m.as_str() != CATCH_ALL_MODEL)
        .cloned()
        .collect()
}

/// Tests `models` on the channel at `index` of `rt`, one after another, each within
/// the channel's first-byte timeout; its first key is used.
pub async fn test(
    state: &AppState,
    rt: &Runtime,
    index: usize,
    models: &[String],
) -> Vec<ModelResult> {
    let mut out = Vec::with_capacity(models.len());
    for model in models {
        out.push(Box::pin(test_one(state, rt, index, model)).await);
    }
    out
}

async fn test_one(state: &AppState, rt: &Runtime, index: usize, model: &str) -> ModelResult {
    let channel = &rt.channels[index];
    let endpoint = endpoint_for(model);
    let upstream_model = rt.upstream_name(index, model);
    let rest = match endpoint {
        Endpoint::Embeddings => "/embeddings",
        _ => "/chat/completions",
    };
    let out = Outbound {
        endpoint,
        rest,
        body: body_for(endpoint, &upstream_model),
        accept: None,
        upstream_model: &upstream_model,
        client_model: model,
        client_headers: &[],
    };
    let started = Instant::now();
    let key = channel.keys.first().map(String::as_str);
    let sent = exchange(state, None, channel, key, &out, rt.server().dns_ttl.0).await;
    let (status, error) = match sent {
        Ok(answer) => {
            let status = answer.status();
            let error = if status < 300 {
                drain(state, answer).await;
                None
            } else {
                let code = Box::pin(discard(state, answer)).await;
                Some(code.map_or_else(
                    || format!("HTTP {status}"),
                    |c| format!("HTTP {status} ({c})"),
                ))
            };
            (Some(status), error)
        }
        Err(e) => (None, Some(e.describe())),
    };
    ModelResult {
        model: model.to_string(),
        ok: error.is_none(),
        status,
        latency_ms: started.elapsed().as_millis() as u64,
        error,
    }
}

/// Reads a good answer to its end so its connection goes back to the pool.
async fn drain(state: &AppState, answer: Answer) {
    if let Answer::Upstream { mut up, peer, .. } = answer {
        let read = async { while let Ok(Some(_)) = up.read_body_bytes().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
        super::exchange::release(state, up, peer.as_ref()).await;
    }
}

/// The last background probe of each channel, for `/admin/channels`.
#[derive(Default)]
pub struct Probes {
    last: std::sync::Mutex<std::collections::HashMap<String, ProbeReport>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Unix seconds.
    pub at: i64,
    pub readmitted: bool,
    #[serde(flatten)]
    pub result: ModelResult,
}

impl Probes {
    pub fn get(&self, channel: &str) -> Option<ProbeReport> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(channel)
            .cloned()
    }

    fn set(&self, channel: &str, report: ProbeReport) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.to_string(), report);
    }
}

/// One round of background probes: every suspended channel gets one test of its
/// first model; a pass admits it again at once.
pub async fn probe_suspended(state: &AppState) {
    let rt = state.snapshot();
    for (index, channel) in rt.channels.iter().enumerate() {
        if !channel.enabled || !suspended(state, channel) {
            continue;
        }
        let Some(model) = default_models(channel).into_iter().next() else {
            continue;
        };
        let result = Box::pin(test_one(state, &rt, index, &model)).await;
        let readmitted = result.ok;
        if readmitted {
            readmit(state, channel);
            tracing::info!(channel = %channel.name, "suspended channel passed its probe; admitted again");
        }
        let label = if result.ok { "ok" } else { "failed" };
        state
            .metrics
            .probes
            .with_label_values(&[channel.name.as_str(), label])
            .inc();
        let at = crate::accounts::now_unix();
        state.probes.set(
            &channel.name,
            ProbeReport {
                at,
                readmitted,
                result,
            },
        );
    }
}

/// A channel by name in `rt`, or 404.
pub fn index_of(rt: &Runtime, name: &str) -> Result<usize, GatewayError> {
    rt.channels
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| GatewayError::NotFound(format!("no channel named `{name}`")))
}

/// After a passing test: a suspended channel and its keys are admitted again.
pub fn readmit(state: &AppState, channel: &Channel) {
    state.health.readmit(&channel.name);
}

/// Whether health has the channel suspended now.
pub fn suspended(state: &AppState, channel: &Channel) -> bool {
    state.health.report(&HealthId::channel(&channel.name)).state
        == weir_filters::health::HealthState::Suspended
}

/// A channel of its own for a call weir makes itself (docking, the bot's calls),
/// checked as a configured one would be (the URL above all), with short timeouts.
pub fn endpoint(kind: &str, base_url: &str, total: &str) -> Result<Channel, GatewayError> {
    let entry = serde_json::json!({
        "name": "endpoint",
        "type": kind,
        "base_url": base_url,
        "models": [CATCH_ALL_MODEL],
        "timeouts": {"connect": "5s", "first_byte": total, "total": total},
    });
    // Problems are named by the request's own field names.
    let unprefixed = |e: String| GatewayError::BadRequest(e.replace("channels[0].", ""));
    let file: weir_filters::config::FileConfig =
        serde_path_to_error::deserialize(serde_json::json!({"channels": [entry]}))
            .map_err(|e| unprefixed(format!("{}: {}", e.path(), e.inner())))?;
    let rt = Runtime::build(file).map_err(|e| unprefixed(e.to_string()))?;
    rt.channels
        .into_iter()
        .next()
        .ok_or_else(|| GatewayError::Internal("the endpoint built no channel".into()))
}

/// A channel template read from a provider's model list (A6): the entry as the
/// API would store it (without its key), and the models found.
pub struct Docked {
    pub template: serde_json::Value,
    pub models: Vec<String>,
}

/// Reads the model list of a provider at `base_url` with `key`; every way it can
/// fail is an error that says which.
pub async fn discover(
    state: &AppState,
    kind: &str,
    base_url: &str,
    key: Option<&str>,
) -> Result<Docked, GatewayError> {
    let channel = endpoint(kind, base_url, "15s")?;
    let channel = &channel;
    let Some(upstream) = &channel.upstream else {
        return Err(GatewayError::BadRequest(
            "type: `mock` has no upstream to dock".into(),
        ));
    };
    let get = weir_filters::adapters::models_request(channel.kind, upstream, key)?;
    let (status, body) = super::exchange::fetch(state, channel, &get)
        .await
        .map_err(|e| {
            GatewayError::DockingFailed(format!("cannot read {}: {}", upstream.url, e.describe()))
        })?;
    match status {
        200..=299 => {}
        401 | 403 => {
            return Err(GatewayError::BadRequest(format!(
                "key: {} refused it (HTTP {status}); check the key",
                upstream.url
            )))
        }
        _ => {
            return Err(GatewayError::DockingFailed(format!(
                "{} answered HTTP {status} to its model list",
                upstream.url
            )))
        }
    }
    let mut models =
        weir_filters::adapters::parse_models(channel.kind, &body).ok_or_else(|| {
            GatewayError::DockingFailed(format!(
                "{} answered {} bytes that are not a {kind} model list",
                upstream.url,
                body.len()
            ))
        })?;
    models.sort();
    models.dedup();
    let template = serde_json::json!({"type": kind, "base_url": base_url, "models": models});
    Ok(Docked { template, models })
}
