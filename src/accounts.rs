//! Who may call, and what they have used: the key/group/model snapshot the proxy
//! reads without locks (rebuilt by the store after every write), the money and
//! token ledger, and the rate-limit counters. All of it lives outside the config
//! snapshot so that a YAML reload never resets a counter.

use arc_swap::ArcSwap;
use pingora_limits::rate::Rate;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_filters::accounts::Role;
use weir_filters::config::{Gateway, ModelPrice, Runtime};
use weir_filters::limits::{self, RateRule, Scope, Window};
use weir_filters::GatewayError;

/// A stored API key, without its secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub group: String,
    pub email: Option<String>,
    /// The first characters of the key, to tell keys apart in lists.
    pub prefix: String,
    pub monthly_budget: Option<f64>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub active: bool,
    pub created_at: i64,
    /// Models granted to the key itself.
    pub models: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelRecord {
    pub name: String,
    pub price_in: f64,
    pub price_out: f64,
    pub multimodal: bool,
    pub config: Option<serde_json::Value>,
    pub provider: Option<String>,
}

/// Keys, groups and models as stored, indexed for the request path.
#[derive(Debug, Default)]
pub struct AccountsSnapshot {
    pub keys_by_hash: crate::FastMap<String, Arc<KeyRecord>>,
    pub keys_by_id: crate::FastMap<i64, Arc<KeyRecord>>,
    /// Group name → models granted to it.
    pub groups: crate::FastMap<String, Vec<String>>,
    pub group_descriptions: HashMap<String, Option<String>>,
    pub models: crate::FastMap<String, ModelRecord>,
    /// Each user key's grants (its own and its group's), built once per snapshot
    /// instead of once per request.
    pub grants: crate::FastMap<i64, Arc<HashSet<String>>>,
    /// Each group's grants as a set (JWT callers are granted their group's).
    pub group_grants: crate::FastMap<String, Arc<HashSet<String>>>,
}

/// Grants of `*` mean every model.
pub const ALL_MODELS: &str = "*";

impl AccountsSnapshot {
    /// Models a key may use: its own grants and its group's. `None`: all of them.
    pub fn granted(&self, key: &KeyRecord) -> Option<Arc<HashSet<String>>> {
        if key.role == Role::Admin {
            return None;
        }
        let all = match self.grants.get(&key.id) {
            Some(g) => g.clone(),
            None => Arc::new(self.grants_of(key)),
        };
        (!all.contains(ALL_MODELS)).then_some(all)
    }

    fn grants_of(&self, key: &KeyRecord) -> HashSet<String> {
        let group = self
            .groups
            .get(&key.group)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        key.models.iter().chain(group).cloned().collect()
    }

    /// Fills `grants` and `group_grants` once keys and groups are loaded.
    pub fn index_grants(&mut self) {
        let grants = self
            .keys_by_id
            .values()
            .filter(|k| k.role != Role::Admin)
            .map(|k| (k.id, Arc::new(self.grants_of(k))))
            .collect();
        self.grants = grants;
        self.group_grants = self
            .groups
            .iter()
            .map(|(g, models)| (g.clone(), Arc::new(models.iter().cloned().collect())))
            .collect();
    }
}

/// Money of one key: the store's figures plus what this process counted and has
/// not written yet.
#[derive(Debug, Clone, Default)]
pub struct KeyMoney {
    pub balance: Option<f64>,
    /// `yyyymm` the spend belongs to.
    pub month: u32,
    pub spent: f64,
    /// Cost counted here and not yet committed to the store.
    pub unflushed: f64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayTokens {
    pub used: u64,
    pub unflushed: u64,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub keys: crate::FastMap<i64, KeyMoney>,
    pub gateways: crate::FastMap<String, GatewayTokens>,
}

/// Exact counts of the fixed (hour and day) windows, and which changed since the
/// store last wrote them.
#[derive(Debug, Default)]
pub struct Counters {
    pub counts: crate::FastMap<(String, u64), u64>,
    pub dirty: HashSet<(String, u64)>,
}

pub struct Accounts {
    snapshot: ArcSwap<AccountsSnapshot>,
    pub ledger: Mutex<Ledger>,
    pub counters: Mutex<Counters>,
    /// Sliding one-minute windows (Pingora's estimator; exact while keys are few).
    minute: Rate,
}

/// What one request counted against the rate limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateCharge {
    minute: Vec<String>,
    fixed: Vec<(String, u64)>,
}

/// The tightest limit that applied to a request, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeadroom {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

/// One rule's window as one caller has used it, in requests and seconds.
struct WindowUse {
    used: u64,
    reset: u64,
    wait: u64,
}

