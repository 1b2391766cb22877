//! Allow and deny lists (G5), one rule a line: `ip:CIDR`, `secret:REGEX`,
//! `time:HH:MM-HH:MM` (UTC, or with an offset such as `+08:00`). When an allow list
//! is set only what matches it passes, and it takes precedence over the deny list.
//!
//! An allow list with rules of several types asks for each type: `["ip:10.0.0.0/8",
//! "ip:192.168.0.0/16", "time:08:00-20:00"]` lets in either network, during office
//! hours. A deny list refuses whatever matches any one rule.

use ipnet::IpNet;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone)]
pub enum AccessRule {
    Ip(IpNet),
    Secret(regex::Regex),
    /// Minutes of the day in UTC, start inclusive, end exclusive; wraps past midnight
    /// when `start > end`.
    Time {
        start: u32,
        end: u32,
    },
}

/// What a rule is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Visitor<'a> {
    pub ip: Option<IpAddr>,
    pub secret: Option<&'a str>,
    /// Minute of the day, UTC.
    pub minute_utc: u32,
}

fn hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not HH:MM"))?;
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| format!("`{s}` is not HH:MM"))?,
        m.parse().map_err(|_| format!("`{s}` is not HH:MM"))?,
    );
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(format!("`{s}` is not a time of day"));
    }
    Ok(h * 60 + m)
}

impl FromStr for AccessRule {
    type Err = String;
    fn from_str(line: &str) -> Result<Self, String> {
        let (kind, value) = line
            .split_once(':')
            .ok_or_else(|| format!("`{line}` is not `ip:…`, `secret:…` or `time:…`"))?;
        let value = value.trim();
        match kind.trim() {
            "ip" => {
                let net = match value.parse::<IpNet>() {
                    Ok(n) => n,
                    Err(_) => value
                        .parse::<IpAddr>()
                        .map(IpNet::from)
                        .map_err(|_| format!("`{value}` is not an IP address or CIDR range"))?,
                };
                Ok(AccessRule::Ip(net.trunc()))
            }
            "secret" => regex::Regex::new(value)
                .map(AccessRule::Secret)
                .map_err(|e| format!("`{value}` is not a regular expression: {e}")),
            "time" => {
                // `08:00-20:00`, optionally followed by an offset `+08:00` / `-05:30` / `Z`.
                let (range, offset) = split_offset(value)?;
                let (a, b) = range
                    .split_once('-')
                    .ok_or_else(|| format!("`{value}` is not `HH:MM-HH:MM`"))?;
                let shift = |m: u32| (m as i64 - offset).rem_euclid(1440) as u32;
                let (start, end) = (hhmm(a)?, hhmm(b)?);
                if start == end {
                    return Err(format!("`{value}` is an empty range"));
                }
                Ok(AccessRule::Time {
                    start: shift(start % 1440),
                    end: shift(end % 1440),
                })
            }
            other => Err(format!(
                "`{other}` is not a rule type; use ip, secret or time"
            )),
        }
    }
}

/// Splits `08:00-20:00+08:00` into the range and the offset in minutes.
fn split_offset(v: &str) -> Result<(&str, i64), String> {
    if let Some(r) = v.strip_suffix('Z').or_else(|| v.strip_suffix("UTC")) {
        return Ok((r.trim(), 0));
    }
    // After the range's own `-`, a further `+` or `-` starts the offset.
    let dash = v
        .find('-')
        .ok_or_else(|| format!("`{v}` is not `HH:MM-HH:MM`"))?;
    match v[dash + 1..].find(['+', '-']) {
        None => Ok((v, 0)),
        Some(i) => {
            let at = dash + 1 + i;
            let (range, off) = (&v[..at], &v[at..]);
            let sign = if off.starts_with('+') { 1 } else { -1 };
            Ok((range, sign * i64::from(hhmm(&off[1..])?)))
        }
    }
}

impl AccessRule {
    fn kind(&self) -> u8 {
        match self {
            AccessRule::Ip(_) => 0,
            AccessRule::Secret(_) => 1,
            AccessRule::Time { .. } => 2,
        }
    }

    pub fn matches(&self, v: &Visitor<'_>) -> bool {
        match self {
            AccessRule::Ip(net) => v.ip.is_some_and(|ip| net.contains(&canonical(ip))),
            AccessRule::Secret(re) => v.secret.is_some_and(|s| re.is_match(s)),
            AccessRule::Time { start, end } => {
                let m = v.minute_utc;
                if start < end {
                    (*start..*end).contains(&m)
                } else {
                    m >= *start || m < *end
                }
            }
        }
    }
}

