//! The SQLite store (keys, groups, models, usage, counters). One thread owns the
//! connection and does every write: usage in batches every `flush_interval`, admin
//! writes as they come (each followed by a fresh snapshot for the proxy), and it
//! notices writes by other processes (`weir keys`) through `meta.version`.
//! The request path never waits for it.

pub mod calllog;
pub mod db;
pub mod entities;
pub mod mail;
pub mod one_api;
pub mod ops;
pub mod postgres;
pub mod queries;
pub mod schema;
pub mod sealed;
pub mod sqlite;

use crate::accounts::{month_of, now_ms, now_unix, Accounts, BucketRow, KeyMoney, Log};
use crate::args;
use arc_swap::ArcSwap;
use db::Sql;
use schema::Target;
use sealed::Sealer;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use weir_filters::calllog::{ExportFormat, LogQuery};
use weir_filters::config::{FileConfig, LogsConfig, Stored};
use weir_filters::rolling::{RollingLog, Window as RollingWindow};
use weir_filters::GatewayError;

/// One request that reached a gateway, as the call log keeps it (refused ones
/// too); the usage reports read the same rows.
#[derive(Debug, Clone, Default)]
pub struct UsageEvent {
    pub ts: i64,
    pub key_id: Option<i64>,
    /// The caller for regex and JWT gateways (a JWT claim, or a key's hash prefix).
    pub identity: Option<String>,
    pub gateway: String,
    /// The model name as the client asked for it (`""` when it never said).
    pub model: String,
    pub channel: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
    pub estimated: bool,
    pub status: u16,
    pub latency_ms: u64,
    pub stream: bool,
    /// The name the channel was sent, when it differs from `model`.
    pub upstream_model: Option<String>,
    /// The channel's base URL (never a key).
    pub upstream: Option<std::sync::Arc<str>>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub ttft_ms: Option<u64>,
    /// `hit`, `miss` or `off`.
    pub cache: &'static str,
    /// The attempts in order, when there was more than one or none answered.
    pub tried: Option<String>,
    /// A failed call's bodies, kept for `logs.keep_failed_bodies`.
    pub bodies: Option<Box<FailedBodies>>,
    /// The client's address (through `server.trusted_proxies`).
    pub client_ip: Option<String>,
    /// What data masking replaced, `email:2,phone:1` (never the values).
    pub masked: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FailedBodies {
    pub request: Option<Vec<u8>>,
    pub error: Option<Vec<u8>>,
}

/// Runs on the store thread; what it returns is run after the snapshot refresh
/// (it sends the answer, so a caller never sees a stale snapshot).
type Job = Box<dyn FnOnce(&mut dyn Sql) -> Box<dyn FnOnce() + Send> + Send>;

enum Cmd {
    /// An admin write or read; the snapshot is refreshed after it.
    Run(Job, bool),
    Shutdown,
}

pub struct Store {
    /// Finished requests wait here for the next flush: a push takes an uncontended
    /// lock and never wakes the store thread (a channel send would, per request).
    queue: Arc<Mutex<Vec<UsageEvent>>>,
    tx: mpsc::Sender<Cmd>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Connections for reports: long reads never hold up the writer (SQLite's WAL
    /// lets them run side by side), so usage keeps being written every interval.
    readers: Arc<Readers>,
    /// The database, for exports on a connection of their own.
    target: Target,
    backlog: Arc<Backlog>,
    retention: Arc<Retention>,
    entities: Arc<Entities>,
    sealer: Option<Arc<Sealer>>,
}

/// The stored channels and gateways as last read, and a count of their changes:
/// the gateway rebuilds its snapshot when the count moves (an admin write here, or
/// another process's).
pub struct Entities {
    current: ArcSwap<Stored>,
    changes: AtomicU64,
    /// Their last serialisation: a refresh that changed nothing is not a change.
    last: Mutex<String>,
}

impl Entities {
    fn new() -> Entities {
        Entities {
            current: ArcSwap::from_pointee(Stored::default()),
            changes: AtomicU64::new(0),
            last: Mutex::new(Self::text(&Stored::default())),
        }
    }

    fn text(stored: &Stored) -> String {
        format!(
            "{:?}",
            (&stored.channels, &stored.gateways, &stored.webhooks)
        )
    }

