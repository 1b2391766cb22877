//! The scale-out cell's backends (S1): a redis-server on a unix socket and a
//! PostgreSQL cluster in the run's directory, socket only, as the tests start them.

use super::Proc;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Option<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        if Instant::now() > deadline {
            eprintln!("{what} did not start; skipping the scale-out cell");
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(())
}

/// redis-server with no TCP port; its process and `storage.redis` URL.
pub fn redis(dir: &Path) -> Option<(Proc, String)> {
    let sock = dir.join("redis.sock");
    let child = Command::new("redis-server")
        .args(["--port", "0", "--unixsocket"])
        .arg(&sock)
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let p = Proc(child);
    wait_for("redis-server", || sock.exists())?;
    Some((p, format!("unix://{}", sock.display())))
}

fn pg_bin(name: &str) -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.exists())
                .max()
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// PostgreSQL refuses to run as root: then it runs as `postgres`.
fn as_postgres(program: PathBuf) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The cluster, stopped by `pg_ctl` when dropped (killing `runuser` would leave
/// the postmaster behind).
pub struct Pg {
    _postmaster: Proc,
    data: PathBuf,
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = as_postgres(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "fast", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A fresh cluster under `dir/pg`; its postmaster and `storage.postgres` URL.
/// Durable as a production server would be (fsync on).
pub fn postgres(dir: &Path) -> Option<(Pg, String)> {
    let home = dir.join("pg");
    std::fs::create_dir_all(&home).ok()?;
    let _ = Command::new("chown")
        .arg("postgres:postgres")
        .arg(&home)
        .status();
    let data = home.join("data");
    let ok = as_postgres(pg_bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "weir", "--auth=trust", "-E", "UTF8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("initdb failed; skipping the scale-out cell");
        return None;
    }
    let child = as_postgres(pg_bin("postgres"))
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&home)
        .args(["-c", "listen_addresses="])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pg = Pg {
        _postmaster: Proc(child),
        data,
    };
    wait_for("postgres", || {
        Command::new(pg_bin("pg_isready"))
            .arg("-h")
            .arg(&home)
            .args(["-U", "weir", "-q"])
            .status()
            .is_ok_and(|s| s.success())
    })?;
    Some((
        pg,
        format!("postgres://weir@localhost/postgres?host={}", home.display()),
    ))
}
