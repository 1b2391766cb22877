//! Hot reload triggers (A2): the config file changing on disk, SIGHUP, and the
//! store's channels and gateways changing (A1). The admin
//! API's `POST /admin/reload` calls `AppState::reload` directly (`snapshot.rs` swaps).

use crate::state::AppState;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

pub struct Reloader {
    pub state: Arc<AppState>,
}

/// Probes suspended channels every `server.health.probe` (A5), so a channel comes
/// back when it works again, without waiting for live traffic to gamble a trial.
pub struct Prober {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let every = self.state.snapshot().server().health.probe.0;
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    crate::proxy::probe::probe_suspended(&self.state).await;
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

/// How often the store's channels and gateways are checked for changes made
/// elsewhere (admin writes here rebuild at once).
const ENTITY_POLL: Duration = Duration::from_millis(500);

/// Editors write a file in several steps; wait for them to settle.
const SETTLE: Duration = Duration::from_millis(150);

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let path = self.state.config.path().to_path_buf();
        let file_name = path.file_name().map(|n| n.to_os_string());
        // Watch the directory, not the file: editors and config managers replace the
        // file by renaming, which a watch on the old inode would miss.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| ".".into());
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name);
                if ours && !event.kind.is_access() {
                    let _ = tx.send(());
                }
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w));
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP or POST /admin/reload");
                None
            }
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let mut poll = tokio::time::interval(ENTITY_POLL);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    // Another process (or instance) changed the stored entities.
                    let _ = self.state.restock("store");
                }
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    let _ = self.state.reload("watch");
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = self.state.reload("sighup");
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}
