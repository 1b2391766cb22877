//! Per-request context shared by the steps of one request, grouped by concern so a
//! reader sees which part a step touches: `route` is written by intake and call,
//! `who` by admission, `tries` by dispatch, `reply` by relay and respond; logging
//! reads them all.

use super::caller::Caller;
use crate::accounts::{RateCharge, RateHeadroom};
use crate::cache::CacheKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_filters::config::Runtime;
use weir_filters::route::Endpoint;
use weir_filters::usage::Usage;

pub struct Ctx {
    pub started: Instant,
    /// The config snapshot this request runs on from start to end.
    pub snapshot: Option<Arc<Runtime>>,
    pub route: Route,
    pub who: Who,
    pub tries: Tries,
    pub reply: Reply,
}

/// Where the request goes.
pub struct Route {
    pub gateway: Option<String>,
    pub endpoint: Option<Endpoint>,
    /// The configured model name the request routed to (`default` for the catch-all),
    /// `-` before routing: never raw client input, so metric labels stay bounded.
    pub model_label: String,
    /// The model name the client asked for (prices and usage rows use it).
    pub requested_model: Option<String>,
    /// The model name the answering channel was sent, when it differs.
    pub upstream_model: Option<String>,
    pub stream: bool,
    /// The body as the client sent it: kept (cleaned, cut) in the call log when the
    /// call fails. A reference to the same bytes, not a copy.
    pub body: Option<bytes::Bytes>,
    /// The client's address, through `server.trusted_proxies` (call log, `ip:`).
    pub client_ip: Option<std::net::IpAddr>,
    /// What `masking` replaced in the request (counts for the log, and the
    /// originals for `restore`).
    pub masked: Option<Arc<weir_filters::masking::Table>>,
}

/// Who called, once admitted, and what the request counted against the limits.
#[derive(Default)]
pub struct Who {
    pub caller: Option<Caller>,
    pub key_id: Option<i64>,
    pub identity: Option<String>,
    /// The tightest rate limit, for `x-ratelimit-*` response headers.
    pub rate: Option<RateHeadroom>,
    /// What this request counted against rate limits (refunded if it is refused).
    pub rate_charge: RateCharge,
}

/// The upstream attempts made.
pub struct Tries {
    /// The last channel tried, `-` when none.
    pub channel: String,
    /// That channel's base URL.
    pub upstream: Option<Arc<str>>,
    /// The attempts in order, for the call log, when there was more than one or
    /// none answered well.
    pub tried: Option<String>,
    pub attempts: u32,
    pub retries: u32,
    pub failovers: u32,
}

/// What the client got.
#[derive(Default)]
pub struct Reply {
    /// Status of the response sent to the client (0 until sent).
    pub status: u16,
    pub first_byte: Option<Duration>,
    pub usage: Option<Usage>,
    /// Why the request failed, for the log line.
    pub error: Option<String>,
    /// The error's code (ours, or the upstream's for an error relayed as is).
    pub error_code: Option<String>,
    /// The error body the client got (ours, or the upstream's, cut).
    pub error_body: Option<Vec<u8>>,
    /// The answer broke after it started reaching the client.
    pub broken: bool,
    pub client_gone: bool,
    /// On a cache miss: where the answer goes once it completed cleanly.
    pub cache_fill: Option<(CacheKey, u32)>,
    /// Answered from the cache (not billed).
    pub cache_hit: bool,
}

impl Ctx {
    pub fn new() -> Self {
        Ctx {
            started: Instant::now(),
            snapshot: None,
            route: Route {
                gateway: None,
                endpoint: None,
                model_label: "-".into(),
                requested_model: None,
                upstream_model: None,
                stream: false,
                body: None,
                client_ip: None,
                masked: None,
            },
            who: Who::default(),
            tries: Tries {
                channel: "-".into(),
                upstream: None,
                tried: None,
                attempts: 0,
                retries: 0,
                failovers: 0,
            },
            reply: Reply::default(),
        }
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}
