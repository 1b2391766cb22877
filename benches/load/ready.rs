//! How the load benchmark's tools say where they listen: each binds port 0 (the
//! kernel picks a free port, nothing is bound and released to guess one), prints
//! `listening ADDR` and, with `--ready-file PATH`, writes `ADDR` to PATH by rename,
//! so the harness polling for it never reads half a file.
//!
//! Shared by the tools (`write`) and the harness (`wait`) through `#[path]`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Announces `addr` on stdout and in the ready file, if one was asked for.
pub fn write(path: Option<&str>, addr: SocketAddr) -> std::io::Result<()> {
    println!("listening {addr}");
    let Some(path) = path else {
        return Ok(());
    };
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, path)
}

/// Waits (at most `limit`) for `child` to write its ready file; `None` when it
/// exited first or the time ran out, so the caller can show the child's log.
pub fn wait(path: &Path, child: &mut Child, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Some(text);
        }
        if !matches!(child.try_wait(), Ok(None)) || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
