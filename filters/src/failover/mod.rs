//! Failover (P3, P4, P5): which channel and key each attempt of a request uses, what
//! every outcome teaches health, and what the client is told when nothing answered.
//!
//! - `order`: priority tiers, weighted order, retries, key hand-over, backoff.
//! - `plan`: one request's attempts, health trials that give themselves back, the
//!   outcome of each attempt.
//! - `summary`: what was tried, for the client and the log, and the final error.

mod order;
mod plan;
mod summary;

pub use order::{
    backoff, failover_order, parse_retry_after, verdict_for_status, BackoffPolicy, Failover, Pick,
    Target, Verdict,
};
pub use plan::{Attempt, Outcome, Plan, Rules, Settled};
pub use summary::{FailKind, Summary};

#[cfg(test)]
mod testkit {
    use crate::config::{Channel, ChannelType, Route, Source};
    use std::time::Duration;

    pub fn channel(name: &str, priority: i32, weight: u32, keys: usize, retries: u32) -> Channel {
        Channel {
            name: name.into(),
            kind: ChannelType::Mock,
            upstream: None,
            keys: (0..keys).map(|k| format!("sk-{name}-key-{k:08}")).collect(),
            priority,
            weight,
            groups: None,
            retries,
            backoff: None,
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_secs(1),
            proxy: None,
            exposed: vec!["m".into()],
            api_version: None,
            default_max_tokens: None,
            enabled: true,
            starts_suspended: false,
            source: Source::File,
        }
    }

    pub fn routes(n: usize) -> Vec<Route> {
        (0..n)
            .map(|channel| Route {
                channel,
                upstream_model: format!("m{channel}"),
            })
            .collect()
    }
}
