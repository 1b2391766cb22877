//! Who may call, and what they have used: the key/group/model snapshot the proxy
//! reads without locks (rebuilt by the store after every write), the money and
//! token ledger, and the rate-limit counters. All of it lives outside the config
//! snapshot so that a YAML reload never resets a counter.

use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use weir_filters::accounts::Role;
use weir_filters::config::{Gateway, ModelPrice, Runtime};
use weir_filters::limits::{RateRule, Scope};
use weir_filters::rolling::{RollingLog, Window as RollingWindow};
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

/// Windows this long or longer are written to the store and survive a restart;
/// shorter ones (a minute) are rebuilt within their window.
pub const PERSISTED_WINDOW_MS: u64 = 3_600_000;

/// One (rule, caller)'s admissions and the window they are counted in.
#[derive(Debug, Default)]
pub struct Log {
    pub log: RollingLog,
    pub window: RollingWindow,
}

/// The admission log of every (rule, caller) in use (G4: exact rolling windows),
/// and the buckets of persisted windows changed since the store last wrote them.
#[derive(Debug)]
pub struct Counters {
    pub logs: crate::FastMap<String, Log>,
    pub dirty: HashSet<(String, u64)>,
    /// Off when several instances share the store: their own shares would
    /// overwrite each other's rows (Redis keeps the shared windows instead).
    pub persist: bool,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            logs: Default::default(),
            dirty: HashSet::new(),
            persist: true,
        }
    }
}

impl Counters {
    fn touch(&mut self, key: &str, w: RollingWindow, at: u64) {
        if self.persist && w.window_ms >= PERSISTED_WINDOW_MS {
            self.dirty.insert((key.to_string(), at / w.bucket_ms()));
        }
    }

    /// Forgets the logs whose every admission has left its window (their stored
    /// buckets expire by themselves).
    pub fn prune(&mut self, now_ms: u64) {
        self.logs.retain(|_, l| !l.log.idle(now_ms, l.window));
    }

    /// A persisted bucket as it stands now: key, bucket, count (0: gone), window and
    /// when its admissions have all left it.
    pub fn stored(&self, key: &str, bucket: u64) -> Option<BucketRow> {
        let l = self.logs.get(key)?;
        Some(BucketRow {
            key: key.to_string(),
            bucket,
            count: l.log.count_at(bucket),
            window_ms: l.window.window_ms,
            expires_ms: l.window.leaves_at(bucket),
        })
    }
}

/// One persisted bucket of a rolling window, as the store writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub key: String,
    pub bucket: u64,
    pub count: u32,
    pub window_ms: u64,
    pub expires_ms: u64,
}

pub struct Accounts {
    snapshot: ArcSwap<AccountsSnapshot>,
    pub ledger: Mutex<Ledger>,
    pub counters: Mutex<Counters>,
}

/// What one request counted against the rate limits: each log, its window and the
/// time recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateCharge {
    pub taken: Vec<(String, RollingWindow, u64)>,
    /// Taken in Redis (and recorded here too): refunds go to both.
    pub shared: bool,
    /// Money and quota were checked in Redis: the request's cost goes there too.
    pub money_shared: bool,
    pub quota_shared: bool,
    /// Counted here because Redis was away: its cost is kept for Redis, which
    /// adds it when it returns.
    pub counted_alone: bool,
}

/// The tightest limit that applied to a request, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeadroom {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

/// A rule as a rolling window in milliseconds.
pub fn window_of(rule: &RateRule) -> RollingWindow {
    RollingWindow {
        limit: u32::try_from(rule.limit).unwrap_or(u32::MAX),
        window_ms: rule.window.secs() * 1000,
    }
}

