//! Who is calling: what admission found out about the caller of one request.

use crate::accounts::KeyRecord;
use std::collections::HashSet;
use std::sync::Arc;

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Names the caller for `secret:` limits and usage: `key:<id>` for stored keys,
    /// the identity claim for JWTs, a hash prefix of the key for regex gateways.
    pub identity: Option<String>,
    pub key: Option<Arc<KeyRecord>>,
    pub group: String,
    /// Models the caller may use; `None`: all the gateway serves.
    pub granted: Option<Arc<HashSet<String>>>,
}

impl Caller {
    /// The caller of an open gateway.
    pub fn anonymous() -> Caller {
        Caller {
            identity: None,
            key: None,
            group: "default".into(),
            granted: None,
        }
    }

    pub fn may_use(&self, requested: &str, label: &str) -> bool {
        match &self.granted {
            None => true,
            Some(g) => g.contains(requested) || g.contains(label),
        }
    }
}
