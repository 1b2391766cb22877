//! The config in force: one immutable `Runtime` per version, swapped whole by a
//! reload. A request loads it once and keeps it to the end, so a reload never changes
//! the rules under a request in flight.

use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use weir_filters::config::{self, Runtime, Stored};

pub struct ConfigCell {
    path: PathBuf,
    current: ArcSwap<Runtime>,
    version: AtomicU64,
    /// The text of the file behind the current snapshot: a watcher event that changed
    /// nothing does not count as a reload. Its lock also keeps reloads one at a time.
    loaded_text: Mutex<String>,
}

#[derive(Debug)]
pub enum ReloadOutcome {
    Reloaded { version: u64 },
    Unchanged { version: u64 },
}

impl ConfigCell {
    pub fn new(path: PathBuf, text: String, runtime: Runtime) -> Self {
        ConfigCell {
            path,
            current: ArcSwap::from_pointee(runtime),
            version: AtomicU64::new(1),
            loaded_text: Mutex::new(text),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The config every phase of one request uses, start to end.
    pub fn snapshot(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Re-reads and validates the file; when it parses, `prepare` sees the old and the
    /// new config just before the swap (to carry long-lived state over). On any
    /// problem the current config stays and the problems are returned. A `watch`
    /// trigger on unchanged text is not a reload.
    pub fn reload(
        &self,
        trigger: &str,
        prepare: impl FnOnce(&Runtime, &Runtime),
    ) -> Result<ReloadOutcome, String> {
        let mut loaded = self.loaded_text.lock().unwrap_or_else(|p| p.into_inner());
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        if *loaded == text && trigger == "watch" {
            return Ok(ReloadOutcome::Unchanged {
                version: self.version(),
            });
        }
        let file = config::parse_file(&text).map_err(|e| e.to_string())?;
        let old = self.snapshot();
        let runtime = Runtime::build_with(file, old.stored.clone()).map_err(|e| e.to_string())?;
        prepare(&old, &runtime);
        *loaded = text;
        Ok(self.swap(runtime))
    }

    /// A new snapshot of the same file with the store's entities as `stored` now
    /// are (an admin write, or another process's, A1). On a problem the current
    /// snapshot stays.
    pub fn restock(
        &self,
        stored: Stored,
        prepare: impl FnOnce(&Runtime, &Runtime),
    ) -> Result<ReloadOutcome, String> {
        let _one_at_a_time = self.loaded_text.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.snapshot();
        let runtime = Runtime::build_with(old.file.clone(), stored).map_err(|e| e.to_string())?;
        prepare(&old, &runtime);
        Ok(self.swap(runtime))
    }

    fn swap(&self, runtime: Runtime) -> ReloadOutcome {
        self.current.store(Arc::new(runtime));
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        ReloadOutcome::Reloaded { version }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str =
        "channels:\n  - name: c\n    type: mock\n    models: [m]\ngateways:\n  - name: a\n    path: /a\n";

    #[test]
    fn reload_swaps_whole_or_not_at_all() {
        let dir = std::env::temp_dir().join(format!("weir-cell-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weir.yaml");
        std::fs::write(&path, ONE).unwrap();
        let cell = ConfigCell::new(path.clone(), ONE.into(), config::parse(ONE).unwrap());
        let before = cell.snapshot();
        assert!(matches!(
            cell.reload("watch", |_, _| panic!("nothing changed")),
            Ok(ReloadOutcome::Unchanged { version: 1 })
        ));
        std::fs::write(&path, "gateways: [").unwrap();
        assert!(cell.reload("api", |_, _| panic!("bad file")).is_err());
        assert!(Arc::ptr_eq(&before, &cell.snapshot()));
        let two = ONE.replace("path: /a", "path: /b");
        std::fs::write(&path, &two).unwrap();
        let mut seen = None;
        let out = cell.reload("api", |old, new| {
            seen = Some((old.gateways.len(), new.gateways.len()));
        });
        assert!(matches!(out, Ok(ReloadOutcome::Reloaded { version: 2 })));
        assert_eq!(seen, Some((1, 1)));
        assert_eq!(cell.version(), 2);
        // The old snapshot is still whole for whoever holds it.
        assert!(!Arc::ptr_eq(&before, &cell.snapshot()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
