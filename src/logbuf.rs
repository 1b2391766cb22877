//! Log lines go to stderr through a buffer flushed every 100 ms (or sooner when it
//! fills): one write per request would cost a system call on the request path.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use weir_filters::config::LogFormat;

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

/// One access log line; field names as in the `tracing` lines for errors.
#[derive(serde::Serialize)]
pub struct AccessLine<'a> {
    pub gateway: &'a str,
    pub endpoint: &'a str,
    pub model: &'a str,
    pub channel: &'a str,
    pub status: u16,
    pub stream: bool,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub attempts: u32,
    pub retries: u32,
    pub failovers: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub estimated: bool,
    pub client_gone: bool,
    pub cache: &'a str,
    pub error: &'a str,
}

/// Appends one access line (text: like the other log lines; json: one object).
pub fn access(line: &AccessLine<'_>, format: LogFormat) {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    let mut out: Vec<u8> = Vec::with_capacity(320);
    match format {
        LogFormat::Json => {
            if line.write_json(&mut out, &now.to_string()).is_err() {
                return;
            }
        }
        LogFormat::Text => {
            let _ = write!(out, "{now}  INFO weir::access: request");
            line.write_text(&mut out);
        }
    }
    out.push(b'\n');
    let b = BufferedStderr::global();
    let _ = Line { buf: b.buf.clone() }.write_all(&out);
}

impl AccessLine<'_> {
    fn write_json(&self, out: &mut Vec<u8>, timestamp: &str) -> serde_json::Result<()> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            timestamp: &'a str,
            level: &'static str,
            target: &'static str,
            message: &'static str,
            #[serde(flatten)]
            line: &'a AccessLine<'a>,
        }
        let v = Json {
            timestamp,
            level: "INFO",
            target: "weir::access",
            message: "request",
            line: self,
        };
        serde_json::to_writer(out, &v)
    }

    /// The fields as ` name=value`, written piece by piece: `write!` with twenty
    /// arguments cost more than the rest of the line.
    fn write_text(&self, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        let flag = |b: bool| if b { "true" } else { "false" };
        for (name, value) in [("gateway", self.gateway), ("endpoint", self.endpoint)] {
            field(out, name, "");
            out.push(b'"');
            out.extend_from_slice(value.as_bytes());
            out.push(b'"');
        }
        field(out, "model", self.model);
        field(out, "channel", self.channel);
        field(out, "status", num.format(self.status));
        field(out, "stream", flag(self.stream));
        millis(out, "latency_ms", self.latency_ms);
        if let Some(t) = self.ttft_ms {
            millis(out, "ttft_ms", t);
        }
        for (name, v) in [
            ("attempts", u64::from(self.attempts)),
            ("retries", u64::from(self.retries)),
            ("failovers", u64::from(self.failovers)),
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
        ] {
            field(out, name, num.format(v));
        }
        field(out, "estimated", flag(self.estimated));
        field(out, "client_gone", flag(self.client_gone));
        field(out, "cache", self.cache);
        if self.error.is_empty() {
            field(out, "error", "\"\"");
        } else {
            let _ = write!(out, " error={:?}", self.error);
        }
    }
}

fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
}

/// Milliseconds with three decimals, from integer microseconds: float formatting
/// with a precision was the line's most expensive part.
fn millis(out: &mut Vec<u8>, name: &str, v: f64) {
    let us = (v * 1000.0).round().max(0.0) as u64;
    let mut num = itoa::Buffer::new();
    field(out, name, num.format(us / 1000));
    out.push(b'.');
    let frac = num.format(us % 1000 + 1000);
    out.extend_from_slice(&frac.as_bytes()[1..]);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(error: &str) -> AccessLine<'_> {
        AccessLine {
            gateway: "team a",
            endpoint: "chat",
            model: "m",
            channel: "c",
            status: 200,
            stream: true,
            latency_ms: 12.0456,
            ttft_ms: Some(3.0),
            attempts: 2,
            retries: 1,
            failovers: 0,
            prompt_tokens: 7,
            completion_tokens: 9,
            estimated: false,
            client_gone: false,
            cache: "-",
            error,
        }
    }

    #[test]
    fn text_fields_read_like_tracing() {
        let mut out = Vec::new();
        line("").write_text(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            " gateway=\"team a\" endpoint=\"chat\" model=m channel=c status=200 stream=true \
             latency_ms=12.046 ttft_ms=3.000 attempts=2 retries=1 failovers=0 prompt_tokens=7 \
             completion_tokens=9 estimated=false client_gone=false cache=- error=\"\""
        );
        let mut out = Vec::new();
        line("upstream said \"no\"").write_text(&mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with(" error=\"upstream said \\\"no\\\"\""));
    }

    #[test]
    fn json_is_one_object_with_the_fields_flat() {
        let mut out = Vec::new();
        line("").write_json(&mut out, "t").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["target"], "weir::access");
        assert_eq!(v["gateway"], "team a");
        assert_eq!(v["ttft_ms"], 3.0);
    }
}
