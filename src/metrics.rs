//! Prometheus metrics (A3). Labels are bounded: gateway, channel and configured model
//! names come from the config, never from client input; no per-key labels.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock, RwLock};
use weir_filters::config::Runtime;
use weir_filters::health::{HealthId, HealthRegistry, HealthState};

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
    pub masked: IntCounterVec,
    pub safety: IntCounterVec,
    pub channel_up: IntGaugeVec,
    pub channel_state: IntGaugeVec,
    pub key_up: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub probes: IntCounterVec,
    pub mails: IntCounterVec,
    pub refused: IntCounterVec,
    pub cache: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub config_version: IntGauge,
    pub in_flight: IntGauge,
    /// Usage rows waiting for the store (it is away), and rows given up since start.
    pub usage_backlog: IntGauge,
    pub usage_dropped: IntGauge,
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

/// One metric family: its name, help text and label names.
struct Def {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const REQUESTS: Def = Def {
    name: "weir_requests_total",
    help: "Client requests answered, by status class (2xx, 4xx, 5xx).",
    labels: &["gateway", "model", "channel", "status"],
};

const DURATION: Def = Def {
    name: "weir_request_duration_seconds",
    help: "Time from request to the last byte of the answer.",
    labels: &["gateway", "model", "channel"],
};

const TTFT: Def = Def {
    name: "weir_time_to_first_token_seconds",
    help: "Time from request to the first answer byte sent to the client.",
    labels: &["gateway", "model", "channel"],
};

const TOKENS: Def = Def {
    name: "weir_tokens_total",
    help: "Tokens by direction (in = prompt, out = completion); estimated ones included.",
    labels: &["gateway", "model", "channel", "direction"],
};

const RETRIES: Def = Def {
    name: "weir_retries_total",
    help: "Extra attempts on the same channel after a retryable failure.",
    labels: &["gateway", "channel"],
};

const FAILOVERS: Def = Def {
    name: "weir_failovers_total",
    help: "Moves to another channel after a failure.",
    labels: &["gateway", "model"],
};

const UPSTREAM_ATTEMPTS: Def = Def {
    name: "weir_upstream_attempts_total",
    help: "Upstream attempts by outcome (ok, client_error, rate_limited, key_rejected, server_error, connect_error, timeout).",
    labels: &["channel", "outcome"],
};

const STREAM_ERRORS: Def = Def {
    name: "weir_stream_errors_total",
    help: "Answers that broke after their first byte reached the client.",
    labels: &["gateway", "channel"],
};

const MASKED: Def = Def {
    name: "weir_masked_total",
    help: "Findings data masking replaced in requests, by detector (never the values).",
    labels: &["gateway", "detector"],
};

const SAFETY: Def = Def {
    name: "weir_safety_total",
    help: "Content safety: requests refused (stage request) and answers stopped (stage answer) by rule (deny[i], patterns[i], moderation); moderation endpoint failures (stage moderation, rule unavailable_open or unavailable_closed).",
    labels: &["gateway", "stage", "rule"],
};

const CHANNEL_UP: Def = Def {
    name: "weir_channel_up",
    help: "1 when a channel accepts requests (healthy or probing), 0 when suspended.",
    labels: &["channel"],
};

const CHANNEL_STATE: Def = Def {
    name: "weir_channel_state",
    help: "Health state of a channel, one series per state set to 1.",
    labels: &["channel", "state"],
};

const KEY_UP: Def = Def {
    name: "weir_channel_key_up",
    help: "1 when a channel's key (by position) is not suspended.",
    labels: &["channel", "key"],
};

const PROBES: Def = Def {
    name: "weir_channel_probes_total",
    help: "Background probes of suspended channels by result (ok readmits the channel, failed keeps it out).",
    labels: &["channel", "result"],
};

const MAILS: Def = Def {
    name: "weir_mail_attempts_total",
    help: "Attempts to mail a new key by result (sent, retry: failed and tried again later, failed: given up).",
    labels: &["result"],
};

const RELOADS: Def = Def {
    name: "weir_config_reloads_total",
    help: "Config reloads by result.",
    labels: &["result"],
};

const BACKEND_UP: Def = Def {
    name: "weir_backend_up",
    help: "1 when a shared backend answers (redis: limits, money and cache are shared), 0 while this instance counts alone.",
    labels: &["backend"],
};

const CACHE: Def = Def {
    name: "weir_cache_total",
    help: "Response cache lookups and fills by result (hit, miss, stored).",
    labels: &["gateway", "model", "result"],
};

const REFUSED: Def = Def {
    name: "weir_refused_total",
    help: "Requests refused before any upstream call, by gateway and error code (invalid_api_key, rate_limit_exceeded, budget_exceeded, access_denied, ...).",
    labels: &["gateway", "code"],
};

/// Creates metric families from their `Def` and registers them.
struct Registrar(Registry);

impl Registrar {
    fn counter(&self, d: &Def) -> Result<IntCounterVec, prometheus::Error> {
        let c = IntCounterVec::new(Opts::new(d.name, d.help), d.labels)?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn gauge(&self, d: &Def) -> Result<IntGaugeVec, prometheus::Error> {
        let g = IntGaugeVec::new(Opts::new(d.name, d.help), d.labels)?;
        self.0.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn histogram(&self, d: &Def) -> Result<HistogramVec, prometheus::Error> {
        let opts = HistogramOpts::new(d.name, d.help).buckets(LATENCY_BUCKETS.to_vec());
        let h = HistogramVec::new(opts, d.labels)?;
        self.0.register(Box::new(h.clone()))?;
        Ok(h)
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registrar(Registry::new());
        let config_version = IntGauge::new(
            "weir_config_version",
            "Number of the config snapshot in use.",
        )?;
        r.0.register(Box::new(config_version.clone()))?;
        let in_flight = IntGauge::new("weir_requests_in_flight", "Requests being answered now.")?;
        r.0.register(Box::new(in_flight.clone()))?;
        let usage_backlog = IntGauge::new(
            "weir_usage_backlog",
            "Usage rows kept in memory because the store does not answer; written when it does.",
        )?;
        r.0.register(Box::new(usage_backlog.clone()))?;
        let usage_dropped = IntGauge::new(
            "weir_usage_dropped",
            "Usage rows given up since start because the backlog was full.",
        )?;
        r.0.register(Box::new(usage_dropped.clone()))?;
        Ok(Metrics {
            requests: r.counter(&REQUESTS)?,
            duration: r.histogram(&DURATION)?,
            ttft: r.histogram(&TTFT)?,
            tokens: r.counter(&TOKENS)?,
            retries: r.counter(&RETRIES)?,
            failovers: r.counter(&FAILOVERS)?,
            upstream_attempts: r.counter(&UPSTREAM_ATTEMPTS)?,
            stream_errors: r.counter(&STREAM_ERRORS)?,
            masked: r.counter(&MASKED)?,
            safety: r.counter(&SAFETY)?,
            channel_up: r.gauge(&CHANNEL_UP)?,
            channel_state: r.gauge(&CHANNEL_STATE)?,
            key_up: r.gauge(&KEY_UP)?,
            reloads: r.counter(&RELOADS)?,
            probes: r.counter(&PROBES)?,
            mails: r.counter(&MAILS)?,
            cache: r.counter(&CACHE)?,
            backend_up: r.gauge(&BACKEND_UP)?,
            refused: r.counter(&REFUSED)?,
            config_version,
            in_flight,
            usage_backlog,
            usage_dropped,
            registry: r.0,
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
    /// Sets the health gauges from the registry, dropping series of removed channels.
    pub fn refresh_health(&self, rt: &Runtime, health: &HealthRegistry) {
        self.channel_up.reset();
        self.channel_state.reset();
        self.key_up.reset();
        for c in &rt.channels {
            let state = health.report(&HealthId::channel(&c.name)).state;
            self.channel_up
                .with_label_values(&[c.name.as_str()])
                .set(i64::from(state != HealthState::Suspended));
            for s in [
                HealthState::Healthy,
                HealthState::Suspended,
                HealthState::Probing,
            ] {
                self.channel_state
                    .with_label_values(&[c.name.as_str(), s.as_str()])
                    .set(i64::from(s == state));
            }
            for (i, k) in c.keys.iter().enumerate() {
                let st = health.report(&HealthId::key(&c.name, k)).state;
                self.key_up
                    .with_label_values(&[c.name.as_str(), i.to_string().as_str()])
                    .set(i64::from(st != HealthState::Suspended));
            }
        }
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