/// Whole seconds for headers, rounded up: never promise a retry too early.
pub fn secs_of(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

pub fn refusal(rule: &RateRule, wait: u64) -> GatewayError {
    // The exact wait can be one bucket (1 ms for a minute) past the window, which
    // whole seconds would round to 61: a header never says more than the window.
    let wait = wait.clamp(1, rule.window.secs());
    GatewayError::RateLimited {
        rule: format!(
            "{}:{}/{}",
            rule.scope.as_str(),
            rule.limit,
            rule.window.as_str()
        ),
        retry_after_secs: wait,
        limit: rule.limit,
        reset_secs: wait,
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch: the clock of the rate-limit logs.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `yyyymm` of a unix time, UTC.
pub fn month_of(unix: i64) -> u32 {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.year() as u32 * 100 + u32::from(u8::from(t.month())))
        .unwrap_or(0)
}

pub fn counter_key(gateway: &str, rule: &RateRule, identity: &str) -> String {
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

    /// Checks every rate rule of the gateway for this caller at `now_ms` and, when
    /// all pass, counts the request against each (a refused request counts against
    /// none): at most `limit` in any trailing window, `Retry-After` the exact wait.
    /// The returned charge can be refunded if the request is refused later on.
    pub fn check_rates(
        &self,
        gateway: &Gateway,
        identity: &str,
        now_ms: u64,
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
        let mut refused: Option<(&RateRule, u64)> = None;
        for (rule, key) in gateway.rate_rules.iter().zip(&keys) {
            let window = window_of(rule);
            // The key is copied only for a caller's first request in the window.
            if !counters.logs.contains_key(key) {
                counters.logs.insert(key.clone(), Log::default());
            }
            let Some(l) = counters.logs.get_mut(key) else {
                continue;
            };
            l.window = window;
            match l.log.check(now_ms, window) {
                Ok(left) => {
                    if tightest.is_none_or(|t| u64::from(left) < t.remaining) {
                        tightest = Some(RateHeadroom {
                            limit: rule.limit,
                            remaining: u64::from(left),
                            reset_secs: secs_of(l.log.reset_ms(now_ms, window)),
                        });
                    }
                }
                Err(wait) if refused.is_none_or(|(_, longest)| wait > longest) => {
                    refused = Some((rule, wait));
                }
                Err(_) => {}
            }
        }
        if let Some((rule, wait)) = refused {
            return Err(refusal(rule, secs_of(wait)));
        }
        let mut charge = RateCharge::default();
        for key in keys {
            let Some(l) = counters.logs.get_mut(&key) else {
                continue;
            };
            let window = l.window;
            let at = l.log.take(now_ms, window);
            counters.touch(&key, window, at);
            charge.taken.push((key, window, at));
        }
        Ok((tightest, charge))
    }

    /// Gives back what `check_rates` counted, for a request refused afterwards
    /// (unknown model, model not granted, bad body): only served requests count.
    pub fn refund(&self, charge: RateCharge) {
        if charge.taken.is_empty() {
            return;
        }
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        for (key, window, at) in charge.taken {
            if let Some(l) = counters.logs.get_mut(&key) {
                l.log.give_back(at, window);
                counters.touch(&key, window, at);
            }
        }
    }

    /// Counts admissions made elsewhere (by the shared counter while it answered)
    /// into the local logs too, so that a fallback to local counting starts from
    /// this instance's share instead of from nothing.
    pub fn record(&self, charge: &RateCharge) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        for (key, window, at) in &charge.taken {
            let l = counters.logs.entry(key.clone()).or_default();
            l.window = *window;
            let at = l.log.take(*at, *window);
            counters.touch(key, *window, at);
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
    fn windows_roll_exactly_and_refused_requests_do_not_count() {
        let a = Accounts::default();
        let g = gateway(&["secret:3/hour", "ingress:100/day"], None);
        let now = 1_767_262_650_000;
        for i in 0..3 {
            let h = a
                .check_rates(&g, "alice", now + i * 1000)
                .unwrap()
                .0
                .unwrap();
            assert_eq!(h.remaining, 2 - i);
        }
        let e = a.check_rates(&g, "alice", now + 10_000).unwrap_err();
        assert_eq!(e.status(), 429);
        // The first of the three leaves the trailing hour one 60 ms bucket after
        // now + 1 h: 3,590.06 s from the refusal, rounded up.
        assert_eq!(e.retry_after(), Some(3591));
        // Another caller has its own log; the refused call took nothing from ingress.
        assert!(a.check_rates(&g, "bob", now).is_ok());
        let c = a.counters.lock().unwrap();
        let ingress: u64 = c
            .logs
            .iter()
            .filter(|(k, _)| k.contains("ingress"))
            .map(|(_, l)| l.log.total())
            .sum();
        assert_eq!(ingress, 4);
        // Hour and day buckets are marked for the store: alice's three hour buckets
        // (60 ms each), bob's one, and two day buckets (1.44 s each) of ingress.
        assert_eq!(c.dirty.len(), 6);
        drop(c);
        // A rolling hour: nothing fresh at the clock's hour, the first leaves after one.
        assert!(a.check_rates(&g, "alice", now + 3_600_000).is_err());
        assert!(a.check_rates(&g, "alice", now + 3_600_060).is_ok());
        // A refunded request no longer counts.
        let (_, charge) = a.check_rates(&g, "carol", now).unwrap();
        a.refund(charge);
        for _ in 0..3 {
            assert!(a.check_rates(&g, "carol", now).is_ok());
        }
        assert!(a.check_rates(&g, "carol", now).is_err());
    }

    #[test]
    fn minute_windows_refuse_the_n_plus_first_with_the_exact_wait() {
        let a = Accounts::default();
        let g = gateway(&["secret:5/minute"], None);
        for i in 0..5 {
            assert!(a.check_rates(&g, "k", i * 1000).is_ok());
        }
        let e = a.check_rates(&g, "k", 20_000).unwrap_err();
        // The first (at 0) leaves at 60.001 s: 40.001 s, rounded up.
        assert_eq!(e.retry_after(), Some(41));
        // The oldest admission in this very ms: 60.001 s away, said as 60.
        let e = a.check_rates(&g, "k", 4_000).unwrap_err();
        assert!(e.retry_after().is_some_and(|s| s <= 60));
        let late = a.check_rates(&g, "j", 0).map(|_| ()).and_then(|_| {
            for _ in 0..4 {
                a.check_rates(&g, "j", 0)?;
            }
            a.check_rates(&g, "j", 0).map(|_| ())
        });
        assert_eq!(late.unwrap_err().retry_after(), Some(60));
        assert_eq!(e.rate_limit_headers().len(), 3);
        let mut c = a.counters.lock().unwrap();
        assert!(c.dirty.is_empty(), "minute windows are not persisted");
        c.prune(200_000);
        assert!(c.logs.is_empty(), "idle logs go");
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
