//! Exact rolling windows (G4: "at most n requests in the most recent minute / hour /
//! day"), as a log of admission times per (rule, caller). Only the last `limit` times
//! can ever decide a verdict, so a log holds at most `limit` entries; the wait it
//! answers is exact and never longer than the window. The same algorithm runs in
//! Redis for several instances (docs/design/scale-out.md), so both count alike.
//!
//! Not yet wired into admission: `Accounts` still uses minute estimates and fixed
//! hour/day buckets (issues 13 and 14 replace them with this).

use std::collections::VecDeque;

/// One rule's admission times in milliseconds, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollingLog {
    times: VecDeque<u64>,
}

/// A rule for one log: at most `limit` admissions in any `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u32,
    pub window_ms: u64,
}

/// Why a request was refused: the rule (by position) and the exact wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub rule: usize,
    pub wait_ms: u64,
}

impl RollingLog {
    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Drops what left the window and what a (lowered) limit no longer needs.
    fn prune(&mut self, now: u64, w: Window) {
        while self.times.len() > w.limit as usize {
            self.times.pop_front();
        }
        while self
            .times
            .front()
            .is_some_and(|&t| t.saturating_add(w.window_ms) <= now)
        {
            self.times.pop_front();
        }
    }

    /// `Ok(left)`: one more fits now, leaving `left`; `Err(wait)`: the milliseconds
    /// until one does.
    pub fn check(&mut self, now: u64, w: Window) -> Result<u32, u64> {
        self.prune(now, w);
        let len = self.times.len();
        if w.limit == 0 {
            return Err(w.window_ms.max(1));
        }
        if len < w.limit as usize {
            return Ok(w.limit - len as u32 - 1);
        }
        // Full: the oldest of the last `limit` must leave first.
        let oldest = self.times[len - w.limit as usize];
        Err(oldest
            .saturating_add(w.window_ms)
            .saturating_sub(now)
            .max(1))
    }

    /// Counts an admission at `now`; returns the time recorded (never earlier than
    /// the last one, so a clock step back keeps the log in order), for `give_back`.
    pub fn take(&mut self, now: u64) -> u64 {
        let at = self.times.back().map_or(now, |&last| last.max(now));
        self.times.push_back(at);
        at
    }

    /// Takes back an admission recorded at `at` (a later refusal served nothing).
    pub fn give_back(&mut self, at: u64) {
        if let Some(i) = self.times.iter().rposition(|&t| t == at) {
            self.times.remove(i);
        }
    }
}

/// Checks every rule and, only when all pass, counts the request in each: the
/// times recorded, or the refusal with the longest wait among the full rules.
pub fn admit(logs: &mut [(&mut RollingLog, Window)], now: u64) -> Result<Vec<u64>, Refusal> {
    let mut refusal: Option<Refusal> = None;
    for (i, (log, w)) in logs.iter_mut().enumerate() {
        if let Err(wait_ms) = log.check(now, *w) {
            if refusal.is_none_or(|r| wait_ms > r.wait_ms) {
                refusal = Some(Refusal { rule: i, wait_ms });
            }
        }
    }
    if let Some(r) = refusal {
        return Err(r);
    }
    Ok(logs.iter_mut().map(|(log, _)| log.take(now)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, Rng, SeedableRng};

    const MINUTE: u64 = 60_000;

    #[test]
    fn the_fourth_of_three_a_minute_waits_for_the_first_to_leave() {
        let mut log = RollingLog::default();
        let w = Window {
            limit: 3,
            window_ms: MINUTE,
        };
        for t in [0, 10_000, 20_000] {
            assert!(log.check(t, w).is_ok());
            log.take(t);
        }
        assert_eq!(log.check(30_000, w), Err(30_000));
        assert_eq!(log.check(59_999, w), Err(1));
        assert_eq!(log.check(60_000, w), Ok(0));
        assert!(log.len() <= 3);
    }

    #[test]
    fn a_refund_frees_its_place_and_a_lowered_limit_bounds_memory() {
        let mut log = RollingLog::default();
        let w = Window {
            limit: 2,
            window_ms: MINUTE,
        };
        let a = log.take(5);
        log.take(6);
        assert!(log.check(7, w).is_err());
        log.give_back(a);
        assert_eq!(log.check(7, w), Ok(0));
        for t in 0..100 {
            log.take(100 + t);
        }
        assert!(log
            .check(
                300,
                Window {
                    limit: 4,
                    window_ms: MINUTE
                }
            )
            .is_err());
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn all_rules_pass_or_none_is_charged() {
        let (mut minute, mut hour) = (RollingLog::default(), RollingLog::default());
        let m = Window {
            limit: 1,
            window_ms: MINUTE,
        };
        let h = Window {
            limit: 10,
            window_ms: 60 * MINUTE,
        };
        assert!(admit(&mut [(&mut minute, m), (&mut hour, h)], 0).is_ok());
        let refused = admit(&mut [(&mut minute, m), (&mut hour, h)], 1_000).unwrap_err();
        assert_eq!(
            refused,
            Refusal {
                rule: 0,
                wait_ms: 59_000
            }
        );
        assert_eq!(
            hour.len(),
            1,
            "the refused request took nothing from the hour"
        );
        let zero = Window {
            limit: 0,
            window_ms: MINUTE,
        };
        assert!(RollingLog::default().check(0, zero).is_err());
    }

    /// Random request times against random rules: never more than `limit` in any
    /// trailing window, and every wait is exact (one ms earlier is still refused,
    /// at the wait it fits) and never longer than the window.
    #[test]
    fn property_never_more_than_the_limit_in_any_window_and_waits_are_exact() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        for _case in 0..400 {
            let w = Window {
                limit: rng.gen_range(1..8),
                window_ms: rng.gen_range(1..5_000),
            };
            let mut log = RollingLog::default();
            let mut admitted: Vec<u64> = Vec::new();
            let mut now = 0u64;
            for _ in 0..200 {
                now += rng.gen_range(0..w.window_ms / 2 + 2);
                match log.check(now, w) {
                    Ok(_) => {
                        let at = log.take(now);
                        if rng.gen_bool(0.05) {
                            log.give_back(at);
                        } else {
                            admitted.push(at);
                        }
                    }
                    Err(wait) => {
                        assert!(wait >= 1 && wait <= w.window_ms, "wait {wait} for {w:?}");
                        let fits = |t: u64| {
                            admitted.iter().filter(|&&a| a + w.window_ms > t).count()
                                < w.limit as usize
                        };
                        assert!(
                            !fits(now + wait - 1),
                            "{w:?}: refused at {now}, wait {wait} too long"
                        );
                        assert!(fits(now + wait), "{w:?}: wait {wait} at {now} too short");
                    }
                }
                let in_window = admitted.iter().filter(|&&a| a + w.window_ms > now).count();
                assert!(
                    in_window <= w.limit as usize,
                    "{in_window} in {w:?} at {now}"
                );
                assert!(log.len() <= w.limit as usize);
            }
        }
    }
}
