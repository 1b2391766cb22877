//! Admission on Redis: what one request needs checked and taken (`Ask`), sent as
//! one script call (`admit.lua`), and the reply read back into the same verdicts
//! and headroom local counting gives. Refunds and charges are spawned, never
//! waited for by an answer.

use super::Shared;
use crate::accounts::{refusal, secs_of, RateCharge, RateHeadroom};
use redis::aio::MultiplexedConnection;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use weir_filters::limits::RateRule;
use weir_filters::rolling::Window;
use weir_filters::GatewayError;

pub struct Scripts {
    admit: redis::Script,
    refund: redis::Script,
    add: redis::Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            admit: redis::Script::new(include_str!("admit.lua")),
            refund: redis::Script::new(include_str!("refund.lua")),
            add: redis::Script::new(include_str!("add.lua")),
        }
    }

    /// Adds `(key, delta)`s to the figures that exist.
    pub async fn add(
        &self,
        conn: &mut MultiplexedConnection,
        deltas: &[(String, i64)],
    ) -> redis::RedisResult<()> {
        let mut call = self.add.prepare_invoke();
        for (k, d) in deltas {
            call.key(k).arg(d);
        }
        call.invoke_async::<i64>(conn).await.map(drop)
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}

/// A top-up made beside the server (`weir keys topup`): added to the balance
/// Redis holds, if it holds one, so every instance sees it at once.
pub fn top_up_now(
    config: &weir_filters::config::RedisConfig,
    key_id: i64,
    amount: f64,
) -> Result<(), String> {
    let shown = config.redacted_url();
    let fail = |e: redis::RedisError| format!("storage.redis `{shown}`: {e}");
    let client = redis::Client::open(config.url.as_str()).map_err(fail)?;
    let mut conn = client
        .get_connection_with_timeout(std::time::Duration::from_secs(2))
        .map_err(fail)?;
    redis::Script::new(include_str!("add.lua"))
        .key(Names(&config.prefix).balance(Some(key_id)))
        .arg(nano(amount))
        .invoke::<i64>(&mut conn)
        .map(drop)
        .map_err(fail)
}

/// Money in Redis: integers of 1e-9 (a token's price is far above that).
pub fn nano(x: f64) -> i64 {
    (x * 1e9).round() as i64
}

fn from_nano(n: i64) -> f64 {
    n as f64 / 1e9
}

/// A stored key's money, as this instance's ledger has it (the seed when Redis
/// has no figure yet).
#[derive(Debug, Clone)]
pub struct MoneyAsk {
    pub key_id: i64,
    pub balance: Option<f64>,
    pub spent: f64,
    pub budget: Option<f64>,
    /// `yyyymm` the spend belongs to.
    pub month: u32,
}

#[derive(Debug, Clone)]
pub struct QuotaAsk {
    pub gateway: String,
    pub used: u64,
    pub quota: u64,
}

#[derive(Debug, Clone)]
pub struct RuleAsk {
    /// `accounts::counter_key`: the same log name locally and in Redis.
    pub key: String,
    pub rule: RateRule,
    pub window: Window,
}

/// Everything one request's admission checks and takes.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub money: Option<MoneyAsk>,
    pub quota: Option<QuotaAsk>,
    pub rules: Vec<RuleAsk>,
}

impl Ask {
    /// Nothing shared to check: no round trip at all.
    pub fn is_empty(&self) -> bool {
        self.money.is_none() && self.quota.is_none() && self.rules.is_empty()
    }
}

/// Redis key names, under the configured prefix.
pub struct Names<'a>(pub &'a str);