fn refusal(rule: &RateRule, wait: u64) -> GatewayError {
    GatewayError::RateLimited {
        rule: format!(
            "{}:{}/{}",
            rule.scope.as_str(),
            rule.limit,
            rule.window.as_str()
        ),
        retry_after_secs: wait.max(1),
        limit: rule.limit,
        reset_secs: wait.max(1),
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `yyyymm` of a unix time, UTC.
pub fn month_of(unix: i64) -> u32 {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.year() as u32 * 100 + u32::from(u8::from(t.month())))
        .unwrap_or(0)
}

fn counter_key(gateway: &str, rule: &RateRule, identity: &str) -> String {
    let scope = rule.scope.as_str();
    let who = if rule.scope == Scope::Ingress {
        ""
    } else {
        identity
    };
    format!(
        "{gateway}\u{1f}{scope}\u{1f}{}\u{1f}{who}",
        rule.window.as_str()
    )
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            snapshot: ArcSwap::from_pointee(AccountsSnapshot::default()),
            ledger: Mutex::new(Ledger::default()),
            counters: Mutex::new(Counters::default()),
            // 4 × 64 Ki slots: collisions (which only over-count) stay rare up to
            // tens of thousands of active callers.
            minute: Rate::new_with_estimator_config(Duration::from_secs(60), 4, 65_536),
        }
    }
}

impl Accounts {
    pub fn snapshot(&self) -> Arc<AccountsSnapshot> {
        self.snapshot.load_full()
    }

    pub fn replace(&self, snap: AccountsSnapshot) {
        self.snapshot.store(Arc::new(snap));
    }

    /// The price of the first of `names` with one (the store's registry before the
    /// file's `models:`), then of the `default` model, else free.
    pub fn price(&self, rt: &Runtime, names: &[&str]) -> (f64, f64) {
        let snap = self.snapshot.load();
        for name in names
            .iter()
            .copied()
            .chain([weir_filters::config::CATCH_ALL_MODEL])
        {
            if let Some(m) = snap.models.get(name) {
                return (m.price_in, m.price_out);
            }
            if let Some(ModelPrice {
                price_in,
                price_out,
                ..
            }) = rt.prices.get(name)
            {
                return (*price_in, *price_out);
            }
        }
        (0.0, 0.0)
    }

    /// Whether the model takes image and audio parts: the store's registry before the
    /// file's `models:`; `None` when neither lists it (then nothing is enforced).
    pub fn multimodal(&self, rt: &Runtime, name: &str) -> Option<bool> {
        if let Some(m) = self.snapshot.load().models.get(name) {
            return Some(m.multimodal);
        }
        rt.prices.get(name).map(|p| p.multimodal)
    }

    /// Refuses a key over its monthly budget or out of balance, before any upstream call.
    pub fn check_money(&self, key: &KeyRecord, now: i64) -> Result<(), GatewayError> {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let Some(m) = ledger.keys.get_mut(&key.id) else {
            return Ok(());
        };
        let month = month_of(now);
        if m.month != month {
            // A new month: the budget starts afresh.
            m.month = month;
            m.spent = 0.0;
        }
        if let Some(balance) = m.balance {
            if balance <= 0.0 {
                return Err(GatewayError::InsufficientBalance { balance });
            }
        }
        if let Some(budget) = key.monthly_budget {
            if m.spent >= budget {
                return Err(GatewayError::BudgetExceeded { budget });
            }
        }
        Ok(())
    }

    /// A key's balance (`None`: not metered by balance) and its spend in the month
    /// of `now`.
    pub fn money_of(&self, key_id: i64, now: i64) -> (Option<f64>, f64) {
        let month = month_of(now);
        let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger
            .keys
            .get(&key_id)
            .map(|m| (m.balance, if m.month == month { m.spent } else { 0.0 }))
            .unwrap_or((None, 0.0))
    }

    /// Tokens a gateway has used against its quota.
    pub fn tokens_used(&self, gateway: &str) -> u64 {
        let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.gateways.get(gateway).map(|g| g.used).unwrap_or(0)
    }

    pub fn check_quota(&self, gateway: &Gateway) -> Result<(), GatewayError> {
        let Some(quota) = gateway.token_quota else {
            return Ok(());
        };
        let used = self.tokens_used(&gateway.name);
        if used >= quota {
            return Err(GatewayError::QuotaExceeded {
                gateway: gateway.name.clone(),
                quota,
            });
        }
        Ok(())
    }

