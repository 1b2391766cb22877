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

/// A change other instances should know (S1): found here, applied there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    Suspended {
        for_ms: u64,
        reason: String,
    },
    /// A trial started (for at most the probe timeout).
    Trial,
    Recovered,
}

/// Told every change this registry decides (never the ones it is told).
pub type Observer = Arc<dyn Fn(&HealthId, &HealthEvent) + Send + Sync>;

#[derive(Default)]
pub struct HealthRegistry {
    entries: RwLock<FastMap<HealthId, Arc<Mutex<Health>>>>,
    observer: RwLock<Option<Observer>>,
}

/// The state as another instance needs it: suspended for how long, or open.
fn seen(h: &Health, now: Instant) -> (Option<Duration>, bool) {
    (h.suspended_for(now), h.probe_started.is_some())
}

impl HealthRegistry {
    /// Who hears of the changes decided here (the shared backend).
    pub fn observe(&self, observer: Observer) {
        *self.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    /// Runs `f` on `id`'s health and tells the observer what changed.
    fn change<T>(
        &self,
        id: &HealthId,
        h: &mut Health,
        f: impl FnOnce(&mut Health, Instant) -> T,
    ) -> T {
        let now = Instant::now();
        let before = seen(h, now);
        let out = f(h, now);
        let after = seen(h, now);
        let event = match (before, after) {
            ((Some(_), _), (None, _)) => Some(HealthEvent::Recovered),
            ((_, false), (Some(_), true)) => Some(HealthEvent::Trial),
            ((b, _), (Some(a), false)) if b.is_none_or(|b| a > b) => Some(HealthEvent::Suspended {
                for_ms: a.as_millis().min(u64::MAX as u128) as u64,
                reason: h.last_error.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        if let Some(e) = event {
            let observer = self
                .observer
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(o) = observer {
                o(id, &e);
            }
        }
        out
    }

    /// Applies a change another instance decided (not told to the observer).
    pub fn apply(&self, id: &HealthId, event: &HealthEvent) {
        let now = Instant::now();
        let e = match event {
            HealthEvent::Recovered | HealthEvent::Trial => match self.existing(id) {
                Some(e) => e,
                None => return,
            },
            HealthEvent::Suspended { .. } => self.entry(id),
        };
        let mut h = e.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            HealthEvent::Suspended { for_ms, reason } => {
                h.apply_suspension(now, Duration::from_millis(*for_ms), reason)
            }
            HealthEvent::Trial => h.apply_trial(now),
            HealthEvent::Recovered => h.apply_recovery(),
        }
    }

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
        match self.change(id, &mut h, |h, now| h.admit(now, probe_timeout)) {
            Admission::Closed { retry_in } => Err(retry_in),
            other => Ok(other),
        }
    }

    pub fn success(&self, id: &HealthId) {
        if let Some(e) = self.existing(id) {
            let mut h = e.lock().unwrap_or_else(|p| p.into_inner());
            self.change(id, &mut h, |h, _| h.record_success());
        }
    }

    /// Returns true when this failure suspended the channel or key.
    pub fn failure(&self, id: &HealthId, policy: &HealthPolicy, reason: &str) -> bool {
        let e = self.entry(id);
        let mut h = e.lock().unwrap_or_else(|p| p.into_inner());
        self.change(id, &mut h, |h, now| h.record_failure(now, policy, reason))
    }

    /// A failure with a known wait (`Retry-After`): suspends for at least that long.
    pub fn failure_for(
        &self,
        id: &HealthId,
        policy: &HealthPolicy,
        at_least: Duration,
        reason: &str,
    ) {
        let e = self.entry(id);
        let mut h = e.lock().unwrap_or_else(|p| p.into_inner());
        self.change(id, &mut h, |h, now| {
            h.record_failure_for(now, policy, at_least, reason)
        });
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
        let e = self.entry(id);
        let mut h = e.lock().unwrap_or_else(|p| p.into_inner());
        self.change(id, &mut h, |h, now| h.suspend(now, policy, None));
    }

    /// Gives back a trial slot granted to a request that did not use it.
    pub fn release_trial(&self, id: &HealthId) {
        if let Some(e) = self.existing(id) {
            e.lock().unwrap_or_else(|p| p.into_inner()).release_trial();
        }
    }

    /// A channel proved good (its test or probe passed): open again, and the
    /// others told so.
    pub fn readmit(&self, name: &str) {
        let id = HealthId::channel(name);
        let was_out = self.existing(&id).is_some_and(|e| {
            e.lock()
                .unwrap_or_else(|p| p.into_inner())
                .suspended_until
                .is_some()
        });
        self.reset_channel(name);
        if was_out {
            let observer = self
                .observer
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(o) = observer {
                o(&id, &HealthEvent::Recovered);
            }
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

    #[test]
    fn changes_decided_here_are_told_and_changes_told_are_applied_silently() {
        let policy = HealthPolicy {
            failures: 1,
            cooldown: Duration::from_millis(0),
            max_cooldown: Duration::from_secs(60),
        };
        let heard: Arc<Mutex<Vec<HealthEvent>>> = Arc::default();
        let (here, there) = (HealthRegistry::default(), HealthRegistry::default());
        let h = heard.clone();
        here.observe(Arc::new(move |_, e| h.lock().unwrap().push(e.clone())));
        let id = HealthId::channel("c");
        assert!(here.failure(&id, &policy, "HTTP 503"));
        assert!(matches!(
            &heard.lock().unwrap()[..],
            [HealthEvent::Suspended { reason, .. }] if reason == "HTTP 503"
        ));
        // A failure while suspended tells nothing new; the trial and its success do.
        here.failure(&id, &policy, "HTTP 503");
        assert_eq!(heard.lock().unwrap().len(), 1);
        assert!(here.admit(&id, Duration::from_secs(5)).is_ok());
        here.success(&id);
        let events = heard.lock().unwrap().clone();
        assert_eq!(events[1..], [HealthEvent::Trial, HealthEvent::Recovered]);
        // The other instance takes the suspension without a failure of its own,
        // holds off while the trial runs, and reopens on the recovery.
        let out = HealthEvent::Suspended {
            for_ms: 60_000,
            reason: "HTTP 503".into(),
        };
        there.apply(&id, &out);
        assert!(there.admit(&id, Duration::from_secs(5)).is_err());
        assert_eq!(there.report(&id).failures_total, 0);
        there.apply(&id, &HealthEvent::Recovered);
        assert!(there.admit(&id, Duration::from_secs(5)).is_ok());
        // Told changes are never told on.
        assert_eq!(heard.lock().unwrap().len(), 3);
    }
}
