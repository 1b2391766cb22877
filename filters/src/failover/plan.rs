//! One request's failover plan (P3, P4, P5): it hands out attempts in order, takes
//! each attempt's outcome, keeps health (admission, trials, and what every outcome
//! teaches), and picks the final error when nothing answered well. The glue only
//! sends bytes and reports what came back.

use super::order::{verdict_for_status, BackoffPolicy, Failover, Target, Verdict};
use super::summary::{FailKind, Summary};
use crate::config::{Channel, Route};
use crate::health::{HealthId, HealthPolicy, HealthRegistry, Trial};
use crate::GatewayError;
use rand::rngs::SmallRng;
use std::time::Duration;

/// The rules a plan follows, from the server and gateway config.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub health: HealthPolicy,
    pub backoff: BackoffPolicy,
    /// A cap on attempts across all channels (a gateway's `retries` + 1).
    pub max_attempts: Option<u32>,
}

/// One attempt to make. Holds the health trials it was granted: dropped without an
/// outcome (the client left, the request was cancelled) they are given back.
pub struct Attempt<'a> {
    pub channel: &'a Channel,
    /// The channel's key to send; `None` for a channel without keys.
    pub key: Option<&'a str>,
    /// The model name the channel is asked for.
    pub upstream_model: &'a str,
    /// Wait this long before sending.
    pub delay: Duration,
    /// This attempt repeats the previous channel.
    pub is_retry: bool,
    /// This attempt moves to another channel after a failure.
    pub is_failover: bool,
    _trials: Vec<Trial<'a>>,
}

/// What came of an attempt.
#[derive(Debug)]
pub enum Outcome<'e> {
    /// The upstream answered with a status line.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
        /// The provider said the key is the problem whatever the status
        /// (Gemini's 400 `API_KEY_INVALID`).
        key_rejected: bool,
    },
    /// No answer at all.
    Failed { kind: FailKind, detail: &'e str },
    /// The channel cannot take this request (its provider lacks the endpoint):
    /// nothing learned about its health.
    Refused(GatewayError),
}

/// The plan's reading of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub verdict: Verdict,
    /// The `outcome` label for `weir_upstream_attempts_total`, when it counts.
    pub outcome: Option<&'static str>,
}

impl Settled {
    /// The answer goes to the client (a success, or a client error as it is).
    pub fn relays(&self) -> bool {
        matches!(self.verdict, Verdict::Success | Verdict::Final)
    }
}

pub struct Plan<'a> {
    routes: &'a [Route],
    channels: &'a [Channel],
    health: &'a HealthRegistry,
    rules: Rules,
    order: Failover,
    rng: SmallRng,
    last: Option<Verdict>,
    summary: Summary<'a>,
}

impl<'a> Plan<'a> {
    pub fn new(
        routes: &'a [Route],
        channels: &'a [Channel],
        health: &'a HealthRegistry,
        rules: Rules,
        mut rng: SmallRng,
    ) -> Self {
        Plan {
            order: Failover::new(routes, channels, rules.max_attempts, &mut rng),
            routes,
            channels,
            health,
            rules,
            rng,
            last: None,
            summary: Summary::new(),
        }
    }

    /// The next attempt, or `None` when nothing is left to try (or the last
    /// outcome ended the request).
    pub fn next_attempt(&mut self) -> Option<Attempt<'a>> {
        let (health, channels) = (self.health, self.channels);
        let mut trials: Vec<(Target, Trial<'a>)> = Vec::new();
        let mut admit = |t: Target| {
            let (id, probe) = health_id(channels, t);
            let trial = health.enter(id, probe)?;
            trials.extend(trial.map(|tr| (t, tr)));
            Ok(())
        };
        let last = self.last.take();
        let pick = self.order.next(
            last,
            self.routes,
            channels,
            &self.rules.backoff,
            &mut admit,
            &mut self.rng,
        )?;
        let channel = &channels[pick.channel];
        // Trials granted while looking, for channels and keys not picked, go back
        // here as their tokens drop.
        let mine = trials
            .into_iter()
            .filter(|(t, _)| match *t {
                Target::Channel(c) => c == pick.channel,
                Target::Key { channel: c, key } => c == pick.channel && Some(key) == pick.key,
            })
            .map(|(_, tr)| tr)
            .collect();
        Some(Attempt {
            channel,
            key: pick.key.map(|k| channel.keys[k].as_str()),
            upstream_model: &self.routes[pick.route].upstream_model,
            delay: pick.delay,
            is_retry: pick.is_retry,
            is_failover: pick.is_failover,
            _trials: mine,
        })
    }

