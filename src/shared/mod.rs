//! Counting shared by every instance on one Redis (S1, `storage.redis`): rate
//! limits, token quotas, spend and balances in one script per admission
//! (`admission`), and the response cache (`cache`).
//!
//! Redis is never in the way of an answer: every call has `storage.redis.timeout`,
//! and a failed or slow one flips this instance to local counting (logged once,
//! `weir_backend_up{backend="redis"} 0`, `/health` degraded) until a background
//! PING every 500 ms finds Redis again. Charges made meanwhile are kept (by key,
//! bounded) and added when it returns.

pub mod admission;
pub mod cache;
pub mod health;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_filters::config::RedisConfig;

/// How often a lost Redis is tried again (and a live one pinged).
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Distinct figures whose charges are kept while Redis is away.
const PENDING_MAX: usize = 100_000;

/// The most a thread's first call waits for its own connection.
const LOCAL_CONNECT: Duration = Duration::from_millis(250);

thread_local! {
    /// Each thread's connection: (generation, instance, connection).
    static LOCAL: std::cell::RefCell<Option<(u64, u64, MultiplexedConnection)>> =
        const { std::cell::RefCell::new(None) };
}

/// Kept charges added per call when Redis is back.
const ADD_BATCH: usize = 512;

pub struct Shared {
    client: redis::Client,
    config: RedisConfig,
    conn: ArcSwapOption<MultiplexedConnection>,
    up: AtomicBool,
    /// Deltas not yet added to Redis, by key: charges made while it was away.
    pending: Mutex<HashMap<String, i64>>,
    gauge: prometheus::IntGauge,
    scripts: admission::Scripts,
    batch: admission::Batch,
    /// Tells this instance's own health messages from the others'.
    instance: u64,
    /// Moves at every loss: threads then drop the connection they hold.
    generation: std::sync::atomic::AtomicU64,
    health_outbox: std::sync::OnceLock<Mutex<Option<tokio::sync::mpsc::Receiver<String>>>>,
    health_apply: std::sync::OnceLock<health::Apply>,
}

