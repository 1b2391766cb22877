//! Who is calling and may they (G1–G5, K4, K5): the key from where the gateway
//! says it is, checked by the gateway's method; then the allow/deny lists, rate
//! limits, token quota, budget and balance, all before any upstream call. The
//! rules themselves are `weir_filters::{auth, access, limits}`.

use super::caller::Caller;
use super::ctx::Ctx;
use crate::accounts::{counter_key, month_of, now_ms, now_unix, window_of, RateCharge};
use crate::shared::admission::{Admitted, Ask, MoneyAsk, QuotaAsk, RuleAsk};
use crate::state::AppState;
use std::net::IpAddr;
use weir_filters::access::{self, Visitor};
use weir_filters::auth::{hash_key, strip_bearer, KeyPosition};
use weir_filters::config::{AuthCheck, Gateway, GatewayAuth};
use weir_filters::GatewayError;

/// The key as sent in a header or a query parameter (`None` for `body:` positions,
/// which are read from the parsed body).
pub fn key_from_request(
    auth: &GatewayAuth,
    headers: &http::HeaderMap,
    query: Option<&str>,
) -> Option<String> {
    match &auth.position {
        KeyPosition::Header(name) => headers
            .get(name.as_str())
            // Anthropic's clients send their key as `x-api-key`.
            .or_else(|| {
                (name == "authorization")
                    .then(|| headers.get("x-api-key"))
                    .flatten()
            })
            .and_then(|v| v.to_str().ok())
            .map(|v| strip_bearer(v).to_string()),
        KeyPosition::Arg(name) => query.and_then(|q| weir_filters::auth::query_param(q, name)),
        KeyPosition::Body(_) => None,
    }
    .filter(|k| !k.is_empty())
}

fn missing(auth: &GatewayAuth) -> GatewayError {
    let hint = match &auth.position {
        KeyPosition::Header(h) if h == "authorization" => {
            "send it as `Authorization: Bearer <key>`".to_string()
        }
        KeyPosition::Header(h) => format!("send it in the `{h}` header"),
        KeyPosition::Body(f) => format!("send it in the JSON body's `{f}` field"),
        KeyPosition::Arg(a) => format!("send it as the `{a}` query parameter"),
    };
    GatewayError::InvalidKey(format!("missing API key: {hint}"))
}

/// Checks the key with the gateway's method.
pub fn authenticate(
    state: &AppState,
    auth: &GatewayAuth,
    key: Option<&str>,
) -> Result<Caller, GatewayError> {
    let key = key.ok_or_else(|| missing(auth))?;
    match &auth.method {
        AuthCheck::Database => {
            let snap = state.accounts.snapshot();
            let record = snap
                .keys_by_hash
                .get(&hash_key(key))
                .cloned()
                .ok_or_else(|| GatewayError::InvalidKey("invalid API key".into()))?;
            if !record.active {
                return Err(GatewayError::InvalidKey("this API key is disabled".into()));
            }
            if record.expires_at.is_some_and(|t| t <= now_unix()) {
                return Err(GatewayError::InvalidKey("this API key expired".into()));
            }
            Ok(Caller {
                identity: Some(format!("key:{}", record.id)),
                granted: snap.granted(&record),
                group: record.group.clone(),
                key: Some(record),
            })
        }
        AuthCheck::Regex(re) => {
            if !re.is_match(key) {
                return Err(GatewayError::InvalidKey("invalid API key".into()));
            }
            // The key itself is never kept: a prefix of its hash names the caller.
            Ok(Caller {
                identity: Some(format!("key#{}", &hash_key(key)[..16])),
                key: None,
                group: "default".into(),
                granted: None,
            })
        }
        AuthCheck::Jwt(verifier) => {
            let id = verifier.verify(key).map_err(GatewayError::InvalidKey)?;
            let group = id.group.unwrap_or_else(|| "default".into());
            // A group with grants in the store limits its callers to them; otherwise
            // (no such group, or no grants yet) the gateway's models are theirs.
            let granted = state
                .accounts
                .snapshot()
                .group_grants
                .get(&group)
                .filter(|g| !g.is_empty() && !g.contains(crate::accounts::ALL_MODELS))
                .cloned();
            Ok(Caller {
                identity: Some(id.identity),
                key: None,
                group,
                granted,
            })
        }
    }
}

