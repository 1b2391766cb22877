//! The order in which channels and keys are tried (P3, P4), what each upstream
//! answer means for the next step, and the backoff between tries.
//!
//! Order: priority tiers from high to low; inside a tier a weighted random order
//! (weights 4 and 1 put the first at the front 4 times in 5). A retryable failure is
//! retried on the same channel up to its `retries`, after an exponential backoff with
//! jitter; a rejected key moves to the channel's next key at once; then the next
//! channel. Health decides, at the moment of each attempt, whether a channel or key
//! may be used at all.

use crate::config::{Channel, Route};
use rand::Rng;
use std::time::Duration;

/// What one upstream answer (or failure to get one) means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: stream it to the client.
    Success,
    /// A client error (400, 404, 422…): the client gets it as it is.
    Final,
    /// Connect error, timeout, 5xx, 408 or 429: try again, maybe elsewhere.
    Retryable {
        /// 429 is about the key's quota: the next try uses another key when there is one.
        rotate_key: bool,
        retry_after: Option<Duration>,
    },
    /// 401/403: this key is refused; the next key or channel, at once.
    KeyRejected,
    /// The channel cannot serve this request at all (its provider lacks the
    /// endpoint): the next channel, at once, nothing learned about health.
    Unserved,
}

/// Classifies an upstream status.
pub fn verdict_for_status(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=399 => Verdict::Success,
        401 | 403 => Verdict::KeyRejected,
        429 => Verdict::Retryable {
            rotate_key: true,
            retry_after,
        },
        408 | 500..=599 => Verdict::Retryable {
            rotate_key: false,
            retry_after,
        },
        _ => Verdict::Final,
    }
}

/// Parses `Retry-After` as seconds (the HTTP-date form is rare from LLM APIs and ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
        v.parse::<f64>()
            .ok()
            .and_then(|f| Duration::try_from_secs_f64(f).ok())
    })
}

/// Exponential backoff before retry number `retry` (0 for the first retry):
/// `base * 2^retry` capped at `max`, jittered uniformly over its upper half so that
/// clients failing together do not retry together. A `Retry-After` within `max` is
/// honoured as a lower bound.
pub fn backoff(
    retry: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let exp = base
        .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX))
        .min(max);
    let jittered = exp.mul_f64(rng.gen_range(0.5..=1.0));
    match retry_after {
        Some(ra) if ra <= max => jittered.max(ra),
        _ => jittered,
    }
}

/// Routes in failover order: priority high to low, weighted random inside a tier.
pub fn failover_order(routes: &[Route], channels: &[Channel], rng: &mut impl Rng) -> Vec<usize> {
    // Efraimidis–Spirakis: sorting by u^(1/w) gives a weighted random permutation, so
    // the chance of being first is w / sum(w) and later positions follow the same rule.
    let mut keyed: Vec<(i32, f64, usize)> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let c = &channels[r.channel];
            let u: f64 = rng.gen_range(f64::EPSILON..1.0);
            (c.priority, u.powf(1.0 / f64::from(c.weight.max(1))), i)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
    keyed.into_iter().map(|(_, _, i)| i).collect()
}

/// What a health check is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Channel(usize),
    Key { channel: usize, key: usize },
}

/// The channel and key picked for the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index into the request's routes.
    pub route: usize,
    pub channel: usize,
    /// Index into the channel's keys; `None` for a channel without keys.
    pub key: Option<usize>,
    /// Wait this long before sending.
    pub delay: Duration,
    /// This attempt repeats the previous channel.
    pub is_retry: bool,
    /// This attempt moves to another channel after a failure.
    pub is_failover: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub max: Duration,
}

/// The failover state of one request.
pub struct Failover {
    order: Vec<usize>,
    /// Position in `order` of the current channel.
    pos: usize,
    started: bool,
    /// The current channel's keys in the order they are tried.
    keys: Vec<usize>,
    /// Position in `keys` of the key in use.
    key_pos: usize,
    /// Highest position in `keys` used so far on this channel.
    key_frontier: usize,
    /// Retries (after backoff) made on the current channel.
    channel_retries: u32,
    total_attempts: u32,
    max_total: Option<u32>,
    /// Channels passed over because health closed them, with how long until they reopen.
    pub skipped: Vec<(usize, Duration)>,
}

type Admit<'a> = dyn FnMut(Target) -> Result<(), Duration> + 'a;

