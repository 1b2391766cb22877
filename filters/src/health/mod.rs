//! Passive health of a channel or a key (P5): consecutive failures suspend it for a
//! cooldown; when the cooldown ends, exactly one request is let through as a trial;
//! its success reopens, its failure suspends again for twice as long (capped).

mod registry;
pub use registry::{fingerprint, HealthEvent, HealthId, HealthRegistry, Observer, Trial};

use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub failures: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl From<&crate::config::HealthConfig> for HealthPolicy {
    fn from(h: &crate::config::HealthConfig) -> Self {
        HealthPolicy {
            failures: h.failures,
            cooldown: h.cooldown.0,
            max_cooldown: h.max_cooldown.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Healthy,
    Suspended,
    Probing,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Suspended => "suspended",
            HealthState::Probing => "probing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Healthy: go ahead.
    Open,
    /// The cooldown is over and this request is the one trial.
    Trial,
    /// Suspended (or a trial is already under way); try again after `retry_in`.
    Closed { retry_in: Duration },
}

impl Admission {
    pub fn allowed(self) -> bool {
        !matches!(self, Admission::Closed { .. })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Health {
    consecutive_failures: u32,
    /// How many suspensions in a row without a success: drives the doubling.
    suspensions: u32,
    suspended_until: Option<Instant>,
    probe_started: Option<Instant>,
    last_error: Option<String>,
    pub failures_total: u64,
    pub successes_total: u64,
}

/// A read-only view for the admin API and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub state: HealthState,
    pub consecutive_failures: u32,
    /// Seconds until the next trial is allowed (0 when not suspended).
    pub retry_in_secs: u64,
    pub last_error: Option<String>,
    pub failures_total: u64,
    pub successes_total: u64,
}

impl Health {
    /// May a request use this channel or key now? `probe_timeout` frees a trial slot
    /// whose request never reported back (e.g. the client went away).
    pub fn admit(&mut self, now: Instant, probe_timeout: Duration) -> Admission {
        let Some(until) = self.suspended_until else {
            return Admission::Open;
        };
        if now < until {
            return Admission::Closed {
                retry_in: until - now,
            };
        }
        match self.probe_started {
            Some(started) if now.duration_since(started) < probe_timeout => Admission::Closed {
                retry_in: probe_timeout - now.duration_since(started),
            },
            _ => {
                self.probe_started = Some(now);
                Admission::Trial
            }
        }
    }

    pub fn record_success(&mut self) {
        self.successes_total += 1;
        self.consecutive_failures = 0;
        self.suspensions = 0;
        self.suspended_until = None;
        self.probe_started = None;
    }

    /// Counts a failure; returns true when this failure suspended it. Failures while
    /// already suspended (requests that were under way) only count: the cooldown
    /// grows only when a trial fails, so a burst of in-flight failures cannot push
    /// it to the cap at once.
    pub fn record_failure(&mut self, now: Instant, policy: &HealthPolicy, reason: &str) -> bool {
        self.failures_total += 1;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some(reason.to_string());
        let trial_failed = self.probe_started.take().is_some();
        if trial_failed {
            self.suspend(now, policy, None);
            return true;
        }
        if self.suspended_until.is_some() {
            return false;
        }
        if self.consecutive_failures >= policy.failures {
            self.suspend(now, policy, None);
            return true;
        }
        false
    }

    /// A failure that says how long to stay away (an upstream's `Retry-After`):
    /// counts once and suspends for at least `at_least`.
    pub fn record_failure_for(
        &mut self,
        now: Instant,
        policy: &HealthPolicy,
        at_least: Duration,
        reason: &str,
    ) {
        self.failures_total += 1;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some(reason.to_string());
        let until = now.checked_add(at_least.min(policy.max_cooldown));
        match (self.suspended_until, until) {
            (Some(current), Some(want)) if current >= want && self.probe_started.is_none() => {}
            _ => self.suspend(now, policy, Some(at_least)),
        }
    }

    /// Gives back a trial slot that was granted but not used (or whose request ended
    /// without a verdict), so the next request can be the trial.
    pub fn release_trial(&mut self) {
        self.probe_started = None;
    }

    /// Suspends at once, for at least `at_least` (an upstream's `Retry-After`).
    pub fn suspend(&mut self, now: Instant, policy: &HealthPolicy, at_least: Option<Duration>) {
        let factor = 1u32
            .checked_shl(self.suspensions.min(16))
            .unwrap_or(u32::MAX);
        let mut cooldown = policy
            .cooldown
            .saturating_mul(factor)
            .min(policy.max_cooldown);
        if let Some(min) = at_least {
            cooldown = cooldown.max(min.min(policy.max_cooldown));
        }
        self.suspensions = self.suspensions.saturating_add(1);
        // Durations are bounded by config validation; never panic on overflow anyway.
        self.suspended_until = Some(now.checked_add(cooldown).unwrap_or(now));
        self.probe_started = None;
    }

    /// What the state says to other instances: suspended for how much longer
    /// (none when it is open).
    fn suspended_for(&self, now: Instant) -> Option<Duration> {
        self.suspended_until
            .map(|u| u.saturating_duration_since(now))
    }

    /// Another instance suspended it: out until at least `for_`; the cooldown's
    /// doubling stays with the instance that decided it.
    fn apply_suspension(&mut self, now: Instant, for_: Duration, reason: &str) {
        let until = now.checked_add(for_).unwrap_or(now);
        if self.suspended_until.is_none_or(|u| u < until) {
            self.suspended_until = Some(until);
        }
        self.probe_started = None;
        self.last_error = Some(reason.to_string());
    }

    /// Another instance is trying it now: no trial here until its verdict (or
    /// the probe timeout).
    fn apply_trial(&mut self, now: Instant) {
        if self.suspended_until.is_some() {
            self.probe_started = Some(now);
        }
    }

    /// Another instance's trial passed: open again, without counting a success here.
    fn apply_recovery(&mut self) {
        self.consecutive_failures = 0;
        self.suspensions = 0;
        self.suspended_until = None;
        self.probe_started = None;
    }

    pub fn state(&self, now: Instant) -> HealthState {
        match (self.suspended_until, self.probe_started) {
            (None, _) => HealthState::Healthy,
            (Some(_), Some(_)) => HealthState::Probing,
            (Some(until), None) if now < until => HealthState::Suspended,
            // Cooldown over, waiting for the next request to be its trial.
            (Some(_), None) => HealthState::Probing,
        }
    }

    pub fn report(&self, now: Instant) -> HealthReport {
        HealthReport {
            state: self.state(now),
            consecutive_failures: self.consecutive_failures,
            retry_in_secs: self
                .suspended_until
                .map(|u| u.saturating_duration_since(now).as_secs_f64().ceil() as u64)
                .unwrap_or(0),
            last_error: self.last_error.clone(),
            failures_total: self.failures_total,
            successes_total: self.successes_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HealthPolicy = HealthPolicy {
        failures: 2,
        cooldown: Duration::from_secs(10),
        max_cooldown: Duration::from_secs(25),
    };
    const PROBE: Duration = Duration::from_secs(5);

    #[test]
    fn suspends_after_consecutive_failures_and_recovers_by_trial() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert!(!h.record_failure(t0, &POLICY, "503"));
        assert_eq!(h.admit(t0, PROBE), Admission::Open);
        assert!(h.record_failure(t0, &POLICY, "503"));
        assert_eq!(h.state(t0), HealthState::Suspended);
        assert!(!h.admit(t0 + Duration::from_secs(9), PROBE).allowed());
        // Cooldown over: one trial, and only one.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1, PROBE), Admission::Trial);
        assert!(!h.admit(t1, PROBE).allowed());
        assert_eq!(h.state(t1), HealthState::Probing);
        h.record_success();
        assert_eq!(h.state(t1), HealthState::Healthy);
        assert_eq!(h.admit(t1, PROBE), Admission::Open);
    }

    #[test]
    fn failed_trial_doubles_the_cooldown_up_to_the_cap() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.record_failure(t0, &POLICY, "x");
        h.record_failure(t0, &POLICY, "x");
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1, PROBE), Admission::Trial);
        assert!(h.record_failure(t1, &POLICY, "x"));
        // 20 s now.
        assert!(!h.admit(t1 + Duration::from_secs(19), PROBE).allowed());
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(h.admit(t2, PROBE), Admission::Trial);
        h.record_failure(t2, &POLICY, "x");
        // 40 s capped at 25 s.
        assert!(!h.admit(t2 + Duration::from_secs(24), PROBE).allowed());
        assert_eq!(
            h.admit(t2 + Duration::from_secs(25), PROBE),
            Admission::Trial
        );
    }

    #[test]
    fn abandoned_trial_is_freed_after_probe_timeout() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.suspend(t0, &POLICY, None);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1, PROBE), Admission::Trial);
        assert!(!h.admit(t1 + Duration::from_secs(4), PROBE).allowed());
        assert_eq!(
            h.admit(t1 + Duration::from_secs(5), PROBE),
            Admission::Trial
        );
    }

    #[test]
    fn retry_after_sets_a_minimum_cooldown() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.suspend(t0, &POLICY, Some(Duration::from_secs(20)));
        assert!(!h.admit(t0 + Duration::from_secs(15), PROBE).allowed());
        assert_eq!(h.report(t0).retry_in_secs, 20);
    }

    #[test]
    fn failures_while_suspended_do_not_escalate() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.record_failure(t0, &POLICY, "x");
        assert!(h.record_failure(t0, &POLICY, "x"));
        // Requests that were already under way fail too.
        for _ in 0..6 {
            assert!(!h.record_failure(t0, &POLICY, "x"));
        }
        // Still the first cooldown (10 s), not the cap.
        assert_eq!(
            h.admit(t0 + Duration::from_secs(10), PROBE),
            Admission::Trial
        );
    }

    #[test]
    fn released_trial_lets_the_next_request_try() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.suspend(t0, &POLICY, None);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.admit(t1, PROBE), Admission::Trial);
        h.release_trial();
        assert_eq!(h.admit(t1, PROBE), Admission::Trial);
    }

    #[test]
    fn retry_after_failure_counts_once_and_keeps_the_longer_wait() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.record_failure_for(t0, &POLICY, Duration::from_secs(20), "429");
        h.record_failure_for(t0, &POLICY, Duration::from_secs(5), "429");
        assert_eq!(h.failures_total, 2);
        assert_eq!(h.report(t0).retry_in_secs, 20);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.record_failure(t0, &POLICY, "x");
        h.record_success();
        assert!(!h.record_failure(t0, &POLICY, "x"));
    }
}