    /// Checks every rate rule of the gateway for this caller and, when all pass,
    /// counts the request against each (a refused request counts against none). The
    /// returned charge can be refunded if the request is refused later on.
    pub fn check_rates(
        &self,
        gateway: &Gateway,
        identity: &str,
        now: u64,
    ) -> Result<(Option<RateHeadroom>, RateCharge), GatewayError> {
        if gateway.rate_rules.is_empty() {
            return Ok((None, RateCharge::default()));
        }
        let keys: Vec<String> = gateway
            .rate_rules
            .iter()
            .map(|r| counter_key(&gateway.name, r, identity))
            .collect();
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut tightest: Option<RateHeadroom> = None;
        for (rule, key) in gateway.rate_rules.iter().zip(&keys) {
            let w = self.window_use(rule, key, &counters, now);
            if w.used >= rule.limit {
                return Err(refusal(rule, w.wait));
            }
            let remaining = rule.limit - w.used - 1;
            if tightest.is_none_or(|t| remaining < t.remaining) {
                tightest = Some(RateHeadroom {
                    limit: rule.limit,
                    remaining,
                    reset_secs: w.reset.max(1),
                });
            }
        }
        let mut charge = RateCharge::default();
        for (rule, key) in gateway.rate_rules.iter().zip(keys) {
            match rule.window {
                Window::Minute => {
                    self.minute.observe(&key, 1);
                    charge.minute.push(key);
                }
                w => {
                    let id = (key, limits::window_start(now, w));
                    *counters.counts.entry(id.clone()).or_insert(0) += 1;
                    counters.dirty.insert(id.clone());
                    charge.fixed.push(id);
                }
            }
        }
        Ok((tightest, charge))
    }

    /// How much of one rule's window the caller has used, when it resets and how
    /// long a refused caller waits.
    fn window_use(&self, rule: &RateRule, key: &str, counters: &Counters, now: u64) -> WindowUse {
        match rule.window {
            Window::Minute => self.minute.rate_with(&key, |rc| {
                let (prev, curr) = (rc.prev_samples as f64, rc.curr_samples as f64);
                let f = rc.current_interval_fraction;
                // Admitted while the count is at most limit - 1.
                let max = rule.limit as f64 - 1.0;
                let wait = limits::sliding_wait(max, prev, curr, f, rc.interval);
                let window_left = (1.0 - f) * rc.interval.as_secs_f64();
                WindowUse {
                    used: limits::sliding_count(prev, curr, f).ceil() as u64,
                    reset: window_left.ceil() as u64,
                    wait: wait.as_secs_f64().ceil() as u64,
                }
            }),
            w => {
                let start = limits::window_start(now, w);
                let used = counters
                    .counts
                    .get(&(key.to_string(), start))
                    .copied()
                    .unwrap_or(0);
                let reset = limits::window_reset(now, w);
                WindowUse {
                    used,
                    reset,
                    wait: reset,
                }
            }
        }
    }

    /// Gives back what `check_rates` counted, for a request refused afterwards
    /// (unknown model, model not granted, bad body): only served requests count.
    pub fn refund(&self, charge: RateCharge) {
        for key in charge.minute {
            self.minute.observe(&key, -1);
        }
        if charge.fixed.is_empty() {
            return;
        }
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        for id in charge.fixed {
            if let Some(n) = counters.counts.get_mut(&id) {
                *n = n.saturating_sub(1);
                counters.dirty.insert(id);
            }
        }
    }

