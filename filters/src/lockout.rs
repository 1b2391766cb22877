//! Failed sign-ins slowed per client address: the admin API's bearer key and the
//! manager's sign-in form. A few mistakes cost nothing; from the `free`-th failure
//! on, the address must wait (1 s, doubling with each further failure, at most
//! 5 min) before a key is even looked at, so guessing an admin key from one address
//! runs at a handful of tries a minute. IPv6 addresses count by /64 (one host
//! holds a whole prefix); the table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures before the first wait.
    pub free: u32,
    pub base: Duration,
    pub max: Duration,
    /// A quiet address is forgotten after this long.
    pub forget: Duration,
    /// Addresses tracked at most.
    pub capacity: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            free: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            forget: Duration::from_secs(900),
            capacity: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Lockout {
    policy: Policy,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl Lockout {
    pub fn new(policy: Policy) -> Lockout {
        Lockout {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// One try from `ip`: `Err(wait)` while the address must still wait, else
    /// `check`'s result, which counts as a failure when it is `Err` and clears the
    /// address when `Ok`. The wait, the check and the count happen under one lock,
    /// so a burst of parallel guesses gets no more tries than a sequence would
    /// (`check` is a hash and a lookup; it must not block).
    pub fn attempt<T, E>(
        &self,
        ip: Option<IpAddr>,
        now: Instant,
        check: impl FnOnce() -> Result<T, E>,
    ) -> Result<Result<T, E>, Duration> {
        let (Some(ip), Ok(mut entries)) = (ip.map(subject), self.entries.lock()) else {
            return Ok(check());
        };
        let waiting = entries
            .get(&ip)
            .and_then(|e| e.until)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero());
        if let Some(wait) = waiting {
            return Err(wait);
        }
        let result = check();
        match result {
            Ok(_) => {
                entries.remove(&ip);
            }
            Err(_) => {
                self.count_failure(&mut entries, ip, now);
            }
        }
        Ok(result)
    }

    /// How long `ip` must still wait before its next try; `None`: it may try now.
    pub fn wait(&self, ip: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().ok()?;
        let until = entries.get(&subject(ip?))?.until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    fn count_failure(
        &self,
        entries: &mut HashMap<IpAddr, Entry>,
        ip: IpAddr,
        now: Instant,
    ) -> Option<Duration> {
        let p = self.policy;
        if entries.len() >= p.capacity && !entries.contains_key(&ip) {
            entries.retain(|_, e| now.saturating_duration_since(e.last) < p.forget);
            if entries.len() >= p.capacity {
                // Full of live entries: the one quiet longest makes room, an
                // address still waiting only when every entry is (a flood of
                // fresh addresses must not free the locked ones).
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| (e.until.is_some_and(|u| u > now), e.last))
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    entries.remove(&k);
                }
            }
        }
        let e = entries.entry(ip).or_insert(Entry {
            failures: 0,
            last: now,
            until: None,
        });
        if now.saturating_duration_since(e.last) >= p.forget {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        let over = e.failures.checked_sub(p.free)?;
        let wait = p
            .base
            .saturating_mul(2u32.saturating_pow(over.min(31)))
            .min(p.max);
        e.until = Some(now + wait);
        Some(wait)
    }
}

/// What an address counts as: IPv4 as itself (also when mapped into IPv6), IPv6
/// by its /64.
fn subject(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// A wrong guess: the wait it brings, if any (`Err` while still locked).
    fn fail(l: &Lockout, ip: Option<IpAddr>, now: Instant) -> Option<Duration> {
        // Still locked: the guess is not even checked, so it brings no new wait.
        let _refused: Result<(), ()> = l.attempt(ip, now, || Err(())).ok()?;
        l.wait(ip, now)
    }

    #[test]
    fn waits_start_after_the_free_failures_and_double() {
        let l = Lockout::default();
        let t = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..4 {
            assert_eq!(fail(&l, a, t), None);
            assert_eq!(l.wait(a, t), None);
        }
        assert_eq!(fail(&l, a, t), Some(Duration::from_secs(1)));
        assert_eq!(l.wait(a, t), Some(Duration::from_secs(1)));
        assert_eq!(l.wait(a, t + Duration::from_secs(1)), None);
        // Each wrong guess once the wait is over doubles it, up to the cap.
        let mut now = t + Duration::from_secs(1);
        let mut expect = 2;
        for _ in 0..20 {
            assert_eq!(fail(&l, a, now), Some(Duration::from_secs(expect.min(300))));
            now += Duration::from_secs(expect.min(300));
            expect *= 2;
        }
        // A guess while waiting is refused without running the check, and does not
        // lengthen the wait.
        let locked = now - Duration::from_secs(100);
        assert_eq!(
            l.attempt(a, locked, || -> Result<(), ()> { unreachable!() }),
            Err(Duration::from_secs(100))
        );
        // Another address is not touched; a success clears this one.
        assert_eq!(l.wait(ip("10.0.0.2"), locked), None);
        assert_eq!(l.attempt(a, now, || Ok::<_, ()>(7)), Ok(Ok(7)));
        assert_eq!(l.wait(a, now), None);
        assert_eq!(fail(&l, a, now), None);
    }

    #[test]
    fn a_parallel_burst_gets_no_extra_guesses() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = Lockout::default();
        let t = Instant::now();
        let checked = AtomicUsize::new(0);
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..4 {
                        let _ = l.attempt(ip("10.0.0.9"), t, || {
                            checked.fetch_add(1, Ordering::SeqCst);
                            std::thread::yield_now();
                            Err::<(), ()>(())
                        });
                    }
                });
            }
        });
        assert_eq!(checked.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn a_quiet_address_is_forgotten() {
        let l = Lockout::default();
        let t = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..4 {
            fail(&l, a, t);
        }
        assert_eq!(fail(&l, a, t + Duration::from_secs(901)), None);
    }

    #[test]
    fn ipv6_counts_by_prefix_and_mapped_ipv4_as_ipv4() {
        let l = Lockout::default();
        let t = Instant::now();
        for i in 0..5 {
            fail(&l, ip(&format!("2001:db8::{i}")), t);
        }
        assert!(l.wait(ip("2001:db8::ffff"), t).is_some());
        assert!(l.wait(ip("2001:db8:0:1::1"), t).is_none());
        for _ in 0..5 {
            fail(&l, ip("::ffff:10.1.1.1"), t);
        }
        assert!(l.wait(ip("10.1.1.1"), t).is_some());
    }

    #[test]
    fn the_table_is_bounded() {
        let l = Lockout::new(Policy {
            capacity: 100,
            ..Policy::default()
        });
        let t = Instant::now();
        for i in 0..1_000u32 {
            fail(
                &l,
                Some(IpAddr::V4(i.into())),
                t + Duration::from_millis(i.into()),
            );
        }
        assert!(l.entries.lock().unwrap().len() <= 100);
        assert_eq!(l.wait(None, t), None);
    }
}