impl Names<'_> {
    pub fn balance(&self, key_id: Option<i64>) -> String {
        match key_id {
            Some(id) => format!("{}bal:{id}", self.0),
            None => format!("{}bal:-", self.0),
        }
    }
    pub fn spend(&self, key_id: Option<i64>, month: u32) -> String {
        match key_id {
            Some(id) => format!("{}spend:{id}:{month}", self.0),
            None => format!("{}spend:-", self.0),
        }
    }
    pub fn tokens(&self, gateway: &str) -> String {
        format!("{}tok:{gateway}", self.0)
    }
    pub fn log(&self, counter: &str) -> String {
        format!("{}rl:{counter}", self.0)
    }
    pub fn total(&self, counter: &str) -> String {
        format!("{}rt:{counter}", self.0)
    }
}

/// A request waiting for the next call, and where its reply goes.
type Queued = (Arc<Ask>, tokio::sync::oneshot::Sender<Option<Vec<i64>>>);

/// Requests sent in one call at most (bounds the time a script holds Redis).
const MAX_BATCH: usize = 64;

/// The requests waiting for this instance's next admission call.
#[derive(Default)]
pub struct Batch {
    queue: std::sync::Mutex<Vec<Queued>>,
    busy: std::sync::atomic::AtomicBool,
}

/// One request's keys and arguments, as `admit.lua` reads them.
fn encode(names: &Names, ask: &Ask, call: &mut redis::ScriptInvocation<'_>) {
    let money = ask.money.as_ref();
    let key_id = money.map(|m| m.key_id);
    let month = money.map_or(0, |m| m.month);
    call.key(names.balance(key_id))
        .key(names.spend(key_id, month))
        .key(
            ask.quota
                .as_ref()
                .map_or_else(|| names.tokens(""), |q| names.tokens(&q.gateway)),
        );
    let opt = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    call.arg(ask.rules.len())
        .arg(opt(money.and_then(|m| m.balance).map(nano)))
        .arg(nano(money.map_or(0.0, |m| m.spent)))
        .arg(opt(money.and_then(|m| m.budget).map(nano)))
        .arg(ask.quota.as_ref().map_or(0, |q| q.used))
        .arg(opt(ask.quota.as_ref().map(|q| q.quota as i64)))
        .arg(SPEND_TTL_MS);
    for r in &ask.rules {
        call.key(names.log(&r.key)).key(names.total(&r.key));
        call.arg(r.window.limit)
            .arg(r.window.window_ms)
            .arg(r.window.bucket_ms());
    }
}

/// A batch's reply (each request's length, then its reply) split per request.
pub fn split(reply: &[i64], n: usize) -> Option<Vec<Vec<i64>>> {
    let mut out = Vec::with_capacity(n);
    let mut rest = reply;
    for _ in 0..n {
        let (&len, tail) = rest.split_first()?;
        let len = usize::try_from(len).ok()?;
        out.push(tail.get(..len)?.to_vec());
        rest = &tail[len..];
    }
    rest.is_empty().then_some(out)
}

/// A month's spend outlives the month by a few days, then Redis forgets it.
const SPEND_TTL_MS: u64 = 35 * 86_400_000;

/// What admission answers: the headroom and what was taken, or the refusal.
pub type Admitted = Result<(Option<RateHeadroom>, RateCharge), GatewayError>;

