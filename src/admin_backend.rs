//! The gateway side of the admin API.

use crate::state::{AppState, ReloadOutcome};
use async_trait::async_trait;
use weir_admin::AdminBackend;

#[async_trait]
impl AdminBackend for AppState {
    fn admin_key(&self) -> Option<String> {
        self.snapshot().server().admin_key.clone()
    }

    async fn reload(&self, trigger: &str) -> Result<serde_json::Value, String> {
        // File I/O and parsing: keep it off the async worker.
        let outcome = tokio::task::block_in_place(|| AppState::reload(self, trigger))?;
        Ok(match outcome {
            ReloadOutcome::Reloaded { version } => {
                serde_json::json!({"reloaded": true, "version": version})
            }
            ReloadOutcome::Unchanged { version } => {
                serde_json::json!({"reloaded": false, "version": version})
            }
        })
    }

    fn channels(&self) -> serde_json::Value {
        self.channels_report()
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({"version": self.version(), "config": self.snapshot().redacted_json()})
    }

    fn metrics(&self) -> Vec<u8> {
        self.refresh_health_gauges();
        self.metrics.render()
    }
}