    /// Counts a finished request: the key's money and the gateway's tokens. The
    /// store writes the same figures shortly after.
    pub fn charge(&self, key_id: Option<i64>, gateway: &str, tokens: u64, cost: f64, now: i64) {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = key_id {
            let m = ledger.keys.entry(id).or_default();
            let month = month_of(now);
            if m.month != month {
                m.month = month;
                m.spent = 0.0;
            }
            m.spent += cost;
            m.unflushed += cost;
            if let Some(b) = m.balance.as_mut() {
                *b -= cost;
            }
        }
        let g = ledger.gateways.entry(gateway.to_string()).or_default();
        g.used += tokens;
        g.unflushed += tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(rules: &[&str], quota: Option<u64>) -> Gateway {
        let yaml = format!(
            "gateways:\n  - name: g\n    path: /v1\n    auth: {{method: regex, regex: '.+'}}\n    rate_limits: [{}]\n    token_quota: {}\n",
            rules.iter().map(|r| format!("'{r}'")).collect::<Vec<_>>().join(", "),
            quota.map(|q| q.to_string()).unwrap_or_else(|| "no-limit".into())
        );
        let rt = weir_filters::config::parse(&yaml).unwrap();
        rt.gateways[0].clone()
    }

    #[test]
    fn fixed_windows_count_exactly_and_refused_requests_do_not_count() {
        let a = Accounts::default();
        let g = gateway(&["secret:3/hour", "ingress:100/day"], None);
        let now = 1_767_262_650;
        for i in 0..3 {
            let h = a.check_rates(&g, "alice", now).unwrap().0.unwrap();
            assert_eq!(h.remaining, 2 - i);
        }
        let e = a.check_rates(&g, "alice", now).unwrap_err();
        assert_eq!(e.status(), 429);
        assert_eq!(e.retry_after(), Some(3600 - 17 * 60 - 30));
        // Another caller has its own count; the refused call did not count for ingress.
        assert!(a.check_rates(&g, "bob", now).is_ok());
        let ingress = a
            .counters
            .lock()
            .unwrap()
            .counts
            .iter()
            .filter(|((k, _), _)| k.contains("ingress"))
            .map(|(_, v)| *v)
            .sum::<u64>();
        assert_eq!(ingress, 4);
        // The next hour starts afresh.
        assert!(a.check_rates(&g, "alice", now + 3600).is_ok());
        // A refunded request no longer counts.
        let (_, charge) = a.check_rates(&g, "carol", now).unwrap();
        a.refund(charge);
        for _ in 0..3 {
            assert!(a.check_rates(&g, "carol", now).is_ok());
        }
        assert!(a.check_rates(&g, "carol", now).is_err());
    }

    #[test]
    fn minute_windows_refuse_the_n_plus_first() {
        let a = Accounts::default();
        let g = gateway(&["secret:5/minute"], None);
        for _ in 0..5 {
            assert!(a.check_rates(&g, "k", 0).is_ok());
        }
        let e = a.check_rates(&g, "k", 0).unwrap_err();
        // 5 in this minute: wait for it to end, then until the count slides to 4.
        let wait = e.retry_after().unwrap();
        assert!((60..=73).contains(&wait), "{wait}");
        assert_eq!(e.rate_limit_headers().len(), 3);
    }

    #[test]
    fn money_checks() {
        let a = Accounts::default();
        let key = KeyRecord {
            id: 1,
            name: "k".into(),
            role: Role::User,
            group: "default".into(),
            email: None,
            prefix: "sk-x".into(),
            monthly_budget: Some(1.0),
            expires_at: None,
            active: true,
            created_at: 0,
            models: vec![],
        };
        let now = 1_767_262_650;
        a.ledger.lock().unwrap().keys.insert(
            1,
            KeyMoney {
                balance: Some(0.5),
                month: month_of(now),
                spent: 0.0,
                unflushed: 0.0,
            },
        );
        assert!(a.check_money(&key, now).is_ok());
        a.charge(Some(1), "g", 10, 0.6, now);
        assert_eq!(a.check_money(&key, now).unwrap_err().status(), 402);
        a.ledger.lock().unwrap().keys.get_mut(&1).unwrap().balance = Some(5.0);
        a.charge(Some(1), "g", 10, 0.5, now);
        assert_eq!(
            a.check_money(&key, now).unwrap_err().code(),
            "budget_exceeded"
        );
        // Next month the budget is fresh.
        assert!(a.check_money(&key, now + 40 * 86_400).is_ok());
        let g = gateway(&[], Some(20));
        assert_eq!(
            a.check_quota(&g).unwrap_err().code(),
            "token_quota_exceeded"
        );
    }

    #[test]
    fn grants_are_the_union_of_key_and_group() {
        let mut snap = AccountsSnapshot::default();
        snap.groups.insert("team".into(), vec!["a".into()]);
        let mut key = KeyRecord {
            id: 1,
            name: "k".into(),
            role: Role::User,
            group: "team".into(),
            email: None,
            prefix: String::new(),
            monthly_budget: None,
            expires_at: None,
            active: true,
            created_at: 0,
            models: vec!["b".into()],
        };
        let g = snap.granted(&key).unwrap();
        assert!(g.contains("a") && g.contains("b") && g.len() == 2);
        key.models.push(ALL_MODELS.into());
        assert!(snap.granted(&key).is_none());
        key.models.clear();
        key.role = Role::Admin;
        assert!(snap.granted(&key).is_none());
        // Indexed once per snapshot: the same answers, from the index.
        key.role = Role::User;
        key.models = vec!["b".into()];
        snap.keys_by_id.insert(1, Arc::new(key.clone()));
        snap.groups.insert("open".into(), vec![ALL_MODELS.into()]);
        snap.index_grants();
        assert_eq!(snap.grants.len(), 1);
        let g = snap.granted(&key).unwrap();
        assert!(Arc::ptr_eq(&g, &snap.grants[&1]), "served from the index");
        assert!(g.contains("a") && g.contains("b") && g.len() == 2);
        assert_eq!(
            snap.group_grants["team"].iter().collect::<Vec<_>>(),
            vec!["a"]
        );
        assert!(snap.group_grants["open"].contains(ALL_MODELS));
    }
}
