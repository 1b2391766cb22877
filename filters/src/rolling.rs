//! Exact rolling windows (G4: "at most n requests in the most recent minute / hour /
//! day"), as admission counts per (rule, caller) in small time buckets. A bucket is
//! 1/60,000 of its window (1 ms for a minute, 60 ms for an hour, 1.44 s for a day) and
//! an admission counts until its whole bucket has left the window, so no trailing
//! window ever holds more than n, and a log holds at most min(n, 60,000) buckets
//! whatever the limit. A refusal's wait is exact to the bucket. The same algorithm
//! runs in Redis for several instances (`src/shared.rs`), so both count alike.

use std::collections::VecDeque;

/// Buckets per window: the wait's resolution and the bound on a log's length.
pub const BUCKETS_PER_WINDOW: u64 = 60_000;

/// A rule for one log: at most `limit` admissions in any `window_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub limit: u32,
    pub window_ms: u64,
}

impl Window {
    /// The bucket length in ms (at least 1).
    pub fn bucket_ms(self) -> u64 {
        (self.window_ms / BUCKETS_PER_WINDOW).max(1)
    }

    /// When the admissions of bucket `b` have all left the window.
    pub fn leaves_at(self, b: u64) -> u64 {
        (b + 1)
            .saturating_mul(self.bucket_ms())
            .saturating_add(self.window_ms)
    }
}

/// Why a request was refused: the rule (by position) and the wait in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub rule: usize,
    pub wait_ms: u64,
}

/// One rule's admissions: `(bucket, count)`, oldest first, and their total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollingLog {
    buckets: VecDeque<(u64, u32)>,
    total: u64,
}

