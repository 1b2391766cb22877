//! Health of every channel and key, kept outside the config snapshot so that a reload
//! keeps what was learned (a suspended channel stays suspended across a reload).

use super::{Admission, Health, HealthPolicy, HealthReport};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
    entries: RwLock<FastMap<HealthId, Arc<Mutex<Health>>>>,
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

    /// Asks to use `id` now: `Ok(None)` when it is open, `Ok(Some(trial))` when this
    /// request is its one trial (the slot goes back when the token is dropped
    /// unsettled), `Err(wait)` while it is closed.
    pub fn enter(
        &self,
        id: HealthId,
        probe_timeout: Duration,
    ) -> Result<Option<Trial<'_>>, Duration> {
        match self.admit(&id, probe_timeout)? {
            Admission::Trial => Ok(Some(Trial {
                registry: self,
                id: Some(id),
            })),
            _ => Ok(None),
        }
    }

    /// Takes `id` out of rotation now, as a failure that suspends would.
    pub fn suspend(&self, id: &HealthId, policy: &HealthPolicy) {
        self.entry(id)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .suspend(Instant::now(), policy, None);
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

/// The one trial a suspended channel or key allows after its cooldown. Recording an
/// outcome for its id settles it; a token dropped unsettled (the request chose
/// another channel, or ended without a verdict) gives the slot back, so no path can
/// leave a channel waiting out the probe timeout for nothing.
#[must_use]
pub struct Trial<'a> {
    registry: &'a HealthRegistry,
    id: Option<HealthId>,
}

impl Trial<'_> {
    pub fn id(&self) -> Option<&HealthId> {
        self.id.as_ref()
    }

    /// The outcome was recorded for this id (which clears the slot itself).
    pub fn settle(mut self) {
        self.id = None;
    }
}

impl Drop for Trial<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.registry.release_trial(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HealthPolicy = HealthPolicy {
        failures: 1,
        // Long enough that a loaded machine cannot let the second suspension
        // (twice this) run out between a failure and the next line.
        cooldown: Duration::from_millis(50),
        max_cooldown: Duration::from_secs(60),
    };

    fn suspended(registry: &HealthRegistry, name: &str) -> HealthId {
        let id = HealthId::channel(name);
        assert!(registry.failure(&id, &POLICY, "HTTP 500"));
        std::thread::sleep(Duration::from_millis(60));
        id
    }

    #[test]
    fn an_unsettled_trial_gives_its_slot_back_on_drop() {
        let registry = HealthRegistry::default();
        let id = suspended(&registry, "a");
        let probe = Duration::from_secs(60);
        let trial = registry.enter(id.clone(), probe);
        assert!(matches!(trial, Ok(Some(_))));
        // While the trial is out, nobody else gets in.
        assert!(registry.enter(id.clone(), probe).is_err());
        drop(trial);
        assert!(matches!(registry.enter(id, probe), Ok(Some(_))));
    }

    #[test]
    fn a_settled_trial_keeps_the_recorded_outcome() {
        let registry = HealthRegistry::default();
        let id = suspended(&registry, "a");
        let probe = Duration::from_secs(60);
        let Ok(Some(trial)) = registry.enter(id.clone(), probe) else {
            panic!("expected a trial");
        };
        registry.failure(&id, &POLICY, "HTTP 500");
        trial.settle();
        // Suspended again by the failed trial, not released by the token.
        assert!(registry.enter(id, probe).is_err());
    }

    #[test]
    fn a_healthy_id_needs_no_token_and_no_entry() {
        let registry = HealthRegistry::default();
        assert!(matches!(
            registry.enter(HealthId::channel("b"), Duration::ZERO),
            Ok(None)
        ));
        assert_eq!(
            registry
                .report(&HealthId::channel("b"))
                .consecutive_failures,
            0
        );
    }
}
