//! What a request's attempts came to: one entry per failed attempt, rendered twice
//! (a short form for the client, a fuller one with error codes and key hints for
//! the log), and the final error when nothing answered well.

use crate::config::key_hint;
use crate::GatewayError;
use std::fmt::Write as _;
use std::time::Duration;

/// Why an attempt got no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    Connect,
    Timeout,
    /// The connection broke before a response header arrived.
    Io,
}

impl FailKind {
    /// The `outcome` label of `weir_upstream_attempts_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            FailKind::Connect => "connect_error",
            FailKind::Timeout => "timeout",
            FailKind::Io => "server_error",
        }
    }

    /// For the client: no addresses or internals.
    pub fn short(self) -> &'static str {
        match self {
            FailKind::Connect => "connect failed",
            FailKind::Timeout => "timed out",
            FailKind::Io => "connection broke before the answer",
        }
    }

    /// For the log and the health record, with the detail.
    pub fn describe(self, detail: &str) -> String {
        let what = match self {
            FailKind::Connect => "connect failed",
            FailKind::Timeout => "timed out",
            FailKind::Io => "connection broke",
        };
        format!("{what} ({detail})")
    }
}

enum What {
    Http { status: u16, code: Option<String> },
    Failed { kind: FailKind, detail: String },
    Suspended(Duration),
}

struct Entry<'a> {
    channel: &'a str,
    /// The key used, only ever shown as a hint.
    key: Option<&'a str>,
    what: What,
}

/// The attempts of one request that did not answer well, and what they add up to.
pub struct Summary<'a> {
    entries: Vec<Entry<'a>>,
    /// Set while every attempt so far found a channel that cannot serve the endpoint.
    refused: Option<GatewayError>,
    any_attempt: bool,
    all_rate_limited: bool,
    all_timeouts: bool,
    shortest_wait: Option<Duration>,
}

impl<'a> Summary<'a> {
    pub fn new() -> Self {
        Summary {
            entries: Vec::new(),
            refused: None,
            any_attempt: false,
            all_rate_limited: true,
            all_timeouts: true,
            shortest_wait: None,
        }
    }

    /// An answer (a clean one too: it ends the run of refusals).
    pub fn answered(&mut self, channel: &'a str, key: Option<&'a str>, status: u16, good: bool) {
        self.any_attempt = true;
        self.refused = None;
        if good {
            return;
        }
        self.all_timeouts = false;
        self.all_rate_limited &= status == 429;
        self.entries.push(Entry {
            channel,
            key,
            what: What::Http { status, code: None },
        });
    }

    /// The upstream error code of the last failed answer, once its body was read.
    pub fn code(&mut self, code: String) {
        if let Some(Entry {
            what: What::Http { code: c, .. },
            ..
        }) = self.entries.last_mut()
        {
            *c = Some(code);
        }
    }

    pub fn failed(&mut self, channel: &'a str, key: Option<&'a str>, kind: FailKind, detail: &str) {
        self.any_attempt = true;
        self.refused = None;
        self.all_rate_limited = false;
        self.all_timeouts &= kind == FailKind::Timeout;
        self.entries.push(Entry {
            channel,
            key,
            what: What::Failed {
                kind,
                detail: detail.to_string(),
            },
        });
    }

    /// The channel cannot serve this request; if none can, the client gets `e`.
    pub fn refused(&mut self, e: GatewayError) {
        self.any_attempt = true;
        self.refused.get_or_insert(e);
    }

    /// A channel passed over because health closed it.
    pub fn suspended(&mut self, channel: &'a str, wait: Duration) {
        self.wait(wait);
        self.entries.push(Entry {
            channel,
            key: None,
            what: What::Suspended(wait),
        });
    }

    /// An upstream's `Retry-After`: the client is told the shortest.
    pub fn wait(&mut self, wait: Duration) {
        self.shortest_wait = Some(self.shortest_wait.map_or(wait, |s| s.min(wait)));
    }

    /// The client's short form (`false`) or the log's full form (`true`).
    fn render(&self, full: bool) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let sep = if out.is_empty() { "" } else { "; " };
            let _ = write!(out, "{sep}{}: ", e.channel);
            match &e.what {
                What::Http { status, code } => {
                    let _ = write!(out, "HTTP {status}");
                    if let (true, Some(code)) = (full, code) {
                        let _ = write!(out, " ({code})");
                    }
                }
                What::Failed { kind, detail } if full => out.push_str(&kind.describe(detail)),
                What::Failed { kind, .. } => out.push_str(kind.short()),
                What::Suspended(wait) => {
                    // Rounded up, as `Retry-After` is: "0s" would invite an instant retry.
                    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                    let _ = write!(out, "suspended for {secs}s");
                }
            }
            if let (true, Some(k)) = (full, e.key) {
                let _ = write!(out, " key {}", key_hint(k));
            }
        }
        out
    }

    /// The failed attempts so far in the log's full form, `None` before any failed.
    pub fn log(&self) -> Option<String> {
        let tried = self.render(true);
        (!tried.is_empty()).then_some(tried)
    }

    /// The error the client gets when nothing answered well, and the log's account.
    pub fn give_up(self, model: &str) -> (GatewayError, String) {
        let log = format!("no usable answer for `{model}`: {}", self.render(true));
        if let Some(e) = self.refused {
            return (e, log);
        }
        let tried = self.render(false);
        let detail = if tried.is_empty() {
            "no channel could be tried".to_string()
        } else {
            format!("tried {tried}")
        };
        let retry_after_secs = self
            .shortest_wait
            .map(|d| d.as_secs_f64().ceil() as u64)
            .unwrap_or(1);
        let model = model.to_string();
        let e = if !self.any_attempt {
            GatewayError::NoChannelAvailable {
                model,
                detail,
                retry_after_secs,
            }
        } else if self.all_rate_limited {
            GatewayError::UpstreamRateLimited {
                model,
                detail,
                retry_after_secs,
            }
        } else if self.all_timeouts {
            GatewayError::UpstreamTimeout { model, detail }
        } else {
            GatewayError::UpstreamFailed { model, detail }
        };
        (e, log)
    }
}

impl Default for Summary<'_> {
    fn default() -> Self {
        Summary::new()
    }
}
