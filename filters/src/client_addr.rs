//! Who the client is behind a load balancer: the peer address, unless the peer is
//! one of `server.trusted_proxies`; then the nearest address in `X-Forwarded-For`
//! (or RFC 7239 `Forwarded: for=`) that is not itself a trusted proxy. Headers from
//! anyone else are ignored, so a client cannot pick its own address for `ip:`
//! rules or the call log.

use ipnet::IpNet;
use std::net::IpAddr;

/// The client's address as far as it can be believed.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &http::HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let chain = forwarded_chain(headers);
    // Right to left: each hop appended the address it saw; the first one no
    // trusted proxy wrote is the client.
    Some(
        chain
            .iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .or(chain.first())
            .copied()
            .unwrap_or(peer),
    )
}

/// The addresses of `X-Forwarded-For` (every header line, in order), else of
/// `Forwarded`'s `for=` parameters; entries that are not addresses (`unknown`,
/// obfuscated names) end the chain there, since nothing before them can be checked.
fn forwarded_chain(headers: &http::HeaderMap) -> Vec<IpAddr> {
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let entries: Vec<String> = if !xff.is_empty() {
        xff.into_iter().map(str::to_string).collect()
    } else {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("for")
                        .then(|| v.trim().trim_matches('"').to_string())
                })
            })
            .collect()
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries.iter().rev() {
        match parse_node(e) {
            Some(ip) => out.push(ip),
            None => break,
        }
    }
    out.reverse();
    out
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:443` or `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn only_trusted_peers_are_believed_and_only_as_far_as_the_chain_is_trusted() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.3")]);
        // From the load balancer: the client it saw, past the inner proxy.
        assert_eq!(client_ip(ip("10.0.0.2"), &xff, &trusted), ip("203.0.113.7"));
        // From anyone else the header is the client's own claim: ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &xff, &trusted),
            ip("198.51.100.1")
        );
        // A client prepending a fake address does not get it believed.
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &spoofed, &trusted),
            ip("203.0.113.7")
        );
        // Several header lines are one list; no header: the peer.
        let lines = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &lines, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &headers(&[]), &trusted),
            ip("10.0.0.2")
        );
        // Nothing trusted (the default): never believed.
        assert_eq!(client_ip(ip("10.0.0.2"), &xff, &[]), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_and_odd_nodes() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let fwd = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http;by=10.0.0.1, for=\"[2001:db8::7]:4711\"",
        )]);
        assert_eq!(client_ip(ip("::1"), &fwd, &trusted), ip("2001:db8::7"));
        let ported = headers(&[("x-forwarded-for", "192.0.2.1:5000")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &ported, &trusted),
            ip("192.0.2.1")
        );
        // `unknown` stops the walk: what lies beyond it cannot be checked.
        let unknown = headers(&[("x-forwarded-for", "192.0.2.1, unknown, 10.0.0.5")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &unknown, &trusted),
            ip("10.0.0.5")
        );
    }
}
