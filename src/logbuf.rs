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
        Line { buf: self.buf.clone() }
    }
}
