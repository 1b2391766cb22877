//! A channel's forward proxy (`proxy: http://…`, P2), as Pingora's custom L4
//! connector: the connection to the "upstream" is a connection to the proxy, and
//! for an `https` upstream a CONNECT tunnel through it, on which Pingora then runs
//! TLS with the upstream itself (the proxy never sees the request). For an `http`
//! upstream the request goes to the proxy in absolute form (`exchange`). The
//! upstream's name is resolved by the proxy, never here.

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, OrErr, Result};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_filters::config::{ForwardProxy, Upstream};
use weir_filters::upstream_request::{connect_reply, connect_request, MAX_CONNECT_REPLY};

#[derive(Debug)]
struct ViaProxy {
    proxy: ForwardProxy,
    /// `host:port` to tunnel to; `None`: plain HTTP, the proxy is the peer.
    tunnel_to: Option<String>,
    timeout: Duration,
}

/// Makes `peer` reach `upstream` through `proxy`; its pooled connections are kept
/// apart from direct ones (and from other proxies') by the group key.
pub fn route_through(
    peer: &mut HttpPeer,
    proxy: &ForwardProxy,
    upstream: &Upstream,
    timeout: Duration,
) {
    let tunnel_to = upstream
        .tls
        .then(|| format!("{}:{}", bracketed(&upstream.host), upstream.port));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // The credentials too: a tunnel opened with one channel's must not serve
    // another channel whose own the proxy would refuse.
    let who = (&proxy.host, proxy.port, &proxy.authorization);
    (who, &upstream.host, upstream.port, upstream.tls).hash(&mut h);
    peer.group_key = h.finish();
    peer.options.custom_l4 = Some(Arc::new(ViaProxy {
        proxy: proxy.clone(),
        tunnel_to,
        timeout,
    }));
}

/// An IPv6 literal as a URL or CONNECT target writes it.
fn bracketed(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[async_trait]
impl L4Connect for ViaProxy {
    async fn connect(&self, _upstream: &SocketAddr) -> Result<Stream> {
        let dial = TcpStream::connect((self.proxy.host.as_str(), self.proxy.port));
        let mut tcp = match tokio::time::timeout(self.timeout, dial).await {
            Ok(r) => r.or_err_with(ErrorType::ConnectProxyFailure, || {
                format!("cannot reach the proxy {}", self.proxy.shown)
            })?,
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!(
                        "the proxy {} did not accept within {:?}",
                        self.proxy.shown, self.timeout
                    ),
                )
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Some(target) = &self.tunnel_to {
            let open = tunnel(&mut tcp, target, self.proxy.authorization.as_deref());
            match tokio::time::timeout(self.timeout, open).await {
                Ok(r) => r.map_err(|why| {
                    Error::explain(
                        ErrorType::ConnectProxyFailure,
                        format!("{} ({})", why, self.proxy.shown),
                    )
                })?,
                Err(_) => {
                    return Error::e_explain(
                        ErrorType::ConnectTimedout,
                        format!(
                            "the proxy {} did not open the tunnel in time",
                            self.proxy.shown
                        ),
                    )
                }
            }
        }
        Ok(tcp.into())
    }
}

/// Asks for the tunnel and reads the proxy's answer, byte by byte so that nothing
/// of the upstream's (its TLS greeting follows at once) is taken by mistake.
async fn tunnel(tcp: &mut TcpStream, target: &str, auth: Option<&str>) -> Result<(), String> {
    let ask = connect_request(target, auth).map_err(|e| e.to_string())?;
    tcp.write_all(&ask).await.map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(128);
    loop {
        let mut byte = [0u8; 1];
        let n = tcp.read(&mut byte).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the proxy closed the connection instead of opening the tunnel".into());
        }
        head.push(byte[0]);
        if head.ends_with(b"\n") {
            if let Some(_len) = connect_reply(&head)? {
                return Ok(());
            }
        }
        if head.len() > MAX_CONNECT_REPLY {
            return Err("the proxy's answer to CONNECT is too long".into());
        }
    }
}