/// `::ffff:10.0.0.1` (an IPv4 client on a dual-stack socket) is `10.0.0.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// `Ok` when the visitor may pass, `Err(why)` when a list stops it.
pub fn decide(
    allow: &[AccessRule],
    deny: &[AccessRule],
    v: &Visitor<'_>,
) -> Result<(), &'static str> {
    if !allow.is_empty() {
        // Every type of rule present must be satisfied by one of its rules.
        let passes = (0..3u8).all(|kind| {
            let mut of_kind = allow.iter().filter(|r| r.kind() == kind).peekable();
            of_kind.peek().is_none() || of_kind.any(|r| r.matches(v))
        });
        return if passes {
            Ok(())
        } else {
            Err("not on the gateway's allow list")
        };
    }
    if deny.iter().any(|r| r.matches(v)) {
        return Err("on the gateway's deny list");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(lines: &[&str]) -> Vec<AccessRule> {
        lines.iter().map(|l| l.parse().unwrap()).collect()
    }

    fn visitor<'a>(ip: &str, secret: &'a str, minute: u32) -> Visitor<'a> {
        Visitor {
            ip: Some(ip.parse().unwrap()),
            secret: Some(secret),
            minute_utc: minute,
        }
    }

    #[test]
    fn parses_rules() {
        assert!("ip:10.0.0.0/8".parse::<AccessRule>().is_ok());
        assert!("ip:192.168.1.7".parse::<AccessRule>().is_ok());
        assert!("ip:2001:db8::/32".parse::<AccessRule>().is_ok());
        assert!("secret:^test-".parse::<AccessRule>().is_ok());
        assert!("time:08:00-20:00".parse::<AccessRule>().is_ok());
        assert!("time:22:00-06:00+08:00".parse::<AccessRule>().is_ok());
        for bad in [
            "ip:10.0.0.0/33",
            "secret:(",
            "time:8-20",
            "time:25:00-26:00",
            "time:08:00-08:00",
            "host:x",
            "ip",
        ] {
            assert!(bad.parse::<AccessRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_wins_over_deny_and_excludes_the_rest() {
        let allow = rules(&["ip:10.0.0.0/8"]);
        let deny = rules(&["secret:^test-"]);
        assert!(decide(&allow, &deny, &visitor("10.1.2.3", "test-key", 0)).is_ok());
        assert!(decide(&allow, &deny, &visitor("11.1.2.3", "good-key", 0)).is_err());
        assert!(decide(&[], &deny, &visitor("11.1.2.3", "test-key", 0)).is_err());
        assert!(decide(&[], &deny, &visitor("11.1.2.3", "good-key", 0)).is_ok());
        assert!(decide(&allow, &[], &visitor("::ffff:10.0.0.1", "k", 0)).is_ok());
    }

    #[test]
    fn mixed_allow_lists_need_every_kind() {
        let allow = rules(&["ip:10.0.0.0/8", "ip:192.168.0.0/16", "time:08:00-20:00"]);
        assert!(decide(&allow, &[], &visitor("10.1.1.1", "k", 12 * 60)).is_ok());
        assert!(decide(&allow, &[], &visitor("192.168.1.1", "k", 12 * 60)).is_ok());
        // The right network at night, or the wrong network by day: out.
        assert!(decide(&allow, &[], &visitor("10.1.1.1", "k", 3 * 60)).is_err());
        assert!(decide(&allow, &[], &visitor("1.2.3.4", "k", 12 * 60)).is_err());
    }

    #[test]
    fn time_ranges_wrap_and_shift_by_offset() {
        let day = rules(&["time:08:00-20:00"]);
        assert!(day[0].matches(&visitor("1.1.1.1", "k", 8 * 60)));
        assert!(!day[0].matches(&visitor("1.1.1.1", "k", 20 * 60)));
        let night = rules(&["time:22:00-06:00"]);
        assert!(night[0].matches(&visitor("1.1.1.1", "k", 23 * 60)));
        assert!(night[0].matches(&visitor("1.1.1.1", "k", 60)));
        assert!(!night[0].matches(&visitor("1.1.1.1", "k", 12 * 60)));
        // 09:00-17:00 at +08:00 is 01:00-09:00 UTC.
        let cn = rules(&["time:09:00-17:00+08:00"]);
        assert!(cn[0].matches(&visitor("1.1.1.1", "k", 60)));
        assert!(!cn[0].matches(&visitor("1.1.1.1", "k", 10 * 60)));
    }
}
