//! Prometheus metrics (A3). Labels are bounded: gateway, channel and configured model
//! names come from the config, never from client input; no per-key labels.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock, RwLock};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub ttft: HistogramVec,
    pub tokens: IntCounterVec,
    pub retries: IntCounterVec,
    pub failovers: IntCounterVec,
    pub upstream_attempts: IntCounterVec,
    pub stream_errors: IntCounterVec,
    pub channel_up: IntGaugeVec,
    pub channel_state: IntGaugeVec,
    pub key_up: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub refused: IntCounterVec,
    pub cache: IntCounterVec,
    pub config_version: IntGauge,
    pub in_flight: IntGauge,
    /// Per-request series by (gateway, model, channel), looked up once per request
    /// instead of once per metric. Keyed by a hash of the three names; each entry
    /// keeps the names to tell a collision apart.
    series: RwLock<crate::FastMap<u64, Arc<Series>>>,
    series_hasher: foldhash::fast::RandomState,
}

/// The series one request writes. Each is registered on first use, as
/// `with_label_values` would, so no empty series appear in the exposition.
pub struct Series {
    names: [String; 3],
    requests: [OnceLock<IntCounter>; 6],
    duration: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    tokens: [OnceLock<IntCounter>; 2],
}

impl Series {
    fn new(names: [&str; 3]) -> Series {
        Series {
            names: names.map(str::to_string),
            requests: Default::default(),
            duration: OnceLock::new(),
            ttft: OnceLock::new(),
            tokens: Default::default(),
        }
    }

    fn labels(&self) -> [&str; 3] {
        [&self.names[0], &self.names[1], &self.names[2]]
    }

    pub fn request(&self, m: &Metrics, status: u16) -> &IntCounter {
        let class = status_class(status);
        let i = STATUS_CLASSES.iter().position(|c| *c == class).unwrap_or(5);
        self.requests[i].get_or_init(|| {
            let [g, model, c] = self.labels();
            m.requests.with_label_values(&[g, model, c, class])
        })
    }

    pub fn duration(&self, m: &Metrics) -> &Histogram {
        self.duration
            .get_or_init(|| m.duration.with_label_values(&self.labels()))
    }

    pub fn ttft(&self, m: &Metrics) -> &Histogram {
        self.ttft
            .get_or_init(|| m.ttft.with_label_values(&self.labels()))
    }

    /// `out = false`: prompt tokens; `true`: completion tokens.
    pub fn tokens(&self, m: &Metrics, out: bool) -> &IntCounter {
        self.tokens[usize::from(out)].get_or_init(|| {
            let [g, model, c] = self.labels();
            m.tokens
                .with_label_values(&[g, model, c, if out { "out" } else { "in" }])
        })
    }
}

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram = |name: &str, help: &str| -> Result<HistogramVec, prometheus::Error> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["gateway", "model", "channel"],
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let requests = counter(
            "weir_requests_total",
            "Client requests answered, by status class (2xx, 4xx, 5xx).",
            &["gateway", "model", "channel", "status"],
        )?;
        let duration = histogram(
            "weir_request_duration_seconds",
            "Time from request to the last byte of the answer.",
        )?;
        let ttft = histogram(
            "weir_time_to_first_token_seconds",
            "Time from request to the first answer byte sent to the client.",
        )?;
        let tokens = counter(
            "weir_tokens_total",
            "Tokens by direction (in = prompt, out = completion); estimated ones included.",
            &["gateway", "model", "channel", "direction"],
        )?;
        let retries = counter(
            "weir_retries_total",
            "Extra attempts on the same channel after a retryable failure.",
            &["gateway", "channel"],
        )?;
        let failovers = counter(
            "weir_failovers_total",
            "Moves to another channel after a failure.",
            &["gateway", "model"],
        )?;
        let upstream_attempts = counter(
            "weir_upstream_attempts_total",
            "Upstream attempts by outcome (ok, client_error, rate_limited, key_rejected, server_error, connect_error, timeout).",
            &["channel", "outcome"],
        )?;
        let stream_errors = counter(
            "weir_stream_errors_total",
            "Answers that broke after their first byte reached the client.",
            &["gateway", "channel"],
        )?;
        let channel_up = gauge(
            "weir_channel_up",
            "1 when a channel accepts requests (healthy or probing), 0 when suspended.",
            &["channel"],
        )?;
        let channel_state = gauge(
            "weir_channel_state",
            "Health state of a channel, one series per state set to 1.",
            &["channel", "state"],
        )?;
        let key_up = gauge(
            "weir_channel_key_up",
            "1 when a channel's key (by position) is not suspended.",
            &["channel", "key"],
        )?;
        let reloads = counter(
            "weir_config_reloads_total",
            "Config reloads by result.",
            &["result"],
        )?;
        let cache = counter(
            "weir_cache_total",
            "Response cache lookups and fills by result (hit, miss, stored).",
            &["gateway", "model", "result"],
        )?;
        let refused = counter(
            "weir_refused_total",
            "Requests refused before any upstream call, by gateway and error code (invalid_api_key, rate_limit_exceeded, budget_exceeded, access_denied, ...).",
            &["gateway", "code"],
        )?;
        let config_version = IntGauge::new(
            "weir_config_version",
            "Number of the config snapshot in use.",
        )?;
        registry.register(Box::new(config_version.clone()))?;
        let in_flight = IntGauge::new("weir_requests_in_flight", "Requests being answered now.")?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            ttft,
            tokens,
            retries,
            failovers,
            upstream_attempts,
            stream_errors,
            channel_up,
            channel_state,
            key_up,
            reloads,
            refused,
            cache,
            config_version,
            in_flight,
            series: RwLock::new(crate::FastMap::default()),
            series_hasher: foldhash::fast::RandomState::default(),
        })
    }

    /// The per-request series for these labels (names from the config, so the map
    /// stays as small as the config's gateways × models × channels).
    pub fn series(&self, gateway: &str, model: &str, channel: &str) -> Arc<Series> {
        let h = self.series_hasher.hash_one((gateway, model, channel));
        let same = |s: &Series| s.labels() == [gateway, model, channel];
        if let Some(s) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&h)
            .filter(|s| same(s))
        {
            return s.clone();
        }
        let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
        match map.get(&h) {
            Some(s) if same(s) => s.clone(),
            // A hash collision keeps the first entry; this one is built each time.
            Some(_) => Arc::new(Series::new([gateway, model, channel])),
            None => {
                let s = Arc::new(Series::new([gateway, model, channel]));
                map.insert(h, s.clone());
                s
            }
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        buf
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}