/// The script's reply as the verdict local counting would give; `None` when the
/// reply cannot be read (then this instance counts locally, as if Redis were away).
pub fn verdict(ask: &Ask, reply: &[i64]) -> Option<Admitted> {
    Some(match *reply.first()? {
        0 => {
            let mut charge = RateCharge {
                shared: true,
                money_shared: ask.money.is_some(),
                quota_shared: ask.quota.is_some(),
                ..RateCharge::default()
            };
            let mut tightest: Option<RateHeadroom> = None;
            for (i, r) in ask.rules.iter().enumerate() {
                let at = reply.get(2 + 3 * i..5 + 3 * i)?;
                let (taken, left, reset) = (at[0].max(0) as u64, at[1].max(0) as u64, at[2]);
                charge.taken.push((r.key.clone(), r.window, taken));
                if tightest.is_none_or(|t| left < t.remaining) {
                    tightest = Some(RateHeadroom {
                        limit: r.rule.limit,
                        remaining: left,
                        reset_secs: secs_of(reset.max(1) as u64),
                    });
                }
            }
            Ok((tightest, charge))
        }
        1 => {
            let rule = ask.rules.get(usize::try_from(*reply.get(1)?).ok()?)?;
            let wait = reply.get(2)?.max(&1).unsigned_abs();
            Err(refusal(&rule.rule, secs_of(wait)))
        }
        2 => Err(GatewayError::InsufficientBalance {
            balance: from_nano(*reply.get(1)?),
        }),
        3 => Err(GatewayError::BudgetExceeded {
            budget: ask.money.as_ref()?.budget?,
        }),
        4 => {
            let q = ask.quota.as_ref()?;
            Err(GatewayError::QuotaExceeded {
                gateway: q.gateway.clone(),
                quota: q.quota,
            })
        }
        _ => return None,
    })
}