/// What one `next` call works with.
struct Env<'e, 'a, R> {
    routes: &'e [Route],
    channels: &'e [Channel],
    backoff: &'e BackoffPolicy,
    admit: &'e mut Admit<'a>,
    rng: &'e mut R,
}

impl<R> Env<'_, '_, R> {
    /// A channel's own backoff (Chat Nio lets each channel set it), else the server's.
    fn policy(&self, channel: usize) -> (Duration, Duration) {
        self.channels[channel]
            .backoff
            .unwrap_or((self.backoff.base, self.backoff.max))
    }
}

impl Failover {
    /// `max_total`: a cap on attempts across all channels (a gateway's `retries` + 1).
    pub fn new(
        routes: &[Route],
        channels: &[Channel],
        max_total: Option<u32>,
        rng: &mut impl Rng,
    ) -> Self {
        Failover {
            order: failover_order(routes, channels, rng),
            pos: 0,
            started: false,
            keys: Vec::new(),
            key_pos: 0,
            key_frontier: 0,
            channel_retries: 0,
            total_attempts: 0,
            max_total,
            skipped: Vec::new(),
        }
    }

    /// The next attempt after `last` (the verdict of the previous attempt, `None` at
    /// the start), or `None` when the request is finished or nothing is left to try.
    /// `admit` asks health whether a channel or key may be used now and returns how
    /// long until it reopens when not.
    pub fn next(
        &mut self,
        last: Option<Verdict>,
        routes: &[Route],
        channels: &[Channel],
        backoff_policy: &BackoffPolicy,
        admit: &mut Admit<'_>,
        rng: &mut impl Rng,
    ) -> Option<Pick> {
        if self.max_total.is_some_and(|m| self.total_attempts >= m) {
            return None;
        }
        let mut env = Env {
            routes,
            channels,
            backoff: backoff_policy,
            admit,
            rng,
        };
        let pick = match last {
            None if !self.started => {
                self.started = true;
                self.enter_channel(0, &mut env, false)
            }
            None | Some(Verdict::Success) | Some(Verdict::Final) => None,
            Some(Verdict::Unserved) => self.enter_channel(self.pos + 1, &mut env, true),
            Some(Verdict::KeyRejected) => self.after_rejected_key(&mut env),
            Some(Verdict::Retryable {
                rotate_key,
                retry_after,
            }) => self.after_retryable(rotate_key, retry_after, &mut env),
        };
        if pick.is_some() {
            self.total_attempts += 1;
        }
        pick
    }

    /// A refused key: the channel's next key at once, else the next channel.
    fn after_rejected_key<R: Rng>(&mut self, env: &mut Env<'_, '_, R>) -> Option<Pick> {
        let route = self.order.get(self.pos).copied()?;
        let channel = env.routes[route].channel;
        match self.next_untried_key(channel, env.admit) {
            Some(key) => Some(self.same_channel(route, channel, Some(key), Duration::ZERO, false)),
            None => self.enter_channel(self.pos + 1, env, true),
        }
    }

    /// A retryable failure: another key for a 429, else a retry after backoff while
    /// the channel has retries left and is still open, else the next channel.
    fn after_retryable<R: Rng>(
        &mut self,
        rotate_key: bool,
        retry_after: Option<Duration>,
        env: &mut Env<'_, '_, R>,
    ) -> Option<Pick> {
        let route = self.order.get(self.pos).copied()?;
        let channel = env.routes[route].channel;
        // A 429 is about one key's quota: another key of the channel, at once,
        // whatever its Retry-After says, without using up a retry.
        if rotate_key {
            if let Some(key) = self.next_untried_key(channel, env.admit) {
                return Some(self.same_channel(route, channel, Some(key), Duration::ZERO, false));
            }
        }
        match self.retry_key(channel, rotate_key, retry_after, env) {
            Some(key) => {
                let (base, max) = env.policy(channel);
                let delay = backoff(self.channel_retries, base, max, retry_after, env.rng);
                self.channel_retries += 1;
                Some(self.same_channel(route, channel, key, delay, true))
            }
            None => self.enter_channel(self.pos + 1, env, true),
        }
    }