    /// Sets them; true when they differ from before.
    fn set(&self, stored: Stored) -> bool {
        let text = Self::text(&stored);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == text {
            return false;
        }
        *last = text;
        self.current.store(Arc::new(stored));
        self.changes.fetch_add(1, Ordering::Release);
        true
    }

    /// The entities and the change count they belong to.
    pub fn get(&self) -> (u64, Arc<Stored>) {
        let n = self.changes.load(Ordering::Acquire);
        (n, self.current.load_full())
    }
}

/// Connections for reports, beside the writer's: a long report holds up neither
/// the writer nor (up to their number) the other reports.
pub struct Readers {
    conns: Vec<Mutex<Box<dyn Sql>>>,
    next: AtomicUsize,
}

/// Report connections per process.
const READERS: usize = 2;

impl Readers {
    fn open(target: &Target, n: usize) -> Result<Readers, String> {
        let conns = (0..n.max(1))
            .map(|_| target.open().map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Readers {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// A free connection, or the next in turn when all are busy.
    fn take(&self) -> std::sync::MutexGuard<'_, Box<dyn Sql>> {
        for c in &self.conns {
            if let Ok(guard) = c.try_lock() {
                return guard;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Usage rows not yet written because the database is away (PostgreSQL lost):
/// kept, up to `BACKLOG_MAX`, and written when it answers again.
#[derive(Debug)]
pub struct Backlog {
    up: AtomicBool,
    queued: AtomicUsize,
    dropped: AtomicU64,
}

/// Usage rows kept while the database is away (about 1 KiB each: a failed call's
/// bodies are not kept meanwhile).
const BACKLOG_MAX: usize = 1_000_000;

/// Rows written per transaction when a backlog is caught up.
const FLUSH_CHUNK: usize = 10_000;

impl Default for Backlog {
    fn default() -> Self {
        Backlog {
            up: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Backlog {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Rows waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Rows given up because the backlog was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn failed(&self, e: &dyn std::fmt::Display, rows: usize) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %e, rows, "the store does not answer: usage is kept until it does");
        }
        self.queued.store(rows, Ordering::Relaxed);
    }

    /// The store answered a read: up again even with nothing to write.
    fn reachable(&self) {
        if self.queued() == 0 {
            self.written();
        }
    }

    fn written(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("the store answers again");
        }
        self.queued.store(0, Ordering::Relaxed);
    }

    /// Drops the oldest rows beyond the bound (counted, never silent), and the
    /// bodies of failed calls kept for debugging (up to 2 × `logs.max_body` each:
    /// a backlog of them would not fit in memory).
    fn bound(&self, pending: &mut Vec<UsageEvent>) {
        for ev in pending.iter_mut() {
            ev.bodies = None;
        }
        if pending.len() > BACKLOG_MAX {
            let over = pending.len() - BACKLOG_MAX;
            pending.drain(..over);
            self.dropped.fetch_add(over as u64, Ordering::Relaxed);
            tracing::warn!(rows = over, "usage backlog full: oldest rows dropped");
        }
        self.queued.store(pending.len(), Ordering::Relaxed);
    }
}

/// How long the call log keeps rows and failed calls' bodies; a reload changes it.
pub struct Retention {
    rows_secs: AtomicI64,
    bodies_secs: AtomicI64,
}

impl Retention {
    fn new(logs: &LogsConfig) -> Retention {
        let r = Retention {
            rows_secs: AtomicI64::new(0),
            bodies_secs: AtomicI64::new(0),
        };
        r.set(logs);
        r
    }

    pub fn set(&self, logs: &LogsConfig) {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        self.rows_secs.store(secs(logs.keep.0), Ordering::Relaxed);
        self.bodies_secs
            .store(secs(logs.keep_failed_bodies.0), Ordering::Relaxed);
    }

    /// The times before which rows and bodies go.
    fn horizons(&self, now: i64) -> (i64, i64) {
        (
            now.saturating_sub(self.rows_secs.load(Ordering::Relaxed)),
            now.saturating_sub(self.bodies_secs.load(Ordering::Relaxed)),
        )
    }
}

/// Time the writer spends pruning the call log per second at most.
const LOG_PRUNE_BUDGET: Duration = Duration::from_millis(100);

/// Usage events the queue starts with room for.
const BATCH: usize = 4096;

impl Store {
    /// Opens (creating and migrating) the database, loads keys, money and counters
    /// into `accounts`, and starts the store thread.
    pub fn open(
        target: &Target,
        flush_interval: Duration,
        logs: &LogsConfig,
        secret_key: Option<&str>,
        accounts: Arc<Accounts>,
    ) -> Result<Store, String> {
        let sealer = secret_key
            .filter(|k| !k.is_empty())
            .map(Sealer::new)
            .transpose()?
            .map(Arc::new);
        let entities = Arc::new(Entities::new());
        let path = target.shown();
        let mut conn = target.open()?;
        let lost = mail::abandon_queued(&mut *conn, now_unix())
            .map_err(|e| format!("cannot open the mail outbox of {path}: {e}"))?;
        if lost > 0 {
            tracing::warn!(
                mails = lost,
                "mail left queued by the last run is marked failed"
            );
        }
        let readers = Arc::new(Readers::open(target, READERS)?);
        let backlog = Arc::new(Backlog::default());
        let queue = Arc::new(Mutex::new(Vec::with_capacity(BATCH)));
        let retention = Arc::new(Retention::new(logs));
        let mut worker = Worker {
            entities: entities.clone(),
            sealer: sealer.clone(),
            retention: retention.clone(),
            last_log_prune: Instant::now(),
            queue: queue.clone(),
            conn,
            backlog: backlog.clone(),
            accounts,
            pending: Vec::new(),
            seen_version: 0,
            flush_interval,
            last_prune: Instant::now(),
            last_refresh: Instant::now(),
        };
        worker
            .refresh()
            .map_err(|e| format!("cannot load {path}: {e}"))?;
        worker
            .load_counters()
            .map_err(|e| format!("cannot load {path}: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("weir-store".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| format!("cannot start the store thread: {e}"))?;
        Ok(Store {
            queue,
            tx,
            thread: Mutex::new(Some(thread)),
            readers,
            target: target.clone(),
            backlog,
            retention,
            entities,
            sealer,
        })
    }

    /// Queues a finished request's usage; written at the next flush.
    pub fn record(&self, ev: UsageEvent) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ev);
    }

    /// Runs `f` on the store's connection (after the queued usage is written).
    /// `writes`: refresh the proxy's snapshot afterwards.
    pub async fn call<T, F>(&self, writes: bool, f: F) -> Result<T, GatewayError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Sql) -> Result<T, GatewayError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            Box::new(move || {
                let _ = reply.send(result);
            })
        });
        self.tx
            .send(Cmd::Run(job, writes))
            .map_err(|_| GatewayError::Internal("the store is shut down".into()))?;
        answer
            .await
            .map_err(|_| GatewayError::Internal("the store dropped the request".into()))?
    }

    /// Runs a read-only report on a report connection, off the async workers.
    pub async fn read<T, F>(&self, f: F) -> Result<T, GatewayError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Sql) -> Result<T, GatewayError> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = readers.take();
            f(&mut **conn)
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("report failed: {e}")))?
    }

    /// The stored channels and gateways (A1).
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    /// Makes one change to the stored channels and gateways, checked against the
    /// whole config with `file`; returns them as they now are.
    pub async fn change_entities(
        &self,
        change: entities::Change,
        file: FileConfig,
    ) -> Result<Arc<Stored>, GatewayError> {
        let sealer = self.sealer.clone();
        let entities = self.entities.clone();
        self.call(true, move |conn| {
            let stored = entities::apply(conn, change, sealer.as_deref(), &file, now_unix())?;
            entities.set(stored);
            Ok(entities.get().1)
        })
        .await
    }

    /// Takes `suspended: true` off a stored channel once it has entered suspended:
    /// the flag means "start out of rotation", not "every start". Runs on the store
    /// thread without waiting (snapshot builds call it, outside any runtime).
    pub fn consume_suspended(&self, name: &str, file: FileConfig) {
        let (sealer, entities, name) =
            (self.sealer.clone(), self.entities.clone(), name.to_string());
        let job: Job = Box::new(move |conn| {
            let mut patch = serde_json::Map::new();
            patch.insert("suspended".into(), serde_json::Value::Null);
            let change = entities::Change::PatchChannel(name.clone(), patch);
            match entities::apply(conn, change, sealer.as_deref(), &file, now_unix()) {
                Ok(stored) => {
                    entities.set(stored);
                }
                Err(e) => tracing::warn!(channel = %name, error = %e, "cannot clear `suspended`"),
            }
            Box::new(|| {})
        });
        let _ = self.tx.send(Cmd::Run(job, true));
    }

    /// Applies a One API import's plan (A7) in one transaction; returns its report.
    pub async fn import_one_api(
        &self,
        plan: crate::one_api::Plan,
        file: FileConfig,
        dry_run: bool,
    ) -> Result<serde_json::Value, GatewayError> {
        let sealer = self.sealer.clone();
        let entities = self.entities.clone();
        self.call(!dry_run, move |conn| {
            let done = one_api::apply(conn, &plan, sealer.as_deref(), &file, dry_run, now_unix())?;
            if !dry_run {
                entities.set(done.stored);
            }
            Ok(done.report)
        })
        .await
    }

    /// Usage waiting for the database, and whether it answers.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// How long the call log keeps what; a reload sets it.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Streams the rows a log query selects, on a read-only connection of its own:
    /// a long export holds up neither the writer nor the other reports.
    pub fn export(
        &self,
        q: LogQuery,
        format: ExportFormat,
    ) -> tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || {
            let result = target.open_read_only().and_then(|mut conn| {
                calllog::export(&mut *conn, q, format, |chunk| {
                    tx.blocking_send(Ok(chunk.into())).is_ok()
                })
                .map_err(|e| e.to_string())
            });
            if let Err(e) = result {
                tracing::warn!(error = %e, "call log export failed");
                let _ = tx.blocking_send(Err(e));
            }
        });
        rx
    }

    /// Writes everything queued and stops the thread (graceful stop).
    pub fn shutdown(&self) {
        let _ = self.tx.send(Cmd::Shutdown);
        // The lock is held through the join: a second caller (the idle exit and
        // the end of `run_forever` can both get here) waits for the last rows to
        // be written instead of returning, and exiting, while they are.
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    queue: Arc<Mutex<Vec<UsageEvent>>>,
    conn: Box<dyn Sql>,
    backlog: Arc<Backlog>,
    accounts: Arc<Accounts>,
    pending: Vec<UsageEvent>,
    /// `meta.version` as of the last snapshot.
    seen_version: i64,
    flush_interval: Duration,
    last_prune: Instant,
    /// When keys, entities and money were last read in.
    last_refresh: Instant,
    retention: Arc<Retention>,
    last_log_prune: Instant,
    entities: Arc<Entities>,
    sealer: Option<Arc<Sealer>>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut next_flush = Instant::now() + self.flush_interval;
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Cmd::Run(job, writes)) => {
                    self.flush();
                    let answer = job(&mut *self.conn);
                    if writes {
                        self.refresh_or_log();
                    }
                    answer();
                }
                Ok(Cmd::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    // Whatever is still queued goes in too, admin jobs included.
                    while let Ok(cmd) = rx.try_recv() {
                        match cmd {
                            Cmd::Run(job, writes) => {
                                self.flush();
                                let answer = job(&mut *self.conn);
                                if writes {
                                    self.refresh_or_log();
                                }
                                answer();
                            }
                            Cmd::Shutdown => {}
                        }
                    }
                    self.flush();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_flush {
                self.flush();
                self.prune_log();
                self.notice_other_writers();
                next_flush = Instant::now() + self.flush_interval;
            }
        }
    }

    fn refresh_or_log(&mut self) {
        self.last_refresh = Instant::now();
        if let Err(e) = self.refresh() {
            tracing::error!(error = %e, "cannot refresh keys from the store");
        }
    }

    /// Another process (`weir keys …`) wrote: take its changes in.
    fn notice_other_writers(&mut self) {
        // Other instances on one PostgreSQL spend without bumping the version:
        // their money is read in every second, so budgets hold across them.
        let shared = self.conn.dialect() == db::Dialect::Postgres;
        let stale = shared && self.last_refresh.elapsed() >= Duration::from_secs(1);
        match ops::meta_version(&mut *self.conn) {
            Ok(v) => {
                self.backlog.reachable();
                if v != self.seen_version || stale {
                    self.refresh_or_log();
                }
            }
            // An idle instance learns of a lost store here, not from a flush.
            Err(e) => self.backlog.failed(&e, self.pending.len()),
        }
    }

    /// Reloads keys, groups and models, and sets the ledger to the stored money plus
    /// what this process counted and has not written yet.
    fn refresh(&mut self) -> Result<(), GatewayError> {
        let version = ops::meta_version(&mut *self.conn)?;
        let snap = ops::load_snapshot(&mut *self.conn)?;
        self.entities
            .set(entities::load(&mut *self.conn, self.sealer.as_deref())?);
        let month = month_of(now_unix());
        let money = ops::load_money(&mut *self.conn, month)?;
        {
            let mut ledger = self
                .accounts
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let old = std::mem::take(&mut ledger.keys);
            for (id, balance) in money.balances {
                let unflushed = old.get(&id).map(|m| m.unflushed).unwrap_or(0.0);
                ledger.keys.insert(
                    id,
                    KeyMoney {
                        balance: balance.map(|b| b - unflushed),
                        month,
                        spent: money.spent.get(&id).copied().unwrap_or(0.0) + unflushed,
                        unflushed,
                    },
                );
            }
            for (g, t) in &mut ledger.gateways {
                t.used = money.gateway_tokens.get(g).copied().unwrap_or(0) + t.unflushed;
            }
            for (g, used) in money.gateway_tokens {
                ledger
                    .gateways
                    .entry(g)
                    .or_insert(crate::accounts::GatewayTokens { used, unflushed: 0 });
            }
        }
        self.accounts.replace(snap);
        self.seen_version = version;
        Ok(())
    }

    fn load_counters(&mut self) -> Result<(), GatewayError> {
        let mut per_key: HashMap<String, (u64, Vec<(u64, u32)>)> = HashMap::new();
        for row in ops::load_rate_buckets(&mut *self.conn, now_ms())? {
            let e = per_key
                .entry(row.key)
                .or_insert((row.window_ms, Vec::new()));
            e.1.push((row.bucket, row.count));
        }
        let mut c = self
            .accounts
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (key, (window_ms, buckets)) in per_key {
            // The rule's limit is set again at the log's next check.
            let window = RollingWindow {
                limit: u32::MAX,
                window_ms,
            };
            let log = RollingLog::from_buckets(buckets);
            c.logs.insert(key, Log { log, window });
        }
        Ok(())
    }

    /// Writes queued usage and changed counters in one transaction.
    fn flush(&mut self) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if self.pending.is_empty() {
                std::mem::swap(&mut self.pending, &mut *queue);
            } else {
                self.pending.append(&mut queue);
            }
        }
        let dirty: Vec<BucketRow> = {
            let mut c = self
                .accounts
                .counters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let dirty = std::mem::take(&mut c.dirty);
            dirty
                .into_iter()
                .filter_map(|(key, bucket)| c.stored(&key, bucket))
                .collect()
        };
        if self.pending.is_empty() && dirty.is_empty() {
            self.prune();
            return;
        }
        let mut events = std::mem::take(&mut self.pending);
        // A backlog goes in chunks: never one transaction of a million rows.
        let mut buckets = dirty;
        loop {
            let n = events.len().min(FLUSH_CHUNK);
            let chunk: Vec<UsageEvent> = events.drain(..n).collect();
            match self.write_some(chunk, &buckets) {
                Ok(()) => self.backlog.written(),
                Err((mut unwritten, e)) => {
                    unwritten.append(&mut events);
                    self.backlog.failed(&e, unwritten.len());
                    self.pending = unwritten;
                    self.backlog.bound(&mut self.pending);
                    let mut c = self
                        .accounts
                        .counters
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    c.dirty
                        .extend(buckets.into_iter().map(|r| (r.key, r.bucket)));
                    break;
                }
            }
            buckets = Vec::new();
            if events.is_empty() {
                break;
            }
        }
        self.prune();
    }

    /// Writes `chunk` (and `buckets`); on a lost store hands back what is not
    /// written. A batch the store refuses for what is in it (not for being away)
    /// is written row by row, and a row it still refuses is dropped and counted:
    /// one bad row must not hold up every later one.
    fn write_some(
        &mut self,
        chunk: Vec<UsageEvent>,
        buckets: &[BucketRow],
    ) -> Result<(), (Vec<UsageEvent>, db::DbError)> {
        match write_batch(&mut *self.conn, &chunk, buckets) {
            Ok(()) => {
                self.settle(&chunk);
                return Ok(());
            }
            Err(e) if e.lost => return Err((chunk, e)),
            Err(e) => {
                tracing::error!(error = %e, rows = chunk.len(), "a usage batch was refused; writing its rows one by one")
            }
        }
        if let Err(e) = write_batch(&mut *self.conn, &[], buckets) {
            tracing::error!(error = %e, "rate-limit buckets refused; they are rebuilt as requests come");
        }
        let mut rest = chunk.into_iter();
        while let Some(ev) = rest.next() {
            match write_batch(&mut *self.conn, std::slice::from_ref(&ev), &[]) {
                Ok(()) => self.settle(std::slice::from_ref(&ev)),
                Err(e) if e.lost => {
                    let mut back = vec![ev];
                    back.extend(rest);
                    return Err((back, e));
                }
                Err(e) => {
                    self.backlog.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, gateway = %ev.gateway, "a usage row the store refuses is dropped");
                }
            }
        }
        Ok(())
    }

    /// Written: no longer "unflushed" in the ledger.
    fn settle(&self, events: &[UsageEvent]) {
        let mut per_key: HashMap<i64, f64> = HashMap::new();
        let mut per_gateway: HashMap<&str, u64> = HashMap::new();
        for ev in events {
            if let Some(id) = ev.key_id {
                *per_key.entry(id).or_default() += ev.cost;
            }
            *per_gateway.entry(ev.gateway.as_str()).or_default() +=
                ev.prompt_tokens + ev.completion_tokens;
        }
        let mut ledger = self
            .accounts
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (id, c) in per_key {
            if let Some(m) = ledger.keys.get_mut(&id) {
                m.unflushed = (m.unflushed - c).max(0.0);
            }
        }
        for (g, t) in per_gateway {
            if let Some(x) = ledger.gateways.get_mut(g) {
                x.unflushed = x.unflushed.saturating_sub(t);
            }
        }
    }

    /// Deletes call-log rows and bodies past their retention, a batch at a time, for
    /// at most `LOG_PRUNE_BUDGET` of each second: the next flush never waits long.
    fn prune_log(&mut self) {
        if self.last_log_prune.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_log_prune = Instant::now();
        let (rows, bodies) = self.retention.horizons(now_unix());
        let started = Instant::now();
        loop {
            match calllog::prune(&mut *self.conn, rows, bodies) {
                Ok(n)
                    if n as i64 >= calllog::PRUNE_BATCH && started.elapsed() < LOG_PRUNE_BUDGET => {
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune the call log");
                    return;
                }
            }
        }
    }

    /// Every minute, forgets the logs whose admissions have all left their
    /// windows and deletes the stored buckets that did (memory and table stay
    /// bounded by the callers active within their windows).
    fn prune(&mut self) {
        if self.last_prune.elapsed() < Duration::from_secs(60) {
            return;
        }
        self.last_prune = Instant::now();
        let now = now_ms();
        self.accounts
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .prune(now);
        if let Err(e) = self.conn.execute(
            "DELETE FROM rate_buckets WHERE expires_ms <= ?1",
            args![now],
        ) {
            tracing::warn!(error = %e, "cannot prune rate-limit buckets");
        }
    }
}