    /// Takes an attempt's outcome: health learns from it, the summary notes a
    /// failure, and the next `next_attempt()` follows from it.
    pub fn settle(&mut self, attempt: Attempt<'a>, outcome: Outcome<'_>) -> Settled {
        let (channel, key) = (attempt.channel, attempt.key);
        let settled = match outcome {
            Outcome::Answered {
                status,
                retry_after,
                key_rejected,
            } => {
                let verdict = if key_rejected {
                    Verdict::KeyRejected
                } else {
                    verdict_for_status(status, retry_after)
                };
                let outcome = self.learn(channel, key, verdict, status);
                let good = matches!(verdict, Verdict::Success | Verdict::Final);
                self.summary.answered(&channel.name, key, status, good);
                if let (false, Some(ra)) = (good, retry_after) {
                    self.summary.wait(ra);
                }
                Settled {
                    verdict,
                    outcome: Some(outcome),
                }
            }
            Outcome::Failed { kind, detail } => {
                let id = HealthId::channel(&channel.name);
                self.health
                    .failure(&id, &self.rules.health, &kind.describe(detail));
                self.summary.failed(&channel.name, key, kind, detail);
                Settled {
                    verdict: Verdict::Retryable {
                        rotate_key: false,
                        retry_after: None,
                    },
                    outcome: Some(kind.outcome()),
                }
            }
            Outcome::Refused(e) => {
                self.summary.refused(e);
                Settled {
                    verdict: Verdict::Unserved,
                    outcome: None,
                }
            }
        };
        self.last = Some(settled.verdict);
        // Trials not settled by what health just recorded (a key whose channel
        // failed, a refused channel) go back as `attempt` drops here; for the ids
        // just recorded, giving back is a no-op.
        drop(attempt);
        settled
    }

    /// The upstream error code of the last failed answer, for the log.
    pub fn note_code(&mut self, code: String) {
        self.summary.code(code);
    }

    /// What health learns from an answer; returns its metric outcome.
    fn learn(&self, channel: &Channel, key: Option<&str>, v: Verdict, status: u16) -> &'static str {
        let h = self.health;
        let policy = &self.rules.health;
        let ch = HealthId::channel(&channel.name);
        let key = key.map(|k| HealthId::key(&channel.name, k));
        // Only failures need a reason: no allocation on the common path.
        let reason = || format!("HTTP {status}");
        match (v, key) {
            (Verdict::Success | Verdict::Final, key) => {
                h.success(&ch);
                if let Some(id) = key {
                    h.success(&id);
                }
                if v == Verdict::Success {
                    "ok"
                } else {
                    "client_error"
                }
            }
            // The server answers; the key is what is wrong.
            (Verdict::KeyRejected, Some(id)) => {
                h.success(&ch);
                h.failure(&id, policy, &reason());
                "key_rejected"
            }
            (Verdict::KeyRejected, None) => {
                h.failure(&ch, policy, &reason());
                "key_rejected"
            }
            // A 429 is about the key's quota when there is a key.
            (
                Verdict::Retryable {
                    rotate_key: true,
                    retry_after,
                },
                key,
            ) => {
                let id = match key {
                    Some(id) => {
                        h.success(&ch);
                        id
                    }
                    None => ch,
                };
                match retry_after {
                    // The upstream says how long: believe it rather than hammering.
                    Some(ra) if ra > self.rules.backoff.max => {
                        h.failure_for(&id, policy, ra, &reason())
                    }
                    _ => {
                        h.failure(&id, policy, &reason());
                    }
                }
                "rate_limited"
            }
            (Verdict::Retryable { .. }, _) => {
                h.failure(&ch, policy, &reason());
                "server_error"
            }
            // Never made from a status code.
            (Verdict::Unserved, _) => "refused",
        }
    }

    /// The attempts that failed so far, in order, for the call log, and the one
    /// that answered (channel, status) at the end when given. `None` (and nothing
    /// allocated) when no attempt failed.
    pub fn tried(&self, answered: Option<(&str, u16)>) -> Option<String> {
        let failed = self.summary.log()?;
        Some(match answered {
            Some((channel, status)) => format!("{failed}; {channel}: HTTP {status}"),
            None => failed,
        })
    }

    /// Nothing answered well: the error for the client and the account for the log.
    pub fn give_up(mut self, model: &str) -> (GatewayError, String) {
        for &(c, wait) in &self.order.skipped {
            self.summary.suspended(&self.channels[c].name, wait);
        }
        self.summary.give_up(model)
    }
}