    /// The key a retry of the current channel uses (`Some(None)`: a channel without
    /// keys), or `None` when the channel is not to be retried.
    fn retry_key<R: Rng>(
        &mut self,
        channel: usize,
        rotate_key: bool,
        retry_after: Option<Duration>,
        env: &mut Env<'_, '_, R>,
    ) -> Option<Option<usize>> {
        let retries_left = self.channel_retries < env.channels[channel].retries;
        let wait_ok = retry_after.is_none_or(|ra| ra <= env.policy(channel).1);
        // The failure may just have suspended the channel.
        if !(retries_left && wait_ok && (env.admit)(Target::Channel(channel)).is_ok()) {
            return None;
        }
        if rotate_key {
            self.next_key_round(channel, env.admit)
        } else {
            self.current_key(channel, env.admit)
        }
    }

    fn same_channel(
        &self,
        route: usize,
        channel: usize,
        key: Option<usize>,
        delay: Duration,
        is_retry: bool,
    ) -> Pick {
        Pick {
            route,
            channel,
            key,
            delay,
            is_retry,
            is_failover: false,
        }
    }

    /// Moves to the first admitted channel at or after `from` and picks its first key.
    fn enter_channel<R: Rng>(
        &mut self,
        from: usize,
        env: &mut Env<'_, '_, R>,
        is_failover: bool,
    ) -> Option<Pick> {
        for pos in from..self.order.len() {
            let route = self.order[pos];
            let channel = env.routes[route].channel;
            if let Err(wait) = (env.admit)(Target::Channel(channel)) {
                self.skipped.push((channel, wait));
                continue;
            }
            let n = env.channels[channel].keys.len();
            // Start at a random key so that load spreads over all keys of a channel.
            self.keys = if n == 0 {
                Vec::new()
            } else {
                let start = env.rng.gen_range(0..n);
                (0..n).map(|i| (start + i) % n).collect()
            };
            self.key_pos = 0;
            self.key_frontier = 0;
            let key = if n == 0 {
                None
            } else {
                match self.first_admitted_key(channel, 0, env.admit) {
                    Some(k) => Some(k),
                    None => continue,
                }
            };
            self.pos = pos;
            self.channel_retries = 0;
            return Some(Pick {
                route,
                channel,
                key,
                delay: Duration::ZERO,
                is_retry: false,
                is_failover,
            });
        }
        self.pos = self.order.len();
        None
    }

    fn first_admitted_key(
        &mut self,
        channel: usize,
        from: usize,
        admit: &mut Admit<'_>,
    ) -> Option<usize> {
        let mut shortest: Option<Duration> = None;
        for p in from..self.keys.len() {
            match admit(Target::Key {
                channel,
                key: self.keys[p],
            }) {
                Ok(()) => {
                    self.key_pos = p;
                    self.key_frontier = self.key_frontier.max(p);
                    return Some(self.keys[p]);
                }
                Err(wait) => shortest = Some(shortest.map_or(wait, |s| s.min(wait))),
            }
        }
        if let (Some(wait), 0) = (shortest, from) {
            self.skipped.push((channel, wait));
        }
        None
    }

    /// A key of the current channel not used yet on this visit.
    fn next_untried_key(&mut self, channel: usize, admit: &mut Admit<'_>) -> Option<usize> {
        if self.keys.is_empty() {
            return None;
        }
        self.first_admitted_key(channel, self.key_frontier + 1, admit)
    }

    /// The key in use on the current channel (`Some(None)` when it has none).
    fn current_key(&mut self, channel: usize, admit: &mut Admit<'_>) -> Option<Option<usize>> {
        if self.keys.is_empty() {
            return Some(None);
        }
        let key = self.keys[self.key_pos];
        admit(Target::Key { channel, key }).ok().map(|_| Some(key))
    }

