//! Health of every channel and key, kept outside the config snapshot so that a reload
//! keeps what was learned (a suspended channel stays suspended across a reload).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use weir_filters::health::{Admission, Health, HealthPolicy, HealthReport};

/// Identifies a channel (`name`) or one of its keys (`name` + key fingerprint). Keys
/// are fingerprinted so the registry never holds or prints a secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthId {
    pub channel: String,
    pub key: Option<u64>,
}

impl HealthId {
    pub fn channel(name: &str) -> Self {
        HealthId {
            channel: name.to_string(),
            key: None,
        }
    }

    pub fn key(name: &str, key: &str) -> Self {
        HealthId {
            channel: name.to_string(),
            key: Some(fingerprint(key)),
        }
    }
}

/// FNV-1a: stable across processes, enough to tell a channel's keys apart.
pub fn fingerprint(key: &str) -> u64 {
    key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

#[derive(Default)]
pub struct HealthRegistry {
    entries: RwLock<crate::FastMap<HealthId, Arc<Mutex<Health>>>>,
}

impl HealthRegistry {
    fn entry(&self, id: &HealthId) -> Arc<Mutex<Health>> {
        if let Some(e) = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return e.clone();
        }
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default()
            .clone()
    }

    fn existing(&self, id: &HealthId) -> Option<Arc<Mutex<Health>>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// `Ok` to go ahead (a trial included), `Err(wait)` while closed.
    pub fn admit(&self, id: &HealthId, probe_timeout: Duration) -> Result<Admission, Duration> {
        // Most channels have never failed: no entry, no lock.
        let Some(e) = self.existing(id) else {
            return Ok(Admission::Open);
        };
        let mut h = e.lock().unwrap_or_else(|p| p.into_inner());
        match h.admit(Instant::now(), probe_timeout) {
            Admission::Closed { retry_in } => Err(retry_in),
            other => Ok(other),
        }
    }

    pub fn success(&self, id: &HealthId) {
        if let Some(e) = self.existing(id) {
            e.lock().unwrap_or_else(|p| p.into_inner()).record_success();
        }
    }

    /// Returns true when this failure suspended the channel or key.
    pub fn failure(&self, id: &HealthId, policy: &HealthPolicy, reason: &str) -> bool {
        self.entry(id)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_failure(Instant::now(), policy, reason)
    }

    /// A failure with a known wait (`Retry-After`): suspends for at least that long.
    pub fn failure_for(
        &self,
        id: &HealthId,
        policy: &HealthPolicy,
        at_least: Duration,
        reason: &str,
    ) {
        self.entry(id)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_failure_for(Instant::now(), policy, at_least, reason);
    }

    /// Gives back a trial slot granted to a request that did not use it.
    pub fn release_trial(&self, id: &HealthId) {
        if let Some(e) = self.existing(id) {
            e.lock().unwrap_or_else(|p| p.into_inner()).release_trial();
        }
    }

    /// Forgets what was learned about a channel and its keys (its upstream changed).
    pub fn reset_channel(&self, name: &str) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| id.channel != name);
    }

    pub fn report(&self, id: &HealthId) -> HealthReport {
        match self.existing(id) {
            Some(e) => e
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .report(Instant::now()),
            None => Health::default().report(Instant::now()),
        }
    }

    /// Forgets channels that are no longer configured.
    pub fn retain_channels(&self, names: &[&str]) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| names.contains(&id.channel.as_str()));
    }
}
