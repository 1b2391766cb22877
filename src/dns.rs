//! Upstream name resolution off the worker threads' blocking path (Pingora's
//! `HttpPeer::new` would call blocking `getaddrinfo` and panic on failure), cached
//! for `server.dns_ttl`, serving the last good answer when a refresh fails.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Addresses of a `(host, port)` and when they were resolved.
type Resolved = crate::FastMap<(String, u16), (Vec<SocketAddr>, Instant)>;

#[derive(Default)]
pub struct DnsCache {
    entries: RwLock<Resolved>,
    rotate: AtomicUsize,
}

impl DnsCache {
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        ttl: Duration,
    ) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        let cached = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some((addrs, at)) = &cached {
            if at.elapsed() < ttl && !addrs.is_empty() {
                return Ok(self.pick(addrs));
            }
        }
        match tokio::net::lookup_host((host, port)).await {
            Ok(found) => {
                let addrs: Vec<SocketAddr> = found.collect();
                if addrs.is_empty() {
                    return Err(format!("{host} resolved to no address"));
                }
                let pick = self.pick(&addrs);
                self.entries
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, (addrs, Instant::now()));
                Ok(pick)
            }
            Err(e) => match cached {
                Some((addrs, _)) if !addrs.is_empty() => Ok(self.pick(&addrs)),
                _ => Err(format!("cannot resolve {host}: {e}")),
            },
        }
    }

    /// Spreads connections over every address of a name.
    fn pick(&self, addrs: &[SocketAddr]) -> SocketAddr {
        addrs[self.rotate.fetch_add(1, Ordering::Relaxed) % addrs.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_addresses_skip_lookup() {
        let d = DnsCache::default();
        let a = d
            .resolve("127.0.0.1", 80, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(a, "127.0.0.1:80".parse().unwrap());
        let a = d.resolve("::1", 81, Duration::from_secs(1)).await.unwrap();
        assert_eq!(a.port(), 81);
    }

    #[tokio::test]
    async fn resolves_localhost_and_caches() {
        let d = DnsCache::default();
        let a = d
            .resolve("localhost", 9, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(a.ip().is_loopback());
        assert_eq!(d.entries.read().unwrap().len(), 1);
        assert!(d
            .resolve("no-such-host.invalid", 9, Duration::from_secs(60))
            .await
            .is_err());
    }
}