    /// The next admitted key round the channel's keys (the same one if it is the only one).
    fn next_key_round(&mut self, channel: usize, admit: &mut Admit<'_>) -> Option<Option<usize>> {
        let n = self.keys.len();
        if n == 0 {
            return Some(None);
        }
        for step in 1..=n {
            let p = (self.key_pos + step) % n;
            if admit(Target::Key {
                channel,
                key: self.keys[p],
            })
            .is_ok()
            {
                self.key_pos = p;
                return Some(Some(self.keys[p]));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{channel, routes};
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const POLICY: BackoffPolicy = BackoffPolicy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };

    fn open(_: Target) -> Result<(), Duration> {
        Ok(())
    }

    #[test]
    fn priority_tiers_come_first() {
        let channels = vec![
            channel("low", 1, 100, 0, 0),
            channel("high", 10, 1, 0, 0),
            channel("mid", 5, 1, 0, 0),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let order = failover_order(&routes(3), &channels, &mut rng);
            assert_eq!(order, vec![1, 2, 0]);
        }
    }

    #[test]
    fn weights_split_four_to_one() {
        let channels = vec![channel("a", 0, 4, 0, 0), channel("b", 0, 1, 0, 0)];
        let mut rng = StdRng::seed_from_u64(42);
        let n = 20_000;
        let firsts = (0..n)
            .filter(|_| failover_order(&routes(2), &channels, &mut rng)[0] == 0)
            .count();
        let share = firsts as f64 / n as f64;
        assert!((share - 0.8).abs() < 0.02, "share {share}");
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(verdict_for_status(200, None), Verdict::Success);
        assert_eq!(verdict_for_status(400, None), Verdict::Final);
        assert_eq!(verdict_for_status(404, None), Verdict::Final);
        assert_eq!(verdict_for_status(401, None), Verdict::KeyRejected);
        assert_eq!(verdict_for_status(403, None), Verdict::KeyRejected);
        assert!(matches!(
            verdict_for_status(429, None),
            Verdict::Retryable {
                rotate_key: true,
                ..
            }
        ));
        assert!(matches!(
            verdict_for_status(503, None),
            Verdict::Retryable {
                rotate_key: false,
                ..
            }
        ));
    }

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        let mut rng = StdRng::seed_from_u64(1);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for retry in 0..6 {
            let d = backoff(retry, base, max, None, &mut rng);
            let full = (base * 2u32.pow(retry)).min(max);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
        let d = backoff(0, base, max, Some(Duration::from_millis(700)), &mut rng);
        assert!(d >= Duration::from_millis(700));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    fn run(
        channels: &[Channel],
        verdicts: &[Verdict],
        max_total: Option<u32>,
        admit: &mut dyn FnMut(Target) -> Result<(), Duration>,
    ) -> Vec<Pick> {
        let routes = routes(channels.len());
        let mut rng = StdRng::seed_from_u64(3);
        let mut f = Failover::new(&routes, channels, max_total, &mut rng);
        let mut out = Vec::new();
        let mut last = None;
        let mut i = 0;
        while let Some(a) = f.next(last, &routes, channels, &POLICY, admit, &mut rng) {
            out.push(a);
            last = Some(*verdicts.get(i).unwrap_or(&Verdict::Success));
            i += 1;
            assert!(i < 100);
        }
        out
    }

    const RETRY: Verdict = Verdict::Retryable {
        rotate_key: false,
        retry_after: None,
    };

    #[test]
    fn retries_then_fails_over_in_priority_order() {
        let channels = vec![
            channel("a", 10, 1, 0, 2),
            channel("b", 5, 1, 0, 1),
            channel("c", 1, 1, 0, 0),
        ];
        let attempts = run(
            &channels,
            &[RETRY, RETRY, RETRY, RETRY, RETRY, RETRY],
            None,
            &mut open,
        );
        let seq: Vec<usize> = attempts.iter().map(|a| a.channel).collect();
        assert_eq!(seq, vec![0, 0, 0, 1, 1, 2]);
        assert!(attempts[1].is_retry && attempts[1].delay >= Duration::from_millis(50));
        assert!(attempts[3].is_failover && attempts[3].delay.is_zero());
    }

    #[test]
    fn success_and_final_answers_stop() {
        let channels = vec![channel("a", 10, 1, 0, 2), channel("b", 5, 1, 0, 1)];
        assert_eq!(
            run(&channels, &[Verdict::Success], None, &mut open).len(),
            1
        );
        assert_eq!(run(&channels, &[Verdict::Final], None, &mut open).len(), 1);
    }

    #[test]
    fn rejected_key_moves_to_the_next_key_then_channel_at_once() {
        let channels = vec![channel("a", 10, 1, 2, 3), channel("b", 5, 1, 1, 0)];
        let attempts = run(
            &channels,
            &[Verdict::KeyRejected, Verdict::KeyRejected],
            None,
            &mut open,
        );
        assert_eq!(attempts.len(), 3);
        assert_eq!(attempts[0].channel, 0);
        assert_eq!(attempts[1].channel, 0);
        assert_ne!(attempts[0].key, attempts[1].key);
        assert!(attempts[1].delay.is_zero());
        assert_eq!(attempts[2].channel, 1);
    }

    #[test]
    fn rate_limit_tries_every_key_at_once_then_retries_with_backoff() {
        let channels = vec![channel("a", 10, 1, 3, 1)];
        let rl = Verdict::Retryable {
            rotate_key: true,
            retry_after: Some(Duration::from_secs(30)),
        };
        // Three keys without delay even with a long Retry-After, then no retry
        // (the wait is beyond backoff.max).
        let attempts = run(&channels, &[rl; 5], None, &mut open);
        assert_eq!(attempts.len(), 3);
        let keys: std::collections::HashSet<_> = attempts.iter().map(|a| a.key).collect();
        assert_eq!(keys.len(), 3);
        assert!(attempts.iter().all(|a| a.delay.is_zero()));

        let rl = Verdict::Retryable {
            rotate_key: true,
            retry_after: None,
        };
        let attempts = run(&channels, &[rl; 5], None, &mut open);
        // 3 keys, then 1 retry with backoff.
        assert_eq!(attempts.len(), 4);
        assert!(attempts[3].is_retry && !attempts[3].delay.is_zero());
    }

    #[test]
    fn a_channel_s_own_backoff_overrides_the_server_s() {
        let mut slow = channel("slow", 10, 1, 0, 2);
        slow.backoff = Some((Duration::from_secs(2), Duration::from_secs(4)));
        let fast = channel("fast", 10, 1, 0, 2);
        for (c, range) in [
            (slow, Duration::from_secs(1)..=Duration::from_secs(4)),
            (fast, Duration::ZERO..=POLICY.max),
        ] {
            let attempts = run(&[c], &[RETRY, RETRY], None, &mut open);
            assert_eq!(attempts.len(), 3);
            for a in &attempts[1..] {
                assert!(range.contains(&a.delay), "{:?} not in {range:?}", a.delay);
            }
        }
        // A Retry-After beyond the channel's own max is not waited for there.
        let mut quick = channel("quick", 10, 1, 0, 2);
        quick.backoff = Some((Duration::from_millis(1), Duration::from_millis(2)));
        let later = Verdict::Retryable {
            rotate_key: false,
            retry_after: Some(Duration::from_millis(50)),
        };
        assert_eq!(run(&[quick], &[later; 3], None, &mut open).len(), 1);
    }

    #[test]
    fn a_channel_suspended_by_its_failure_is_not_retried() {
        let channels = vec![channel("a", 10, 1, 0, 3), channel("b", 5, 1, 0, 0)];
        let mut calls = 0;
        let mut admit = |t: Target| {
            if let Target::Channel(0) = t {
                calls += 1;
                // Open for the first attempt, suspended right after it.
                if calls > 1 {
                    return Err(Duration::from_secs(30));
                }
            }
            Ok(())
        };
        let attempts = run(&channels, &[RETRY, RETRY], None, &mut admit);
        assert_eq!(
            attempts.iter().map(|a| a.channel).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn long_retry_after_skips_to_the_next_channel() {
        let channels = vec![channel("a", 10, 1, 0, 3), channel("b", 5, 1, 0, 0)];
        let rl = Verdict::Retryable {
            rotate_key: true,
            retry_after: Some(Duration::from_secs(60)),
        };
        let attempts = run(&channels, &[rl], None, &mut open);
        assert_eq!(
            attempts.iter().map(|a| a.channel).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn gateway_budget_caps_total_attempts() {
        let channels = vec![channel("a", 10, 1, 0, 5), channel("b", 5, 1, 0, 5)];
        assert_eq!(run(&channels, &[RETRY; 20], Some(3), &mut open).len(), 3);
    }

    #[test]
    fn suspended_channels_and_keys_are_skipped() {
        let channels = vec![channel("a", 10, 1, 1, 0), channel("b", 5, 1, 2, 0)];
        let mut admit = |t: Target| match t {
            Target::Channel(0) => Err(Duration::from_secs(9)),
            Target::Key { channel: 1, key: 0 } => Err(Duration::from_secs(4)),
            _ => Ok(()),
        };
        let routes = routes(2);
        let mut rng = StdRng::seed_from_u64(3);
        let mut f = Failover::new(&routes, &channels, None, &mut rng);
        let a = f
            .next(None, &routes, &channels, &POLICY, &mut admit, &mut rng)
            .unwrap();
        assert_eq!((a.channel, a.key), (1, Some(1)));
        assert!(f.skipped.contains(&(0, Duration::from_secs(9))));
        assert!(f
            .next(
                Some(RETRY),
                &routes,
                &channels,
                &POLICY,
                &mut admit,
                &mut rng
            )
            .is_none());
    }
}
