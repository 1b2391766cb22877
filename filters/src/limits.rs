//! Rate limits (G4): `ingress:N/minute|hour|day` for the whole gateway and
//! `secret:N/minute|hour|day` for each caller, plus the window arithmetic.
//!
//! Hour and day windows are fixed and aligned to UTC (an hour starts at :00, a day
//! at 00:00 UTC), counted exactly and persisted. Minute windows are sliding: the
//! count of the current minute plus the previous minute's weighted by how much of it
//! still lies within the last 60 s (Pingora's `Rate` estimator).

use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole gateway.
    Ingress,
    /// Each caller (key, or JWT identity) on its own.
    Secret,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingress => "ingress",
            Scope::Secret => "secret",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Minute,
    Hour,
    Day,
}

impl Window {
    pub fn secs(self) -> u64 {
        match self {
            Window::Minute => 60,
            Window::Hour => 3600,
            Window::Day => 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateRule {
    pub scope: Scope,
    pub limit: u64,
    pub window: Window,
}

impl FromStr for RateRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not `ingress:N/minute|hour|day` or `secret:N/minute|hour|day`");
        let (scope, rest) = s.trim().split_once(':').ok_or_else(bad)?;
        let scope = match scope {
            "ingress" => Scope::Ingress,
            "secret" => Scope::Secret,
            _ => return Err(bad()),
        };
        let (n, window) = rest.split_once('/').ok_or_else(bad)?;
        let limit: u64 = n.trim().parse().map_err(|_| bad())?;
        if limit == 0 {
            return Err(format!(
                "`{s}`: a limit of 0 would refuse everything; set `active: false` instead"
            ));
        }
        let window = match window.trim() {
            "minute" => Window::Minute,
            "hour" => Window::Hour,
            "day" => Window::Day,
            _ => return Err(bad()),
        };
        Ok(RateRule {
            scope,
            limit,
            window,
        })
    }
}

/// Parses a gateway's `rate_limits`; `no-limit` (alone) means none.
pub fn parse_rules(lines: &[String]) -> Result<Vec<RateRule>, (usize, String)> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "no-limit" {
            continue;
        }
        out.push(l.parse().map_err(|e| (i, e))?);
    }
    Ok(out)
}

/// Start of the fixed window containing `now` (unix seconds).
pub fn window_start(now: u64, window: Window) -> u64 {
    now - now % window.secs()
}

/// Seconds until the fixed window containing `now` ends.
pub fn window_reset(now: u64, window: Window) -> u64 {
    window.secs() - now % window.secs()
}

/// The sliding-window count: the current window's plus the previous window's share
/// of the last interval.
pub fn sliding_count(prev: f64, curr: f64, elapsed_fraction: f64) -> f64 {
    prev * (1.0 - elapsed_fraction.clamp(0.0, 1.0)) + curr
}

/// How long until a sliding count drops to `max_allowed` or below (a request is
/// admitted while the count is at most `limit - 1`).
pub fn sliding_wait(
    max_allowed: f64,
    prev: f64,
    curr: f64,
    elapsed_fraction: f64,
    interval: Duration,
) -> Duration {
    let f = elapsed_fraction.clamp(0.0, 1.0);
    let secs = interval.as_secs_f64();
    if curr <= max_allowed {
        if prev <= 0.0 {
            return Duration::ZERO;
        }
        // prev * (1 - f') + curr <= max  ⇔  f' >= 1 - (max - curr) / prev
        let need = (1.0 - (max_allowed - curr) / prev).clamp(0.0, 1.0);
        return Duration::from_secs_f64(((need - f) * secs).max(0.0));
    }
    // Wait for this window to end; then `curr` becomes the previous window.
    let rest = (1.0 - f) * secs;
    let need_next = (1.0 - max_allowed / curr).clamp(0.0, 1.0);
    Duration::from_secs_f64(rest + need_next * secs)
}

/// Refuses two rules of the same scope and window (they would share one count).
pub fn check_distinct(rules: &[RateRule]) -> Result<(), String> {
    for (i, a) in rules.iter().enumerate() {
        if rules[..i]
            .iter()
            .any(|b| b.scope == a.scope && b.window == a.window)
        {
            return Err(format!(
                "two `{}` rules per {}; keep the one you mean",
                if a.scope == Scope::Ingress {
                    "ingress"
                } else {
                    "secret"
                },
                a.window.as_str()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        assert_eq!(
            "ingress:600/minute".parse::<RateRule>().unwrap(),
            RateRule {
                scope: Scope::Ingress,
                limit: 600,
                window: Window::Minute
            }
        );
        assert_eq!(
            "secret:5/day".parse::<RateRule>().unwrap().window,
            Window::Day
        );
        for bad in [
            "ingress:0/minute",
            "key:5/minute",
            "secret:5/week",
            "secret:x/day",
            "secret:5",
        ] {
            assert!(bad.parse::<RateRule>().is_err(), "{bad}");
        }
        assert!(parse_rules(&["no-limit".into()]).unwrap().is_empty());
        let dup = parse_rules(&["secret:5/minute".into(), "secret:100/minute".into()]).unwrap();
        assert!(check_distinct(&dup).is_err());
        assert_eq!(
            parse_rules(&["secret:1/hour".into(), "bad".into()])
                .unwrap_err()
                .0,
            1
        );
    }

    #[test]
    fn fixed_windows_align_to_utc() {
        // 2026-01-01T10:17:30Z
        let t = 1_767_262_650;
        assert_eq!(window_start(t, Window::Hour) % 3600, 0);
        assert_eq!(window_reset(t, Window::Hour), 3600 - 17 * 60 - 30);
        assert_eq!(window_start(t, Window::Day) % 86_400, 0);
        assert_eq!(window_reset(t, Window::Minute), 30);
    }

    #[test]
    fn sliding_counts_and_waits() {
        assert_eq!(sliding_count(10.0, 2.0, 0.25), 9.5);
        let i = Duration::from_secs(60);
        assert_eq!(sliding_wait(9.0, 0.0, 3.0, 0.5, i), Duration::ZERO);
        // Full now (limit 10: at most 9 counted): wait out the 30 s left, then until
        // the count of 20 has slid down to 9.
        let w = sliding_wait(9.0, 0.0, 20.0, 0.5, i);
        assert!((w.as_secs_f64() - 63.0).abs() < 1e-6, "{w:?}");
        // Under the limit in this minute, but the previous one still counts.
        let w = sliding_wait(9.0, 10.0, 5.0, 0.25, i);
        assert!((w.as_secs_f64() - 21.0).abs() < 1e-6, "{w:?}");
        // At that moment a request is admitted: ceil(count) <= limit - 1.
        let at = 0.25 + w.as_secs_f64() / 60.0;
        assert!(sliding_count(10.0, 5.0, at).ceil() <= 9.0 + 1e-9);
    }
}
