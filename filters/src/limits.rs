//! Rate limits (G4): `ingress:N/minute|hour|day` for the whole gateway and
//! `secret:N/minute|hour|day` for each caller: at most N requests in the most
//! recent minute, hour or day, counted by `crate::rolling`.

use std::str::FromStr;

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
}
