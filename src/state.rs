//! Process-wide state: the config snapshot (swapped whole by reloads) and the
//! long-lived parts that must survive a reload (health, DNS, connection pool, metrics).

use crate::accounts::Accounts;
use crate::cache::{CacheStore, MemoryCache};
use crate::dns::DnsCache;
use crate::metrics::Metrics;
use crate::store::Store;
use arc_swap::ArcSwap;
use pingora_core::connectors::TransportConnector;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use weir_filters::config::{self, Runtime, ServerConfig};
use weir_filters::health::{HealthId, HealthRegistry};
use weir_filters::health::{HealthPolicy, HealthState};

pub struct AppState {
    pub config_path: PathBuf,
    config: ArcSwap<Runtime>,
    version: AtomicU64,
    /// The text of the file behind the current snapshot: a watcher event that changed
    /// nothing does not count as a reload.
    loaded_text: Mutex<String>,
    pub health: HealthRegistry,
    pub dns: DnsCache,
    /// One pool of upstream connections for every request: keep-alive across
    /// requests. Weir speaks HTTP/1.1 on them itself (`proxy::exchange`).
    pub connector: TransportConnector,
    pub metrics: Metrics,
    /// Keys, money and limiter counters.
    pub accounts: Arc<Accounts>,
    pub store: Store,
    /// Cached answers (P10); kept across reloads, resized by them.
    pub cache: Arc<dyn CacheStore>,
}

#[derive(Debug)]
pub enum ReloadOutcome {
    Reloaded { version: u64 },
    Unchanged { version: u64 },
}

fn cache_budget(policy: &Option<weir_filters::config::CachePolicy>) -> u64 {
    policy.as_ref().map(|p| p.max_bytes).unwrap_or(0)
}

/// Fields read once at start: say so when a reload changes them.
fn warn_restart_only(old: &ServerConfig, new: &ServerConfig) {
    let changed = [
        ("server.listen", old.listen != new.listen),
        ("server.admin_listen", old.admin_listen != new.admin_listen),
        ("server.threads", old.threads != new.threads),
        ("server.grace_period", old.grace_period != new.grace_period),
        ("server.log_format", old.log_format != new.log_format),
        ("server.ca_file", old.ca_file != new.ca_file),
    ];
    for (field, _) in changed.iter().filter(|(_, c)| *c) {
        tracing::warn!(field, "changed in the file; takes effect on restart");
    }
}

impl AppState {
    pub fn new(
        config_path: PathBuf,
        text: String,
        runtime: Runtime,
        connector: TransportConnector,
        accounts: Arc<Accounts>,
        store: Store,
    ) -> Result<Self, String> {
        let metrics = Metrics::new().map_err(|e| format!("cannot set up metrics: {e}"))?;
        let runtime_cache = runtime.cache.clone();
        metrics.config_version.set(1);
        Ok(AppState {
            config_path,
            config: ArcSwap::from_pointee(runtime),
            version: AtomicU64::new(1),
            loaded_text: Mutex::new(text),
            health: HealthRegistry::default(),
            dns: DnsCache::default(),
            connector,
            metrics,
            cache: Arc::new(MemoryCache::new(cache_budget(&runtime_cache))),
            accounts,
            store,
        })
    }