/// The allow and deny lists (G5): `secret` is the raw key for `secret:` rules.
fn check_lists(
    gateway: &Gateway,
    secret: Option<&str>,
    client_ip: Option<IpAddr>,
    now: i64,
) -> Result<(), GatewayError> {
    if gateway.allow.is_empty() && gateway.deny.is_empty() {
        return Ok(());
    }
    let visitor = Visitor {
        ip: client_ip,
        secret,
        minute_utc: ((now.rem_euclid(86_400)) / 60) as u32,
    };
    access::decide(&gateway.allow, &gateway.deny, &visitor).map_err(|why| GatewayError::Forbidden {
        code: "access_denied",
        message: format!("access denied: {why}"),
    })
}

/// What the request needs checked and taken where instances share counting.
fn ask(state: &AppState, gateway: &Gateway, caller: &Caller, now: i64) -> Ask {
    let money = caller.key.as_ref().and_then(|k| {
        let (balance, spent) = state.accounts.money_of(k.id, now);
        (balance.is_some() || k.monthly_budget.is_some()).then(|| MoneyAsk {
            key_id: k.id,
            balance,
            spent,
            budget: k.monthly_budget,
            month: month_of(now),
        })
    });
    let quota = gateway.token_quota.map(|quota| QuotaAsk {
        gateway: gateway.name.clone(),
        used: state.accounts.tokens_used(&gateway.name),
        quota,
    });
    let identity = caller.identity.as_deref().unwrap_or("");
    let rules = gateway
        .rate_rules
        .iter()
        .map(|r| RuleAsk {
            key: counter_key(&gateway.name, r, identity),
            rule: *r,
            window: window_of(r),
        })
        .collect();
    Ask {
        money,
        quota,
        rules,
    }
}

/// The lists, then money, quota and rate limits: on Redis when instances share
/// counting and it answers, else here. Counts the request against the rate
/// limits when it passes.
pub async fn admit(
    state: &AppState,
    gateway: &Gateway,
    caller: &Caller,
    secret: Option<&str>,
    client_ip: Option<IpAddr>,
) -> Admitted {
    let now = now_unix();
    check_lists(gateway, secret, client_ip, now)?;
    if let Some(shared) = state.shared.as_ref().filter(|s| s.is_up()) {
        // Shared with the batch it goes out in, not copied into it.
        let ask = std::sync::Arc::new(ask(state, gateway, caller, now));
        if ask.is_empty() {
            return Ok((None, RateCharge::default()));
        }
        if let Some(verdict) = shared.admit(&ask).await {
            if let Ok((_, charge)) = &verdict {
                // This instance's share, for when it must count alone.
                state.accounts.record(charge);
            }
            return verdict;
        }
    }
    if let Some(key) = &caller.key {
        state.accounts.check_money(key, now)?;
    }
    state.accounts.check_quota(gateway)?;
    let identity = caller.identity.as_deref().unwrap_or("");
    let (headroom, mut charge) = state.accounts.check_rates(gateway, identity, now_ms())?;
    charge.counted_alone = state.shared.is_some();
    Ok((headroom, charge))
}

/// Authenticates the caller (an open gateway's is anonymous) and admits it, noting
/// in `ctx` who called and what the request counted against the limits.
pub async fn admit_caller(
    state: &AppState,
    ctx: &mut Ctx,
    gateway: &Gateway,
    key: Option<&str>,
    client_ip: Option<IpAddr>,
) -> Result<(), GatewayError> {
    let caller = match &gateway.auth {
        Some(auth) => authenticate(state, auth, key)?,
        None => Caller::anonymous(),
    };
    ctx.who.identity.clone_from(&caller.identity);
    ctx.who.key_id = caller.key.as_ref().map(|k| k.id);
    (ctx.who.rate, ctx.who.rate_charge) = admit(state, gateway, &caller, key, client_ip).await?;
    ctx.who.caller = Some(caller);
    Ok(())
}