impl Shared {
    /// Connects (waiting at most a second: a Redis down at start is only
    /// degraded mode) and starts the thread that keeps the connection.
    pub fn start(config: &RedisConfig, gauge: prometheus::IntGauge) -> Result<Arc<Shared>, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("storage.redis.url: `{}`: {e}", config.redacted_url()))?;
        gauge.set(0);
        let shared = Arc::new(Shared {
            client,
            config: config.clone(),
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            gauge,
            scripts: admission::Scripts::new(),
            batch: Default::default(),
            instance: rand::random(),
            generation: Default::default(),
            health_outbox: Default::default(),
            health_apply: Default::default(),
        });
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let watcher = shared.clone();
        std::thread::Builder::new()
            .name("weir-redis".into())
            .spawn(move || {
                // The connection's own task lives on this runtime; requests on
                // Pingora's runtimes only send to it and wait for the answer.
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the Redis thread");
                        return;
                    }
                };
                rt.block_on(async move {
                    tokio::spawn(watcher.clone().publish_findings());
                    tokio::spawn(watcher.clone().listen_findings());
                    watcher.watch(first_tx).await
                });
            })
            .map_err(|e| format!("cannot start the Redis thread: {e}"))?;
        let _ = first_rx.recv_timeout(Duration::from_secs(2));
        Ok(shared)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// Runs one call under the timeout; `None` (and local counting until Redis
    /// answers a PING again) when Redis is away, slow or failing.
    pub async fn run<T, F, Fut>(&self, what: &'static str, call: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        let conn = self.local_conn().await?;
        match tokio::time::timeout(self.config.timeout.0, call(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.down(what, &e.to_string());
                None
            }
            Err(_) => {
                self.down(what, "timed out");
                None
            }
        }
    }

    /// A call whose failure says little about Redis (a large cached answer that
    /// is slow to move): its own, longer timeout, and no fallback to local
    /// counting for it.
    pub async fn run_quiet<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        let conn = self.local_conn().await?;
        let timeout = (self.config.timeout.0 * 10).max(Duration::from_millis(50));
        match tokio::time::timeout(timeout, call(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Redis cache call failed");
                None
            }
            Err(_) => None,
        }
    }

    /// This thread's connection, made on its runtime the first time (and again
    /// after a loss): a request then talks to Redis without waking another thread,
    /// which cost more than the call itself on a busy machine.
    async fn local_conn(&self) -> Option<MultiplexedConnection> {
        let generation = self.generation.load(Ordering::Acquire);
        let held = LOCAL.with(|l| {
            l.borrow()
                .as_ref()
                .filter(|(g, i, _)| *g == generation && *i == self.instance)
                .map(|(_, _, c)| c.clone())
        });
        if held.is_some() {
            return held;
        }
        let connect = self.client.get_multiplexed_async_connection();
        match tokio::time::timeout(LOCAL_CONNECT, connect).await {
            Ok(Ok(conn)) => {
                LOCAL.with(|l| *l.borrow_mut() = Some((generation, self.instance, conn.clone())));
                Some(conn)
            }
            Ok(Err(e)) => {
                self.down("connect", &e.to_string());
                None
            }
            Err(_) => {
                self.down("connect", "timed out");
                None
            }
        }
    }

    fn down(&self, what: &str, why: &str) {
        // Every thread makes a new connection once Redis is back.
        self.generation.fetch_add(1, Ordering::AcqRel);
        if self.up.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            tracing::warn!(
                call = what,
                error = why,
                "Redis lost: counting on this instance alone until it answers again"
            );
        }
    }

    /// Keeps a delta for when Redis is back (a charge it missed).
    fn keep(&self, deltas: &[(String, i64)]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (key, d) in deltas.iter().filter(|(_, d)| *d != 0) {
            if pending.len() >= PENDING_MAX && !pending.contains_key(key) {
                continue;
            }
            *pending.entry(key.clone()).or_default() += d;
        }
    }

    /// Reconnects when Redis is lost, pings it when not; adds the kept charges
    /// before counting is shared again.
    async fn watch(self: Arc<Self>, first: std::sync::mpsc::Sender<()>) {
        let mut first = Some(first);
        loop {
            let alive = match self.conn.load_full() {
                Some(conn) => self.ping((*conn).clone()).await,
                None => false,
            };
            if !alive {
                self.down("ping", "no answer");
                match self.connect().await {
                    Ok(conn) => {
                        self.conn.store(Some(Arc::new(conn)));
                        self.recover().await;
                    }
                    Err(e) => tracing::debug!(error = %e, "Redis still away"),
                }
            } else if !self.is_up() {
                self.recover().await;
            }
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let connect = self.client.get_multiplexed_async_connection();
        match tokio::time::timeout(Duration::from_secs(1), connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }

    async fn ping(&self, mut conn: MultiplexedConnection) -> bool {
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(self.config.timeout.0.max(Duration::from_millis(200)), ping).await,
            Ok(Ok(_))
        )
    }

    /// Adds the charges kept while Redis was away, then shares counting again.
    async fn recover(&self) {
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let mut conn = (*conn).clone();
        if !self.add_kept(&mut conn).await {
            return;
        }
        if !self.up.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            tracing::info!(url = %self.config.redacted_url(), "Redis up: counting is shared");
        }
        // Charges kept while the first batch was out, before `up` was set.
        self.add_kept(&mut conn).await;
    }

    /// Adds every kept charge; false when Redis refuses (they stay kept).
    async fn add_kept(&self, conn: &mut MultiplexedConnection) -> bool {
        loop {
            let kept: Vec<(String, i64)> =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
                    .into_iter()
                    .collect();
            if kept.is_empty() {
                return true;
            }
            for (i, chunk) in kept.chunks(ADD_BATCH).enumerate() {
                if let Err(e) = self.scripts.add(conn, chunk).await {
                    tracing::warn!(error = %e, "Redis answers PING but not scripts; still local");
                    self.keep(&kept[i * ADD_BATCH..]);
                    return false;
                }
            }
        }
    }
}
