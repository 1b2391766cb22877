//! Log lines go to stderr through a buffer flushed every 100 ms (or sooner when it
//! fills): one write per request would cost a system call on the request path.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const FLUSH_AT: usize = 64 * 1024;

#[derive(Clone, Default)]
pub struct BufferedStderr {
    buf: Arc<Mutex<Vec<u8>>>,
}

static GLOBAL: OnceLock<BufferedStderr> = OnceLock::new();

impl BufferedStderr {
    /// The process-wide buffer, with its flusher thread started.
    pub fn global() -> BufferedStderr {
        GLOBAL
            .get_or_init(|| {
                let b = BufferedStderr::default();
                let flusher = b.clone();
                let _ = std::thread::Builder::new()
                    .name("weir-log".into())
                    .spawn(move || loop {
                        std::thread::sleep(Duration::from_millis(100));
                        flusher.flush_now();
                    });
                b
            })
            .clone()
    }

    pub fn flush_now(&self) {
        let pending = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()));
        if !pending.is_empty() {
            let _ = std::io::stderr().write_all(&pending);
        }
    }
}

/// Appends one access line (text: like the other log lines; json: one object).
pub fn access(line: &crate::proxy::AccessLine<'_>, format: weir_filters::config::LogFormat) {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    let mut out: Vec<u8> = Vec::with_capacity(320);
    match format {
        weir_filters::config::LogFormat::Json => {
            #[derive(serde::Serialize)]
            struct Json<'a> {
                timestamp: String,
                level: &'static str,
                target: &'static str,
                message: &'static str,
                #[serde(flatten)]
                line: &'a crate::proxy::AccessLine<'a>,
            }
            let v = Json {
                timestamp: now.to_string(),
                level: "INFO",
                target: "weir::access",
                message: "request",
                line,
            };
            if serde_json::to_writer(&mut out, &v).is_err() {
                return;
            }
        }
        weir_filters::config::LogFormat::Text => {
            let l = line;
            // Milliseconds with three decimals, from integer microseconds: float
            // formatting with a precision was the line's most expensive part.
            let ms = |v: f64| {
                let us = (v * 1000.0).round().max(0.0) as u64;
                (us / 1000, us % 1000)
            };
            // Written piece by piece: `write!` with twenty arguments cost more than
            // the rest of the line.
            let mut num = itoa::Buffer::new();
            let field = |out: &mut Vec<u8>, name: &str, value: &str| {
                out.push(b' ');
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value.as_bytes());
            };
            let _ = write!(out, "{now}  INFO weir::access: request");
            for (name, value) in [("gateway", l.gateway), ("endpoint", l.endpoint)] {
                field(&mut out, name, "");
                out.push(b'"');
                out.extend_from_slice(value.as_bytes());
                out.push(b'"');
            }
            field(&mut out, "model", l.model);
            field(&mut out, "channel", l.channel);
            field(&mut out, "status", num.format(l.status));
            field(&mut out, "stream", if l.stream { "true" } else { "false" });
            let mut millis = |out: &mut Vec<u8>, name: &str, v: f64| {
                let (whole, frac) = ms(v);
                field(out, name, num.format(whole));
                out.push(b'.');
                let frac = num.format(frac + 1000);
                out.extend_from_slice(&frac.as_bytes()[1..]);
            };
            millis(&mut out, "latency_ms", l.latency_ms);
            if let Some(t) = l.ttft_ms {
                millis(&mut out, "ttft_ms", t);
            }
            for (name, v) in [
                ("attempts", u64::from(l.attempts)),
                ("retries", u64::from(l.retries)),
                ("failovers", u64::from(l.failovers)),
                ("prompt_tokens", l.prompt_tokens),
                ("completion_tokens", l.completion_tokens),
            ] {
                field(&mut out, name, num.format(v));
            }
            field(
                &mut out,
                "estimated",
                if l.estimated { "true" } else { "false" },
            );
            field(
                &mut out,
                "client_gone",
                if l.client_gone { "true" } else { "false" },
            );
            field(&mut out, "cache", l.cache);
            if l.error.is_empty() {
                field(&mut out, "error", "\"\"");
            } else {
                let _ = write!(out, " error={:?}", l.error);
            }
        }
    }
    out.push(b'\n');
    let b = BufferedStderr::global();
    let _ = Line { buf: b.buf.clone() }.write_all(&out);
}

/// Writes whatever is buffered (at exit).
pub fn flush() {
    if let Some(b) = GLOBAL.get() {
        b.flush_now();
    }
}

pub struct Line {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(data);
        if buf.len() >= FLUSH_AT {
            let pending = std::mem::take(&mut *buf);
            drop(buf);
            std::io::stderr().write_all(&pending)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line {
            buf: self.buf.clone(),
        }
    }
}