/// The health entry a target stands for, and how long its trial may take.
fn health_id(channels: &[Channel], t: Target) -> (HealthId, Duration) {
    let (c, id) = match t {
        Target::Channel(c) => (&channels[c], HealthId::channel(&channels[c].name)),
        Target::Key { channel, key } => {
            let ch = &channels[channel];
            (ch, HealthId::key(&ch.name, &ch.keys[key]))
        }
    };
    (id, c.connect_timeout + c.first_byte_timeout)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{channel, routes};
    use super::*;
    use rand::SeedableRng;

    fn rules(failures: u32, cooldown: Duration) -> Rules {
        Rules {
            health: HealthPolicy {
                failures,
                cooldown,
                max_cooldown: Duration::from_secs(600),
            },
            backoff: BackoffPolicy {
                base: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            max_attempts: None,
        }
    }

    const RULES: fn() -> Rules = || rules(3, Duration::from_secs(60));

    fn status(status: u16) -> Outcome<'static> {
        Outcome::Answered {
            status,
            retry_after: None,
            key_rejected: false,
        }
    }

    fn plan<'a>(
        routes: &'a [Route],
        channels: &'a [Channel],
        health: &'a HealthRegistry,
        rules: Rules,
    ) -> Plan<'a> {
        Plan::new(routes, channels, health, rules, SmallRng::seed_from_u64(5))
    }

    /// Runs a plan answering every attempt with `answer`, up to a bound; returns
    /// the (channel, key) of each attempt and the plan.
    fn drive<'a>(
        mut plan: Plan<'a>,
        mut answer: impl FnMut(&Attempt<'a>) -> Outcome<'static>,
    ) -> (Vec<(String, Option<String>)>, Plan<'a>) {
        let mut seen = Vec::new();
        while let Some(a) = plan.next_attempt() {
            seen.push((a.channel.name.clone(), a.key.map(str::to_string)));
            let out = answer(&a);
            if plan.settle(a, out).relays() {
                break;
            }
            assert!(seen.len() < 50, "the plan does not end");
        }
        (seen, plan)
    }

    fn names(seen: &[(String, Option<String>)]) -> Vec<&str> {
        seen.iter().map(|(c, _)| c.as_str()).collect()
    }

    #[test]
    fn priority_then_retries_then_the_final_error_names_every_try() {
        let channels = vec![
            channel("low", 1, 1, 1, 0),
            channel("high", 10, 1, 1, 1),
            channel("mid", 5, 1, 0, 0),
        ];
        let (routes, health) = (routes(3), HealthRegistry::default());
        let mut p = plan(&routes, &channels, &health, RULES());
        let first = p.next_attempt().expect("an attempt");
        assert_eq!(
            (first.channel.name.as_str(), first.upstream_model),
            ("high", "m1")
        );
        assert!(!first.is_retry && !first.is_failover && first.delay.is_zero());
        p.settle(first, status(503));
        p.note_code("overloaded".into());
        let retry = p.next_attempt().expect("a retry");
        assert!(retry.is_retry && retry.delay >= Duration::from_millis(50));
        let (seen, p) = drive_from(p, retry, |_| status(500));
        assert_eq!(names(&seen), ["high", "mid", "low"]);
        let tried = p.tried(None).expect("attempts failed");
        assert!(
            tried.starts_with("high: HTTP 503 (overloaded) key …"),
            "{tried}"
        );
        assert!(tried.contains("; low: HTTP 500"), "{tried}");
        assert_eq!(
            p.tried(Some(("x", 200))).unwrap(),
            format!("{tried}; x: HTTP 200")
        );
        let (e, log) = p.give_up("gpt");
        assert_eq!(e.status(), 502);
        let text = e.to_string();
        assert!(
            text.contains("tried high: HTTP 503; high: HTTP 500; mid: HTTP 500; low: HTTP 500"),
            "{text}"
        );
        // The log has the upstream's code and a key hint; the client has neither.
        assert!(log.contains("high: HTTP 503 (overloaded) key …"), "{log}");
        assert!(!text.contains("overloaded") && !text.contains("key"));
        assert!(!log.contains("sk-high"), "a key reached the log: {log}");
    }

    /// `drive`, with an attempt already handed out.
    fn drive_from<'a>(
        mut plan: Plan<'a>,
        first: Attempt<'a>,
        mut answer: impl FnMut(&Attempt<'a>) -> Outcome<'static>,
    ) -> (Vec<(String, Option<String>)>, Plan<'a>) {
        let seen = vec![(first.channel.name.clone(), first.key.map(str::to_string))];
        let out = answer(&first);
        plan.settle(first, out);
        let (mut rest, plan) = drive(plan, answer);
        let mut all = seen;
        all.append(&mut rest);
        (all, plan)
    }

    #[test]
    fn weights_spread_first_attempts_four_to_one() {
        let channels = vec![channel("a", 0, 4, 0, 0), channel("b", 0, 1, 0, 0)];
        let (routes, health) = (routes(2), HealthRegistry::default());
        let n = 5000;
        let a_first = (0..n)
            .filter(|&seed| {
                let rng = SmallRng::seed_from_u64(seed);
                let mut p = Plan::new(&routes, &channels, &health, RULES(), rng);
                p.next_attempt().is_some_and(|a| a.channel.name == "a")
            })
            .count();
        let share = a_first as f64 / f64::from(n as u32);
        assert!((share - 0.8).abs() < 0.03, "share {share}");
    }

    #[test]
    fn a_rejected_key_hands_over_to_the_next_key_and_is_suspended() {
        let channels = vec![channel("a", 0, 1, 3, 0)];
        let (routes, health) = (routes(1), HealthRegistry::default());
        let rules = rules(1, Duration::from_secs(60));
        let mut calls = 0;
        let (seen, _) = drive(plan(&routes, &channels, &health, rules), |_| {
            calls += 1;
            status(if calls == 1 { 401 } else { 200 })
        });
        assert_eq!(seen.len(), 2);
        assert_ne!(seen[0].1, seen[1].1, "the same key was tried twice");
        let bad = HealthId::key("a", seen[0].1.as_deref().unwrap_or_default());
        assert!(
            health.admit(&bad, Duration::ZERO).is_err(),
            "the refused key is not suspended"
        );
        // The channel answered, so it is not blamed.
        assert!(health
            .admit(&HealthId::channel("a"), Duration::ZERO)
            .is_ok());
    }

    #[test]
    fn rate_limits_on_every_key_give_429_with_the_shortest_wait() {
        let channels = vec![channel("a", 0, 1, 2, 3)];
        let (routes, health) = (routes(1), HealthRegistry::default());
        let mut wait = 40;
        let (seen, p) = drive(plan(&routes, &channels, &health, RULES()), |_| {
            wait -= 10;
            Outcome::Answered {
                status: 429,
                retry_after: Some(Duration::from_secs(wait)),
                key_rejected: false,
            }
        });
        // Both keys at once; the waits are beyond the backoff cap, so no retry.
        assert_eq!(seen.len(), 2);
        let (e, _) = p.give_up("m");
        assert_eq!(e.status(), 429);
        assert_eq!(e.retry_after(), Some(20));
    }

    #[test]
    fn timeouts_everywhere_give_504_and_mixed_failures_502() {
        let channels = vec![channel("a", 1, 1, 0, 0), channel("b", 0, 1, 0, 0)];
        let (routes, health) = (routes(2), HealthRegistry::default());
        let timeout = |_: &Attempt<'_>| Outcome::Failed {
            kind: FailKind::Timeout,
            detail: "no response header within 1s",
        };
        let (_, p) = drive(plan(&routes, &channels, &health, RULES()), timeout);
        let (e, log) = p.give_up("m");
        assert_eq!(e.status(), 504);
        assert!(
            log.contains("a: timed out (no response header within 1s)"),
            "{log}"
        );

        let mut n = 0;
        let (_, p) = drive(plan(&routes, &channels, &health, RULES()), |_| {
            n += 1;
            if n == 1 {
                Outcome::Failed {
                    kind: FailKind::Connect,
                    detail: "refused",
                }
            } else {
                status(502)
            }
        });
        let (e, _) = p.give_up("m");
        assert_eq!(e.status(), 502);
        assert!(
            e.to_string().contains("a: connect failed; b: HTTP 502"),
            "{e}"
        );
    }

    #[test]
    fn suspended_channels_are_skipped_and_none_left_gives_503() {
        let channels = vec![channel("a", 1, 1, 0, 0), channel("b", 0, 1, 0, 0)];
        let (routes, health) = (routes(2), HealthRegistry::default());
        let rules = rules(1, Duration::from_secs(30));
        health.failure(&HealthId::channel("a"), &rules.health, "HTTP 500");
        let (seen, _) = drive(plan(&routes, &channels, &health, rules), |_| status(200));
        assert_eq!(names(&seen), ["b"]);

        health.failure(&HealthId::channel("b"), &rules.health, "HTTP 500");
        let mut p = plan(&routes, &channels, &health, rules);
        assert!(p.next_attempt().is_none());
        let (e, _) = p.give_up("m");
        assert_eq!(e.status(), 503);
        assert!(
            e.to_string()
                .contains("a: suspended for 30s; b: suspended for 30s"),
            "{e}"
        );
        assert_eq!(e.retry_after(), Some(30));
    }

    #[test]
    fn a_refusing_channel_teaches_nothing_and_its_error_is_kept_only_if_none_served() {
        let channels = vec![channel("a", 1, 1, 0, 0), channel("b", 0, 1, 0, 0)];
        let (routes, health) = (routes(2), HealthRegistry::default());
        let refuse =
            |_: &Attempt<'_>| Outcome::Refused(GatewayError::BadRequest("no embeddings".into()));
        let (seen, p) = drive(
            plan(
                &routes,
                &channels,
                &health,
                rules(1, Duration::from_secs(60)),
            ),
            refuse,
        );
        assert_eq!(names(&seen), ["a", "b"]);
        let (e, _) = p.give_up("m");
        assert_eq!(e, GatewayError::BadRequest("no embeddings".into()));
        assert!(health
            .admit(&HealthId::channel("a"), Duration::ZERO)
            .is_ok());

        let mut n = 0;
        let (_, p) = drive(plan(&routes, &channels, &health, RULES()), |a| {
            n += 1;
            if n == 1 {
                refuse(a)
            } else {
                status(500)
            }
        });
        assert_eq!(p.give_up("m").0.status(), 502);
    }

    /// A channel whose cooldown has run out, with its one trial open.
    fn cooled_down(health: &HealthRegistry, name: &str) -> Rules {
        let rules = rules(1, Duration::from_millis(50));
        health.failure(&HealthId::channel(name), &rules.health, "HTTP 500");
        std::thread::sleep(Duration::from_millis(60));
        rules
    }

    #[test]
    fn a_trial_dropped_without_an_outcome_is_given_back() {
        let channels = vec![channel("a", 0, 1, 0, 0)];
        let (routes, health) = (routes(1), HealthRegistry::default());
        let rules = cooled_down(&health, "a");
        let mut p = plan(&routes, &channels, &health, rules);
        let trial = p.next_attempt().expect("the trial");
        // While it is out, another request finds the channel closed.
        let mut other = plan(&routes, &channels, &health, rules);
        assert!(other.next_attempt().is_none());
        drop(trial); // the client left
        let mut again = plan(&routes, &channels, &health, rules);
        assert!(
            again.next_attempt().is_some(),
            "the trial slot was not given back"
        );
    }

    #[test]
    fn a_failed_trial_suspends_again_and_a_good_one_reopens() {
        let channels = vec![channel("a", 0, 1, 0, 0)];
        let (routes, health) = (routes(1), HealthRegistry::default());
        let rules = cooled_down(&health, "a");
        let (seen, _) = drive(plan(&routes, &channels, &health, rules), |_| status(500));
        assert_eq!(seen.len(), 1);
        assert!(plan(&routes, &channels, &health, rules)
            .next_attempt()
            .is_none());

        let health = HealthRegistry::default();
        let rules = cooled_down(&health, "a");
        drive(plan(&routes, &channels, &health, rules), |_| status(200));
        let report = health.report(&HealthId::channel("a"));
        assert_eq!(report.state, crate::health::HealthState::Healthy);
    }

    #[test]
    fn a_trial_granted_to_a_channel_whose_keys_are_closed_goes_back() {
        // Channel `a` is due a trial but its only key is suspended: `b` is used,
        // and `a`'s trial must not stay taken.
        let channels = vec![channel("a", 1, 1, 1, 0), channel("b", 0, 1, 0, 0)];
        let (routes, health) = (routes(2), HealthRegistry::default());
        let rules = cooled_down(&health, "a");
        let key = HealthId::key("a", &channels[0].keys[0]);
        health.failure_for(&key, &rules.health, Duration::from_secs(60), "HTTP 429");
        let mut p = plan(&routes, &channels, &health, rules);
        let a = p.next_attempt().expect("an attempt");
        assert_eq!(a.channel.name, "b");
        assert!(health
            .admit(&HealthId::channel("a"), Duration::from_secs(60))
            .is_ok());
    }

    #[test]
    fn the_gateway_cap_ends_the_plan() {
        let channels = vec![channel("a", 1, 1, 0, 5), channel("b", 0, 1, 0, 5)];
        let (routes, health) = (routes(2), HealthRegistry::default());
        let mut rules = RULES();
        rules.backoff.base = Duration::from_millis(1);
        rules.max_attempts = Some(3);
        let (seen, _) = drive(plan(&routes, &channels, &health, rules), |_| status(500));
        assert_eq!(seen.len(), 3);
    }
}
