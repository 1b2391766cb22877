//! weir binds its listening sockets itself, before Pingora starts, so that it gets
//! exactly the address it was given (port 0 included: the kernel picks a free port)
//! and can say which addresses it got: a log line and, with `--ready-file`, a file.
//!
//! Pingora would bind again on its own, and it retries an address in use for a
//! while ("127.0.0.1:N is in use, will try again"): a second process could then end
//! up serving on a port its owner thought was someone else's. Instead Pingora adopts
//! weir's sockets through the table of listening descriptors it keeps for graceful
//! upgrades, keyed by the address string its listener is configured with.

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::ListenerConfig;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::listening::Service as Listening;
use pingora_core::services::Service;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::Path;

/// A listening socket weir bound, waiting for Pingora to adopt it.
pub struct Bound {
    pub addr: SocketAddr,
    socket: OwnedFd,
}

/// Binds `addr` now, once: an address in use is an error at once, never a retry.
pub fn bind(field: &str, addr: &str) -> Result<Bound, String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("{field}: cannot listen on {addr}: {e}"))?;
    // Pingora hands the descriptor to tokio, which needs it non-blocking (a blocking
    // accept would stall a runtime thread and nothing would be served).
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{field}: cannot make the socket for {addr} non-blocking: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("{field}: cannot read the address bound for {addr}: {e}"))?;
    Ok(Bound {
        addr,
        socket: listener.into(),
    })
}

impl Bound {
    /// The listener config Pingora matches with the adopted socket: the bound
    /// address itself (with the port the kernel chose), not the configured one.
    pub fn config(&self) -> ListenerConfig {
        ListenerConfig::tcp(self.addr.to_string())
    }
}

/// A Pingora listening service that serves on sockets weir bound.
pub struct Adopting<A> {
    inner: Listening<A>,
    sockets: Vec<Bound>,
}

impl<A> Adopting<A> {
    /// `inner` must listen on each socket's `config()`.
    pub fn new(inner: Listening<A>, sockets: Vec<Bound>) -> Self {
        Adopting { inner, sockets }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for Adopting<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(table) = &fds {
            let mut table = table.lock();
            for bound in self.sockets.drain(..) {
                // The table owns the descriptor from here on; Pingora's listener
                // takes it over when it finds the address in the table.
                table.add(bound.addr.to_string(), bound.socket.into_raw_fd());
            }
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        Service::name(&self.inner)
    }

    fn threads(&self) -> Option<usize> {
        Service::threads(&self.inner)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Service::listen_addresses(&self.inner)
    }
}

/// The addresses weir listens on, as the ready file states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ready {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub pid: u32,
}

/// Writes the ready file whole or not at all (a temporary file renamed over it),
/// so a reader polling for it never sees half of it.
pub fn write_ready_file(path: &Path, ready: &Ready) -> Result<(), String> {
    let text = serde_json::to_vec(ready).map_err(|e| e.to_string())?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write the ready file {}: {e}", path.display())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gets_a_real_port_and_a_taken_one_fails_at_once() {
        let a = bind("server.listen", "127.0.0.1:0").unwrap();
        assert_ne!(a.addr.port(), 0);
        let taken = a.addr.to_string();
        let e = bind("server.listen", &taken).err().unwrap();
        assert!(
            e.starts_with("server.listen: cannot listen on 127.0.0.1:"),
            "{e}"
        );
    }

    #[test]
    fn ready_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("weir-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready.json");
        let ready = Ready {
            proxy: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            pid: 7,
        };
        write_ready_file(&path, &ready).unwrap();
        let back: Ready = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, ready);
        assert!(write_ready_file(&dir.join("no/such/dir/r.json"), &ready).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