impl Shared {
    /// Checks and takes everything `ask` needs; `None`: Redis is away (count
    /// locally). Requests that arrive while this instance's previous call is out
    /// go together in the next one (one script call for all of them, each
    /// admitted in turn): under load Redis then runs one script per batch, not
    /// one per request, and no request waits for a batch to fill.
    pub async fn admit(self: &Arc<Self>, ask: &Arc<Ask>) -> Option<Admitted> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.batch
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((ask.clone(), tx));
        if !self.batch.busy.swap(true, Ordering::AcqRel) {
            // Its own task: a request that goes away cannot strand the others.
            tokio::spawn(self.clone().drain());
        }
        let reply = rx.await.ok()??;
        let v = verdict(ask, &reply);
        if v.is_none() {
            self.down("admit", "unreadable reply");
        }
        v
    }

    /// Sends what is queued, batch after batch, until nothing is.
    async fn drain(self: Arc<Self>) {
        loop {
            let batch: Vec<Queued> = {
                let mut q = self.batch.queue.lock().unwrap_or_else(|p| p.into_inner());
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                self.batch.busy.store(false, Ordering::Release);
                // One queued between the take and the store would wait for nobody.
                let queued = !self
                    .batch
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                if queued && !self.batch.busy.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            let names = Names(self.prefix());
            let mut call = self.scripts.admit.prepare_invoke();
            call.arg(batch.len());
            for (ask, _) in &batch {
                encode(&names, ask, &mut call);
            }
            let reply: Option<Vec<i64>> = self
                .run("admit", |mut conn| async move {
                    call.invoke_async(&mut conn).await
                })
                .await;
            let parts = reply.as_deref().and_then(|r| split(r, batch.len()));
            if reply.is_some() && parts.is_none() {
                self.down("admit", "unreadable reply");
            }
            let mut parts = parts.map(Vec::into_iter);
            for (ask, tx) in batch {
                let part = parts.as_mut().and_then(Iterator::next);
                if let Err(Some(unheard)) = tx.send(part) {
                    // Its request went away meanwhile: what it took is given back.
                    if let Some(Ok((_, charge))) = verdict(&ask, &unheard) {
                        self.refund(&charge);
                    }
                }
            }
        }
    }

    /// Gives back in Redis what `admit` took there, in the background.
    pub fn refund(self: &Arc<Self>, charge: &RateCharge) {
        if !charge.shared || charge.taken.is_empty() {
            return;
        }
        let names = Names(self.prefix());
        let taken: Vec<(String, String, u64)> = charge
            .taken
            .iter()
            .map(|(key, w, at)| (names.log(key), names.total(key), at / w.bucket_ms()))
            .collect();
        let me = self.clone();
        tokio::spawn(async move {
            let mut call = me.scripts.refund.prepare_invoke();
            for (log, total, bucket) in &taken {
                call.key(log).key(total).arg(bucket);
            }
            me.run("refund", |mut conn| async move {
                call.invoke_async::<i64>(&mut conn).await
            })
            .await;
        });
    }

    /// Counts a served request's cost and tokens where admission shared them, in
    /// the background; kept for later when Redis is away.
    pub fn charge(
        self: &Arc<Self>,
        charge: &RateCharge,
        key_id: Option<i64>,
        month: u32,
        gateway: &str,
        tokens: u64,
        cost: f64,
    ) {
        let names = Names(self.prefix());
        let mut deltas = Vec::with_capacity(3);
        let alone = charge.counted_alone;
        if (charge.money_shared || alone) && cost != 0.0 && key_id.is_some() {
            deltas.push((names.balance(key_id), -nano(cost)));
            deltas.push((names.spend(key_id, month), nano(cost)));
        }
        if (charge.quota_shared || alone) && tokens != 0 {
            deltas.push((names.tokens(gateway), tokens as i64));
        }
        if alone && !self.is_up() {
            // Admitted while Redis was away: its figures there (if any) learn of
            // this cost when it returns (or now, if it already has).
            self.keep(&deltas);
        } else {
            self.add_later(deltas);
        }
    }

    /// A top-up of a key's balance, where Redis holds it.
    pub fn top_up(self: &Arc<Self>, key_id: i64, amount: f64) {
        let names = Names(self.prefix());
        self.add_later(vec![(names.balance(Some(key_id)), nano(amount))]);
    }

    fn add_later(self: &Arc<Self>, deltas: Vec<(String, i64)>) {
        if deltas.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let sent = me
                .run("charge", |mut conn| {
                    let d = deltas.clone();
                    let me = me.clone();
                    async move { me.scripts.add(&mut conn, &d).await }
                })
                .await;
            if sent.is_none() {
                me.keep(&deltas);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_filters::limits::{Scope, Window as Span};

    fn rule(limit: u64) -> RuleAsk {
        let rule = RateRule {
            scope: Scope::Secret,
            limit,
            window: Span::Minute,
        };
        RuleAsk {
            key: format!("k{limit}"),
            window: crate::accounts::window_of(&rule),
            rule,
        }
    }

    #[test]
    fn replies_read_as_local_counting_answers() {
        let ask = Ask {
            rules: vec![rule(3), rule(10)],
            quota: Some(QuotaAsk {
                gateway: "g".into(),
                used: 5,
                quota: 9,
            }),
            ..Ask::default()
        };
        let (head, charge) = verdict(&ask, &[0, 1000, 1000, 2, 60_000, 1000, 0, 30_500])
            .unwrap()
            .unwrap();
        let head = head.unwrap();
        assert_eq!((head.limit, head.remaining, head.reset_secs), (10, 0, 31));
        assert!(charge.shared && charge.quota_shared && !charge.money_shared);
        assert_eq!(charge.taken[1].2, 1000);
        let refused = |reply: &[i64]| verdict(&ask, reply).unwrap().unwrap_err();
        let e = refused(&[1, 1, 1500]);
        assert_eq!((e.status(), e.retry_after()), (429, Some(2)));
        assert!(e.to_string().contains("secret:10/minute"), "{e}");
        assert_eq!(refused(&[4]).code(), "token_quota_exceeded");
        assert_eq!(refused(&[2, -5]).status(), 402);
        // A short or unknown reply is never a verdict: the instance counts locally.
        assert!(verdict(&ask, &[0, 1000, 1000]).is_none());
        assert!(verdict(&ask, &[1, 7, 10]).is_none());
        assert!(verdict(&ask, &[9]).is_none());
        assert_eq!(nano(0.000_002_5), 2500);
        assert_eq!(split(&[2, 3, 4, 1, 9], 2), Some(vec![vec![3, 4], vec![9]]));
        assert!(split(&[2, 3], 1).is_none(), "short");
        assert!(split(&[1, 3, 7], 1).is_none(), "trailing");
        assert!(split(&[-1], 1).is_none());
    }
}