impl RollingLog {
    /// The buckets held (the memory a log costs is about 16 bytes each).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Admissions still counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn pop_front(&mut self) -> Option<(u64, u32)> {
        let front = self.buckets.pop_front()?;
        self.total -= u64::from(front.1);
        Some(front)
    }

    /// Drops buckets that left the window, and old ones that cannot change a verdict
    /// (the rest alone reach the limit).
    fn prune(&mut self, now: u64, w: Window) {
        while let Some(&(b, n)) = self.buckets.front() {
            let gone = w.leaves_at(b) <= now;
            let irrelevant = self.total - u64::from(n) >= u64::from(w.limit) && w.limit > 0;
            if !(gone || irrelevant) {
                break;
            }
            self.pop_front();
        }
    }

    /// `Ok(left)`: one more fits at `now` (ms), leaving `left`; `Err(wait)`: the ms
    /// until one does.
    pub fn check(&mut self, now: u64, w: Window) -> Result<u32, u64> {
        self.prune(now, w);
        let limit = u64::from(w.limit);
        if limit == 0 {
            return Err(w.window_ms.max(1));
        }
        if self.total < limit {
            return Ok((limit - self.total - 1) as u32);
        }
        // Full: wait for the oldest buckets to leave until one place is free.
        let mut left = self.total;
        for &(b, n) in &self.buckets {
            left -= u64::from(n);
            if left < limit {
                return Err(w.leaves_at(b).saturating_sub(now).max(1));
            }
        }
        Err(1)
    }

    /// Counts an admission at `now`; returns the time recorded (never in an earlier
    /// bucket than the last, so a clock step back keeps the order), for `give_back`.
    pub fn take(&mut self, now: u64, w: Window) -> u64 {
        let b = (now / w.bucket_ms()).max(self.buckets.back().map_or(0, |x| x.0));
        match self.buckets.back_mut() {
            Some((last, n)) if *last == b => *n = n.saturating_add(1),
            _ => self.buckets.push_back((b, 1)),
        }
        self.total += 1;
        b * w.bucket_ms()
    }

    /// Takes back an admission recorded at `at` (a later refusal served nothing).
    pub fn give_back(&mut self, at: u64, w: Window) {
        let b = at / w.bucket_ms();
        if let Some(i) = self.buckets.iter().rposition(|x| x.0 == b) {
            self.total -= 1;
            self.buckets[i].1 -= 1;
            if self.buckets[i].1 == 0 {
                self.buckets.remove(i);
            }
        }
    }

    /// The ms until the oldest counted bucket leaves (the window when none): when
    /// the headroom next grows.
    pub fn reset_ms(&self, now: u64, w: Window) -> u64 {
        self.buckets.front().map_or(w.window_ms, |&(b, _)| {
            w.leaves_at(b).saturating_sub(now).max(1)
        })
    }

    /// The admissions counted in bucket `b` (0 when it is gone).
    pub fn count_at(&self, b: u64) -> u32 {
        self.buckets
            .binary_search_by_key(&b, |x| x.0)
            .map_or(0, |i| self.buckets[i].1)
    }

    /// Whether every admission has left the window at `now`: the log can go.
    pub fn idle(&self, now: u64, w: Window) -> bool {
        self.buckets
            .back()
            .is_none_or(|&(b, _)| w.leaves_at(b) <= now)
    }

    /// The buckets as stored: `(bucket, count)`, oldest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.buckets.iter().copied()
    }

    /// A log from stored buckets (sorted and merged here).
    pub fn from_buckets(mut buckets: Vec<(u64, u32)>) -> RollingLog {
        buckets.sort_unstable();
        let mut log = RollingLog::default();
        for (b, n) in buckets.into_iter().filter(|x| x.1 > 0) {
            match log.buckets.back_mut() {
                Some((last, m)) if *last == b => *m = m.saturating_add(n),
                _ => log.buckets.push_back((b, n)),
            }
            log.total += u64::from(n);
        }
        log
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
    Ok(logs.iter_mut().map(|(log, w)| log.take(now, *w)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, Rng, SeedableRng};

    const MINUTE: u64 = 60_000;
    const DAY: u64 = 86_400_000;

    #[test]
    fn the_fourth_of_three_a_minute_waits_for_the_first_to_leave() {
        let mut log = RollingLog::default();
        let w = Window {
            limit: 3,
            window_ms: MINUTE,
        };
        for t in [0, 10_000, 20_000] {
            assert!(log.check(t, w).is_ok());
            log.take(t, w);
        }
        // A minute's buckets are 1 ms: the first admission leaves at 60,001.
        assert_eq!(log.check(30_000, w), Err(30_001));
        assert_eq!(log.check(60_000, w), Err(1));
        assert_eq!(log.check(60_001, w), Ok(0));
    }

    #[test]
    fn memory_is_bounded_whatever_the_limit() {
        let w = Window {
            limit: 1_000_000_000,
            window_ms: DAY,
        };
        let mut log = RollingLog::default();
        // A million admissions over a day: at most 60,000 buckets.
        for i in 0..1_000_000u64 {
            log.take(i * 86, w);
        }
        assert!(log.len() <= 60_001, "{}", log.len());
        assert_eq!(log.total(), 1_000_000);
        // The same timestamp over and over is one bucket.
        let mut same = RollingLog::default();
        for _ in 0..100_000 {
            assert!(same.check(5, w).is_ok());
            same.take(5, w);
        }
        assert_eq!(same.len(), 1);
    }

    #[test]
    fn a_refund_frees_its_place_and_a_lowered_limit_drops_what_cannot_matter() {
        let w = Window {
            limit: 2,
            window_ms: MINUTE,
        };
        let mut log = RollingLog::default();
        let a = log.take(5, w);
        log.take(6, w);
        assert!(log.check(7, w).is_err());
        log.give_back(a, w);
        assert_eq!(log.check(7, w), Ok(0));
        for t in 0..100 {
            log.take(100 + t, w);
        }
        let four = Window {
            limit: 4,
            window_ms: MINUTE,
        };
        assert!(log.check(300, four).is_err());
        assert!(log.len() <= 5, "{}", log.len());
        let stored = RollingLog::from_buckets(log.buckets().collect());
        assert_eq!(stored, log);
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
                wait_ms: 59_001
            }
        );
        assert_eq!(
            hour.total(),
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
    /// trailing window; every wait is exact to the bucket (one ms earlier is still
    /// refused, at the wait a request fits) and at most one bucket past the window.
    #[test]
    fn property_never_more_than_the_limit_in_any_window_and_waits_are_exact() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        for _case in 0..400 {
            let window_ms = if rng.gen_bool(0.5) {
                rng.gen_range(1..5_000)
            } else {
                rng.gen_range(60_000..3_600_000)
            };
            let w = Window {
                limit: rng.gen_range(1..8),
                window_ms,
            };
            let mut log = RollingLog::default();
            let mut admitted: Vec<u64> = Vec::new();
            let mut now = 0u64;
            for _ in 0..200 {
                now += rng.gen_range(0..w.window_ms / 2 + 2);
                let counted = |at: &Vec<u64>, t: u64| {
                    at.iter()
                        .filter(|&&a| w.leaves_at(a / w.bucket_ms()) > t)
                        .count()
                };
                match log.check(now, w) {
                    Ok(_) => {
                        let at = log.take(now, w);
                        if rng.gen_bool(0.05) {
                            log.give_back(at, w);
                        } else {
                            admitted.push(now);
                        }
                    }
                    Err(wait) => {
                        assert!(
                            wait >= 1 && wait <= w.window_ms + w.bucket_ms(),
                            "wait {wait} for {w:?}"
                        );
                        let limit = w.limit as usize;
                        assert!(
                            counted(&admitted, now + wait - 1) >= limit,
                            "{w:?}: wait {wait} at {now} too long"
                        );
                        assert!(
                            counted(&admitted, now + wait) < limit,
                            "{w:?}: wait {wait} at {now} too short"
                        );
                    }
                }
                let in_window = admitted.iter().filter(|&&a| a + w.window_ms > now).count();
                assert!(
                    in_window <= w.limit as usize,
                    "{in_window} in {w:?} at {now}"
                );
                assert!(log.len() <= w.limit as usize + 1);
            }
        }
    }
}