    /// The config every phase of one request uses, start to end.
    pub fn snapshot(&self) -> Arc<Runtime> {
        self.config.load_full()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Re-reads, validates and swaps in the config file. On any problem the current
    /// config stays in place and the problems are returned.
    pub fn reload(&self, trigger: &str) -> Result<ReloadOutcome, String> {
        // One reload at a time; the lock also guards `loaded_text`.
        let mut loaded = self.loaded_text.lock().unwrap_or_else(|p| p.into_inner());
        let text = std::fs::read_to_string(&self.config_path)
            .map_err(|e| format!("cannot read {}: {e}", self.config_path.display()));
        let result = text.and_then(|text| {
            if *loaded == text && trigger == "watch" {
                return Ok(None);
            }
            config::parse(&text)
                .map(|rt| Some((rt, text)))
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(None) => Ok(ReloadOutcome::Unchanged {
                version: self.version(),
            }),
            Ok(Some((runtime, text))) => {
                let old = self.snapshot();
                warn_restart_only(old.server(), runtime.server());
                let names: Vec<&str> = runtime.channels.iter().map(|c| c.name.as_str()).collect();
                self.health.retain_channels(&names);
                // A channel pointed elsewhere, or given other keys, starts with a clean slate.
                for c in &runtime.channels {
                    if let Some(prev) = old.channels.iter().find(|p| p.name == c.name) {
                        if prev.upstream != c.upstream || prev.keys != c.keys {
                            self.health.reset_channel(&c.name);
                        }
                    }
                }
                self.cache.resize(cache_budget(&runtime.cache));
                self.config.store(Arc::new(runtime));
                *loaded = text;
                let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
                self.metrics.config_version.set(version as i64);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(trigger, version, "config reloaded");
                Ok(ReloadOutcome::Reloaded { version })
            }
            Err(problems) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(trigger, %problems, "config rejected; the previous config keeps serving");
                Err(problems)
            }
        }
    }

    pub fn health_policy(rt: &Runtime) -> HealthPolicy {
        let h = &rt.server().health;
        HealthPolicy {
            failures: h.failures,
            cooldown: h.cooldown.0,
            max_cooldown: h.max_cooldown.0,
        }
    }

    /// Channels and keys with their health, for the admin API.
    pub fn channels_report(&self) -> serde_json::Value {
        let rt = self.snapshot();
        let channels: Vec<serde_json::Value> = rt
            .channels
            .iter()
            .map(|c| {
                let keys: Vec<serde_json::Value> = c
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        let r = self.health.report(&HealthId::key(&c.name, k));
                        serde_json::json!({"index": i, "hint": config::key_hint(k), "health": r})
                    })
                    .collect();
                let upstream = c.upstream.as_ref().map(|u| {
                    format!(
                        "{}://{}{}",
                        if u.tls { "https" } else { "http" },
                        u.authority,
                        u.base_path
                    )
                });
                let enabled = rt
                    .file
                    .channels
                    .iter()
                    .find(|f| f.name == c.name)
                    .map(|f| f.enabled);
                serde_json::json!({
                    "name": c.name,
                    "type": c.kind.as_str(),
                    "upstream": upstream,
                    "enabled": enabled,
                    "priority": c.priority,
                    "weight": c.weight,
                    "retries": c.retries,
                    "models": c.exposed,
                    "health": self.health.report(&HealthId::channel(&c.name)),
                    "keys": keys,
                })
            })
            .collect();
        serde_json::json!({"version": self.version(), "channels": channels})
    }

    /// Sets the health gauges from the registry, dropping series of removed channels.
    pub fn refresh_health_gauges(&self) {
        let rt = self.snapshot();
        let m = &self.metrics;
        m.channel_up.reset();
        m.channel_state.reset();
        m.key_up.reset();
        for c in &rt.channels {
            let state = self.health.report(&HealthId::channel(&c.name)).state;
            m.channel_up
                .with_label_values(&[c.name.as_str()])
                .set(i64::from(state != HealthState::Suspended));
            for s in [
                HealthState::Healthy,
                HealthState::Suspended,
                HealthState::Probing,
            ] {
                m.channel_state
                    .with_label_values(&[c.name.as_str(), s.as_str()])
                    .set(i64::from(s == state));
            }
            for (i, k) in c.keys.iter().enumerate() {
                let st = self.health.report(&HealthId::key(&c.name, k)).state;
                m.key_up
                    .with_label_values(&[c.name.as_str(), i.to_string().as_str()])
                    .set(i64::from(st != HealthState::Suspended));
            }
        }
    }
}
