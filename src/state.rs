//! Process-wide state, one field per concern: the config in force (swapped whole by
//! reloads) and the long-lived parts that must survive a reload (health, DNS,
//! connection pool, metrics, accounts, store, cache). Rendering it for the admin API
//! lives in `admin_backend`, its gauges in `metrics`.

use crate::accounts::Accounts;
use crate::cache::{CacheStore, MemoryCache};
use crate::dns::DnsCache;
use crate::metrics::Metrics;
use crate::shared::{cache::SharedCache, Shared};
use crate::snapshot::ConfigCell;
pub use crate::snapshot::ReloadOutcome;
use crate::store::Store;
use pingora_core::connectors::TransportConnector;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use weir_filters::config::{Runtime, ServerConfig};
use weir_filters::health::HealthRegistry;

pub struct AppState {
    /// The config in force and its version.
    pub config: ConfigCell,
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
    /// Counting shared with the other instances on `storage.redis` (S1).
    pub shared: Option<Arc<Shared>>,
    /// The last background probe of each suspended channel.
    pub probes: crate::proxy::probe::Probes,
    /// New keys waiting to be mailed (K2).
    pub outbox: crate::mail::Outbox,
    /// The bot webhooks' events seen and tokens held (A9).
    pub bots: crate::proxy::feishu_api::Bots,
    /// Where the proxy listener is bound, for the calls weir makes to itself.
    proxy_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// The store's entity change count the snapshot was last built with.
    entities_applied: AtomicU64,
    /// Set when a graceful stop's grace period is about to end: open streams are
    /// cut then, and their usage written, before the process leaves.
    pub stopping: tokio::sync::watch::Sender<bool>,
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
        // The files themselves are watched and reread; which files, and whether
        // there is TLS at all, is fixed when the listeners start.
        ("server.tls", old.tls != new.tls),
        ("server.h2c", old.h2c != new.h2c),
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
        metrics.config_version.set(1);
        let shared = match &runtime.file.storage.redis {
            Some(redis) => Some(Shared::start(
                redis,
                metrics.backend_up.with_label_values(&["redis"]),
            )?),
            None => None,
        };
        let budget = cache_budget(&runtime.cache);
        let cache: Arc<dyn CacheStore> = match &shared {
            Some(s) => Arc::new(SharedCache::new(s.clone(), budget)),
            None => Arc::new(MemoryCache::new(budget)),
        };
        let state = AppState {
            cache,
            shared,
            config: ConfigCell::new(config_path, text, runtime),
            health: HealthRegistry::default(),
            dns: DnsCache::default(),
            connector,
            metrics,
            accounts,
            store,
            entities_applied: AtomicU64::new(0),
            probes: Default::default(),
            outbox: Default::default(),
            bots: Default::default(),
            proxy_addr: Default::default(),
            stopping: tokio::sync::watch::channel(false).0,
        };
        let rt = state.snapshot();
        for c in rt.channels.iter().filter(|c| c.starts_suspended) {
            state.suspend_new(&rt, c);
        }
        Ok(state)
    }

    /// Records the proxy listener's bound address (once, at start).
    pub fn set_proxy_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.proxy_addr.set(addr);
    }

    /// The proxy listener as weir itself reaches it: loopback when it listens on
    /// every address.
    pub fn proxy_addr(&self) -> Option<std::net::SocketAddr> {
        let mut addr = *self.proxy_addr.get()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Some(addr)
    }

    /// The config every phase of one request uses, start to end.
    pub fn snapshot(&self) -> Arc<Runtime> {
        self.config.snapshot()
    }

    pub fn version(&self) -> u64 {
        self.config.version()
    }

    /// Re-reads, validates and swaps in the config file, carrying health and the
    /// cache over. On any problem the current config stays and the problems are
    /// returned.
    pub fn reload(&self, trigger: &str) -> Result<ReloadOutcome, String> {
        let result = self
            .config
            .reload(trigger, |old, new| self.carry_over(old, new));
        match &result {
            Ok(ReloadOutcome::Reloaded { version }) => {
                self.metrics.config_version.set(*version as i64);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(trigger, version, "config reloaded");
            }
            Ok(ReloadOutcome::Unchanged { .. }) => {}
            Err(problems) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(trigger, %problems, "config rejected; the previous config keeps serving");
            }
        }
        result
    }

    /// Rebuilds the snapshot when the store's channels or gateways changed since it
    /// was built (A1): right after an admin write, and polled for other writers.
    pub fn restock(&self, trigger: &str) -> Result<ReloadOutcome, String> {
        let (n, stored) = self.store.entities().get();
        if self.entities_applied.load(Ordering::Acquire) == n {
            return Ok(ReloadOutcome::Unchanged {
                version: self.version(),
            });
        }
        let result = self
            .config
            .restock((*stored).clone(), |old, new| self.carry_over(old, new));
        match &result {
            Ok(ReloadOutcome::Reloaded { version }) => {
                self.entities_applied.store(n, Ordering::Release);
                self.metrics.config_version.set(*version as i64);
                tracing::info!(trigger, version, "stored channels and gateways loaded");
            }
            Ok(ReloadOutcome::Unchanged { .. }) => {}
            Err(problems) => {
                // Marked as seen: the same entities are not rebuilt (and logged) again
                // until they change.
                self.entities_applied.store(n, Ordering::Release);
                tracing::error!(trigger, %problems, "stored entities rejected; the previous snapshot keeps serving");
            }
        }
        result
    }

    /// What outlives a snapshot, fitted to the next one: health of removed channels
    /// goes, a channel pointed elsewhere or given other keys starts with a clean slate.
    /// A channel configured `suspended: true` enters suspended, once: from then on
    /// health decides, as for any channel.
    fn suspend_new(&self, rt: &Runtime, c: &weir_filters::config::Channel) {
        let policy = weir_filters::health::HealthPolicy::from(&rt.server().health);
        self.health
            .suspend(&weir_filters::health::HealthId::channel(&c.name), &policy);
        tracing::info!(channel = %c.name, "channel starts suspended, as configured");
        if c.source == weir_filters::config::Source::Store {
            self.store.consume_suspended(&c.name, rt.file.clone());
        }
    }

    fn carry_over(&self, old: &Runtime, new: &Runtime) {
        warn_restart_only(old.server(), new.server());
        let (was, now) = (&old.file.storage, &new.file.storage);
        let storage = [
            ("storage.sqlite", was.sqlite != now.sqlite),
            ("storage.postgres", was.postgres != now.postgres),
            ("storage.redis", was.redis != now.redis),
            ("storage.secret_key", was.secret_key != now.secret_key),
        ];
        for (field, _) in storage.iter().filter(|(_, c)| *c) {
            tracing::warn!(field, "changed in the file; takes effect on restart");
        }
        let names: Vec<&str> = new.channels.iter().map(|c| c.name.as_str()).collect();
        self.health.retain_channels(&names);
        for c in &new.channels {
            match old.channels.iter().find(|p| p.name == c.name) {
                Some(prev) if prev.upstream != c.upstream || prev.keys != c.keys => {
                    self.health.reset_channel(&c.name);
                }
                Some(_) => {}
                None if c.starts_suspended => self.suspend_new(new, c),
                None => {}
            }
        }
        self.cache.resize(cache_budget(&new.cache));
        self.store.retention().set(&new.file.logs);
    }
}
