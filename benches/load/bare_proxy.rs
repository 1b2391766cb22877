//! The reference hop for the load benchmark: a bare Pingora passthrough proxy, same
//! Pingora version as weir, no logic beyond picking the one upstream.
//!
//! `weir-bench-bare --upstream 127.0.0.1:PORT [--listen 127.0.0.1:0] [--threads 2]
//! [--ready-file PATH]`: the address it got is announced as `ready.rs` says.
//!
//! It binds its socket the way weir does (`weir::listeners`: bound once, adopted by
//! Pingora), so that port 0 works and the address it reports is the one it serves.

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use weir::listeners::{self, Adopting};

#[path = "ready.rs"]
mod ready;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _s: &mut Session,
        _c: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let listen = arg("--listen", "127.0.0.1:0");
    let upstream: SocketAddr = arg("--upstream", "")
        .parse()
        .unwrap_or_else(|e| panic!("--upstream: {e}"));
    let threads: usize = arg("--threads", "2").parse().unwrap_or(2);
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let socket = listeners::bind("--listen", &listen).unwrap_or_else(|e| panic!("{e}"));
    let addr = socket.addr;
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_listener(socket.config());
    server.add_service(Adopting::new(proxy, vec![socket]));
    // Listening already (connections wait in the backlog until the service starts).
    let ready_file = args
        .iter()
        .position(|a| a == "--ready-file")
        .and_then(|i| args.get(i + 1));
    ready::write(ready_file.map(String::as_str), addr)
        .unwrap_or_else(|e| panic!("--ready-file: {e}"));
    server.run_forever();
}