/// Usage, spend, balances, quotas and rate buckets of one flush, in one
/// transaction: all of it or none (then the batch is tried again).
fn write_batch(db: &mut dyn Sql, events: &[UsageEvent], buckets: &[BucketRow]) -> db::DbResult<()> {
    let mut tx = db.begin()?;
    // One row per request; the running totals once per key, month and gateway
    // per batch (three statements per request were half the writer's time).
    // Ordered maps: every instance on one PostgreSQL locks the rows in the same
    // order, so two flushes cannot deadlock.
    let mut spent: BTreeMap<(i64, u32), f64> = BTreeMap::new();
    let mut gateway_tokens: BTreeMap<&str, u64> = BTreeMap::new();
    calllog::insert_rows(&mut *tx, events)?;
    for ev in events {
        if let Some(id) = ev.key_id {
            if ev.cost > 0.0 {
                *spent.entry((id, month_of(ev.ts))).or_default() += ev.cost;
            }
        }
        let t = ev.prompt_tokens + ev.completion_tokens;
        if t > 0 {
            *gateway_tokens.entry(ev.gateway.as_str()).or_default() += t;
        }
    }
    let mut per_key: BTreeMap<i64, f64> = BTreeMap::new();
    for ((id, month), cost) in spent {
        tx.execute(
            "INSERT INTO spend (key_id, month, cost) VALUES (?1, ?2, ?3)
             ON CONFLICT (key_id, month) DO UPDATE SET cost = spend.cost + excluded.cost",
            args![id, month, cost],
        )?;
        *per_key.entry(id).or_default() += cost;
    }
    for (id, cost) in per_key {
        tx.execute(
            "UPDATE keys SET balance = balance - ?1 WHERE id = ?2 AND balance IS NOT NULL",
            args![cost, id],
        )?;
    }
    for (gateway, t) in gateway_tokens {
        tx.execute(
            "INSERT INTO gateway_tokens (gateway, tokens) VALUES (?1, ?2)
             ON CONFLICT (gateway) DO UPDATE SET tokens = gateway_tokens.tokens + excluded.tokens",
            args![gateway, t],
        )?;
    }
    for b in buckets {
        if b.count == 0 {
            tx.execute(
                "DELETE FROM rate_buckets WHERE key = ?1 AND bucket = ?2",
                args![&b.key, b.bucket],
            )?;
        } else {
            tx.execute(
                "INSERT INTO rate_buckets (key, bucket, count, window_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (key, bucket) DO UPDATE SET count = excluded.count",
                args![&b.key, b.bucket, b.count, b.window_ms, b.expires_ms],
            )?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn event(key_id: Option<i64>, ts: i64, cost: f64, gateway: &str) -> UsageEvent {
        UsageEvent {
            ts,
            key_id,
            gateway: gateway.into(),
            model: "m".into(),
            channel: "c".into(),
            prompt_tokens: 3,
            completion_tokens: 4,
            cost,
            status: 200,
            latency_ms: 1,
            cache: "off",
            ..UsageEvent::default()
        }
    }

    #[test]
    fn a_batch_writes_every_row_and_sums_the_totals_once() {
        let path = std::env::temp_dir().join(format!("weir-store-test-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut conn = schema::open(path.to_str().unwrap()).unwrap();
        conn.execute(
            "INSERT INTO keys (id, name, key_hash, prefix, role, group_name, balance, created_at)
             VALUES (1, 'k', 'h', 'p', 'user', 'default', 10.0, 0)",
            [],
        )
        .unwrap();
        // 2026-01-15 and 2026-02-15: two months for key 1; one row without a key.
        let (jan, feb) = (1_768_435_200, 1_771_113_600);
        let events = [
            event(Some(1), jan, 1.0, "a"),
            event(Some(1), jan + 1, 0.5, "a"),
            event(Some(1), feb, 2.0, "b"),
            event(None, feb, 0.0, "b"),
        ];
        write_batch(&mut conn, &events, &[]).unwrap();
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM usage", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 4);
        let balance: f64 = conn
            .query_row("SELECT balance FROM keys WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        assert!((balance - 6.5).abs() < 1e-9, "{balance}");
        let spend = |conn: &Connection, month: u32| -> f64 {
            conn.query_row(
                "SELECT cost FROM spend WHERE key_id = 1 AND month = ?1",
                [month],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert!((spend(&conn, 202601) - 1.5).abs() < 1e-9);
        assert!((spend(&conn, 202602) - 2.0).abs() < 1e-9);
        let tokens = |g: &str| -> i64 {
            conn.query_row(
                "SELECT tokens FROM gateway_tokens WHERE gateway = ?1",
                [g],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!((tokens("a"), tokens("b")), (14, 14));
        // A second batch adds to the totals.
        write_batch(&mut conn, &[event(Some(1), jan, 0.25, "a")], &[]).unwrap();
        assert!((spend(&conn, 202601) - 1.75).abs() < 1e-9);
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_large_batch_goes_in_whole_statements_and_single_rows() {
        let path = std::env::temp_dir().join(format!("weir-store-rows-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut conn = schema::open(path.to_str().unwrap()).unwrap();
        // Two statements of ROWS_PER_INSERT rows and 6 single rows, each row distinct.
        let n = 2 * calllog::ROWS_PER_INSERT + 6;
        let events: Vec<UsageEvent> = (0..n)
            .map(|i| {
                let mut e = event(None, 1_000 + i as i64, 0.0, "g");
                e.latency_ms = i as u64;
                e
            })
            .collect();
        write_batch(&mut conn, &events, &[]).unwrap();
        let (count, sum_latency, distinct_ts): (i64, i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), SUM(latency_ms), COUNT(DISTINCT ts) FROM usage",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(count, n as i64);
        assert_eq!(sum_latency, (0..n as i64).sum::<i64>());
        assert_eq!(distinct_ts, n as i64);
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }
}
