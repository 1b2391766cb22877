//! The gateway side of the admin API: runs the commands `weir_admin` routed and
//! permitted, one short method per command; `views` renders the answers.

mod views;

pub use views::imported as imported_view;

use crate::accounts::now_unix;
use crate::proxy::probe;
use crate::state::{AppState, ReloadOutcome};
use crate::store::entities::Change;
use crate::store::{calllog, ops, queries};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use weir_admin::api::{Caller, ChannelTest, Command, Discover};
use weir_admin::{is_bootstrap_key, AdminBackend, Answer};
use weir_filters::accounts::{KeyPatch, ModelDef, NewGroup, NewKey, Role, UsageGroup, UsageQuery};
use weir_filters::auth::hash_key;
use weir_filters::calllog::{ExportFormat, LogQuery};
use weir_filters::config::CATCH_ALL_MODEL;
use weir_filters::people::{ImportOptions, Person, RowError};
use weir_filters::GatewayError;

type Reply = Result<Answer, GatewayError>;

fn ok(v: Value) -> Reply {
    Ok(Answer::Json(200, v))
}

/// The admin plane over the running gateway's state.
pub struct Admin {
    state: Arc<AppState>,
    /// Where the proxy listener listens (the port the kernel gave, for port 0).
    proxy_addr: SocketAddr,
}

impl Admin {
    pub fn new(state: Arc<AppState>, proxy_addr: SocketAddr) -> Self {
        Admin { state, proxy_addr }
    }

    /// A stored key that is active and not expired.
    fn stored_caller(&self, key_hash: &str) -> Option<Caller> {
        let snap = self.state.accounts.snapshot();
        let key = snap.keys_by_hash.get(key_hash)?;
        if !key.active || key.expires_at.is_some_and(|t| t <= now_unix()) {
            return None;
        }
        Some(match key.role {
            Role::Admin => Caller::Admin {
                key_id: Some(key.id),
            },
            Role::User => Caller::User { key_id: key.id },
        })
    }
}

/// `http://host:port` of a listener: its own address, or the host the browser
/// used when it listens on every address.
fn base_url_of(addr: SocketAddr, host_header: Option<&str>) -> String {
    let ip = addr.ip();
    let host = if ip.is_unspecified() {
        host_header
            .map(|h| match h.rsplit_once(':') {
                // `[::1]:8081` or `name:8081`: the part before the port.
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => h,
            })
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| "127.0.0.1".into())
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("http://{host}:{}", addr.port())
}

#[async_trait]
impl AdminBackend for Admin {
    fn authenticate(&self, token: &str) -> Option<Caller> {
        if is_bootstrap_key(self.state.snapshot().server().admin_key.as_deref(), token) {
            return Some(Caller::Admin { key_id: None });
        }
        self.stored_caller(&hash_key(token))
    }

    fn session_caller(&self, key_hash: &str) -> Option<Caller> {
        let bootstrap = self.state.snapshot().server().admin_key.clone();
        if let Some(k) = bootstrap.filter(|k| !k.is_empty()) {
            // Hashes of equal length, compared in constant time.
            if is_bootstrap_key(Some(&hash_key(&k)), key_hash) {
                return Some(Caller::Admin { key_id: None });
            }
        }
        self.stored_caller(key_hash)
    }

    fn base_url(&self, host: Option<&str>) -> String {
        base_url_of(self.proxy_addr, host)
    }

    fn client_ip(&self, peer: Option<IpAddr>, headers: &http::HeaderMap) -> Option<IpAddr> {
        let trusted = &self.state.snapshot().trusted_proxies;
        weir_filters::client_addr::client_ip(peer, headers, trusted)
    }

    async fn execute(&self, caller: Caller, cmd: Command) -> Reply {
        let state = &self.state;
        match cmd {
            Command::Reload => self.reload(),
            Command::Channels => ok(views::channels(state)),
            Command::Config => {
                ok(json!({"version": state.version(), "config": state.snapshot().redacted_json()}))
            }
            Command::CreateKey(new) => self.create_key(new).await,
            Command::ListKeys => ok(views::keys(state)),
            Command::GetKey(id) => ok(views::key_by_id(state, id)?),
            Command::UpdateKey(id, patch) => self.update_key(id, patch).await,
            Command::ResetKey(id) => self.reset_key(id).await,
            Command::TopUp(id, amount) => self.top_up(id, amount).await,
            Command::DeleteKey(id) => self.delete_key(id).await,
            Command::ListGroups => ok(views::groups(state)),
            Command::CreateGroup(g) => self.create_group(g).await,
            Command::DeleteGroup(name) => self.delete_group(name).await,
            Command::SetGroupModels(name, models) => self.set_group_models(name, models).await,
            Command::ListModels => ok(views::models(state)),
            Command::PutModel(m) => self.put_model(m).await,
            Command::DeleteModel(name) => self.delete_model(name).await,
            Command::Usage(q) => {
                let rows = state.store.read(move |c| queries::usage(c, &q)).await?;
                ok(json!({"usage": rows}))
            }
            Command::Gateways => self.gateways().await,
            Command::Me => match caller {
                Caller::Admin { key_id: None } => ok(json!({"role": "admin", "bootstrap": true})),
                Caller::Admin { key_id: Some(id) } | Caller::User { key_id: id } => {
                    let mut me = views::key_by_id(state, id)?;
                    me["gateways"] = views::gateway_paths(state);
                    ok(me)
                }
            },
            Command::MyUsage(q) => self.my_usage(caller, q).await,
            Command::CreateChannel(v) => self.write(Change::CreateChannel(v)).await,
            Command::GetChannel(name) => ok(views::channel_named(state, &name)?),
            Command::PatchChannel(name, patch) => {
                self.write(Change::PatchChannel(name, patch)).await
            }
            Command::DeleteChannel(name) => self.write(Change::DeleteChannel(name)).await,
            Command::TestChannel(name, test) => self.test_channel(&name, test).await,
            Command::Discover(d) => self.discover(d).await,
            Command::CreateGateway(v) => self.write(Change::CreateGateway(v)).await,
            Command::GetGateway(name) => ok(views::gateway_named(state, &name)?),
            Command::PatchGateway(name, patch) => {
                self.write(Change::PatchGateway(name, patch)).await
            }
            Command::DeleteGateway(name) => self.write(Change::DeleteGateway(name)).await,
            Command::Webhooks => ok(views::webhooks(state)),
            Command::CreateWebhook(v) => self.write(Change::CreateWebhook(v)).await,
            Command::GetWebhook(name) => ok(views::webhook_named(state, &name)?),
            Command::PatchWebhook(name, patch) => {
                self.write(Change::PatchWebhook(name, patch)).await
            }
            Command::DeleteWebhook(name) => self.write(Change::DeleteWebhook(name)).await,
            Command::Logs(q) => self.logs(caller, q).await,
            Command::Log(id) => self.log(caller, id).await,
            Command::ExportLogs(q, format) => Ok(self.export(caller, q, format)),
            Command::ImportKeys(options, people, errors) => {
                self.import_keys(options, people, errors).await
            }
            Command::Mail(status) => {
                let status = status.map(|s| s.as_str());
                let rows = state
                    .store
                    .read(move |c| crate::store::mail::list(c, status))
                    .await?;
                ok(json!({"data": rows}))
            }
            Command::MailKey(id) => self.mail_key(id).await,
            Command::ImportOneApi(req) => self.import_one_api(req).await,
        }
    }

    fn health(&self) -> serde_json::Value {
        let up = |b: bool| if b { "up" } else { "down" };
        let mut backends = serde_json::Map::new();
        backends.insert(
            "store".into(),
            json!(up(self.state.store.backlog().is_up())),
        );
        if let Some(shared) = &self.state.shared {
            backends.insert("redis".into(), json!(up(shared.is_up())));
        }
        let all_up = backends.values().all(|v| v == "up");
        json!({"status": if all_up { "ok" } else { "degraded" }, "backends": backends})
    }

    fn metrics(&self) -> Vec<u8> {
        let state = &self.state;
        state
            .metrics
            .refresh_health(&state.snapshot(), &state.health);
        let backlog = state.store.backlog();
        let m = &state.metrics;
        m.usage_backlog.set(backlog.queued() as i64);
        m.usage_dropped.set(backlog.dropped() as i64);
        m.backend_up
            .with_label_values(&["store"])
            .set(i64::from(backlog.is_up()));
        m.render()
    }
}

/// A user key's log queries see its own rows only.
fn scoped(caller: Caller, q: LogQuery) -> LogQuery {
    match caller {
        Caller::User { key_id } => LogQuery {
            key_id: Some(key_id),
            ..q
        },
        Caller::Admin { .. } => q,
    }
}

impl Admin {
    /// A YAML entity is read-only through the API.
    fn file_guard(&self, name: &str, kind: &str) -> Result<(), GatewayError> {
        let rt = self.state.snapshot();
        let in_file = match kind {
            "channel" => rt.file.channels.iter().any(|c| c.name == name),
            "webhook" => rt.file.webhooks.iter().any(|w| w.name == name),
            _ => rt.file.gateways.iter().any(|g| g.name == name),
        };
        if in_file {
            return Err(GatewayError::DefinedInFile(name.to_string()));
        }
        Ok(())
    }

    /// Writes the change to the store (checked there against the whole config), then
    /// serves it from the next request on.
    async fn change(&self, change: Change) -> Result<(), GatewayError> {
        let file = self.state.snapshot().file.clone();
        self.state.store.change_entities(change, file).await?;
        tokio::task::block_in_place(|| self.state.restock("admin")).map_err(|problems| {
            GatewayError::Internal(format!(
                "stored, but the snapshot was not rebuilt: {problems}"
            ))
        })?;
        Ok(())
    }

    /// One write to a stored channel, gateway or webhook (a file entry is
    /// read-only): 201 with the entry for a create, 200 with it for a patch, the
    /// name for a delete.
    async fn write(&self, change: Change) -> Reply {
        let (kind, name) = change.target();
        let (creates, deletes) = (change.creates(), change.deletes());
        self.file_guard(&name, kind)?;
        self.change(change).await?;
        if deletes {
            return ok(json!({ "deleted": name }));
        }
        let view = match kind {
            "channel" => views::channel_named(&self.state, &name)?,
            "webhook" => views::webhook_named(&self.state, &name)?,
            _ => views::gateway_named(&self.state, &name)?,
        };
        Ok(Answer::Json(if creates { 201 } else { 200 }, view))
    }

    /// Docking (A6): a channel template from the provider's model list; stored when
    /// asked, with the key, under the given name.
    async fn discover(&self, d: Discover) -> Reply {
        let docked = probe::discover(&self.state, &d.kind, &d.base_url, d.key.as_deref()).await?;
        if !d.save {
            return ok(json!({"channel": docked.template, "models": docked.models}));
        }
        let name = d.name.ok_or_else(|| {
            GatewayError::BadRequest(
                "name: `save` needs the name to store the channel under".into(),
            )
        })?;
        let mut entry = docked.template;
        entry["name"] = Value::from(name);
        if let Some(key) = d.key {
            entry["keys"] = json!([key]);
        }
        self.write(Change::CreateChannel(entry)).await
    }

    /// One real request per model through the channel's adapter (A5); nothing billed.
    async fn test_channel(&self, name: &str, test: ChannelTest) -> Reply {
        let rt = self.state.snapshot();
        let index = probe::index_of(&rt, name)?;
        let channel = &rt.channels[index];
        let models = test
            .models
            .unwrap_or_else(|| probe::default_models(channel));
        if models.is_empty() {
            return Err(GatewayError::BadRequest(format!(
                "`{name}` lists no model to test; name one in `models`"
            )));
        }
        let catches_all = channel.exposed.iter().any(|m| m == CATCH_ALL_MODEL);
        if let Some(m) = models
            .iter()
            .find(|m| !catches_all && !channel.exposed.contains(m))
        {
            return Err(GatewayError::BadRequest(format!(
                "models: `{m}` is not a model of the channel `{name}`"
            )));
        }
        let results = probe::test(&self.state, &rt, index, &models).await;
        let passed = results.iter().all(|r| r.ok);
        let readmitted = test.readmit && passed && probe::suspended(&self.state, channel);
        if readmitted {
            probe::readmit(&self.state, channel);
        }
        ok(json!({"channel": name, "results": results, "readmitted": readmitted}))
    }

    /// Bulk import (K2): a key per new email, in one transaction.
    async fn import_keys(
        &self,
        options: ImportOptions,
        people: Vec<Person>,
        unreadable: Vec<RowError>,
    ) -> Reply {
        let dry_run = options.dry_run;
        let mail = self.state.snapshot().file.smtp.is_some();
        let now = now_unix();
        let mut done = self
            .state
            .store
            .call(!dry_run, move |c| {
                ops::import_keys(c, &people, &options, mail, now)
            })
            .await?;
        self.state.outbox.send(std::mem::take(&mut done.mails));
        ok(views::imported(done, unreadable, dry_run))
    }

    /// One API / New API import (A7): read the source, plan, apply in one
    /// transaction, then serve the new channels from the next request on.
    async fn import_one_api(&self, req: crate::one_api::ImportRequest) -> Reply {
        let source = crate::one_api::read(&req.dsn, req.tokens).await?;
        let plan = crate::one_api::plan(source, req.prefix.as_deref())?;
        let file = self.state.snapshot().file.clone();
        let report = self
            .state
            .store
            .import_one_api(plan, file, req.dry_run)
            .await?;
        if !req.dry_run {
            tokio::task::block_in_place(|| self.state.restock("import")).map_err(|problems| {
                GatewayError::Internal(format!(
                    "imported, but the snapshot was not rebuilt: {problems}"
                ))
            })?;
        }
        ok(report)
    }

    /// A new secret for a key, mailed to its email: how a failed mail is recovered.
    async fn mail_key(&self, id: i64) -> Reply {
        if self.state.snapshot().file.smtp.is_none() {
            return Err(GatewayError::BadRequest(
                "smtp: is not configured, so weir cannot mail keys".into(),
            ));
        }
        let now = now_unix();
        let m = self
            .state
            .store
            .call(true, move |c| crate::store::mail::remail(c, id, now))
            .await?;
        let email = m.email.clone();
        self.state.outbox.send(vec![m]);
        ok(
            json!({"id": id, "email": email, "mailed": "queued", "note": "the key has a new secret, on its way by mail; the old one has stopped"}),
        )
    }

    /// Every row a log query selects, streamed as CSV or NDJSON.
    fn export(&self, caller: Caller, q: LogQuery, format: ExportFormat) -> Answer {
        let (content_type, filename) = match format {
            ExportFormat::Csv => ("text/csv; charset=utf-8", "weir-calls.csv"),
            ExportFormat::Ndjson => ("application/x-ndjson", "weir-calls.ndjson"),
        };
        Answer::Stream {
            content_type,
            filename: filename.into(),
            chunks: self.state.store.export(scoped(caller, q), format),
        }
    }

    async fn logs(&self, caller: Caller, q: LogQuery) -> Reply {
        let q = scoped(caller, q);
        let (rows, next) = self.state.store.read(move |c| calllog::page(c, &q)).await?;
        ok(json!({"data": rows, "next": next}))
    }

    async fn log(&self, caller: Caller, id: i64) -> Reply {
        let own = match caller {
            Caller::User { key_id } => Some(key_id),
            Caller::Admin { .. } => None,
        };
        let row = self
            .state
            .store
            .read(move |c| calllog::one(c, id, own))
            .await?;
        ok(row.ok_or_else(|| GatewayError::NotFound(format!("no call with id {id}")))?)
    }

    fn reload(&self) -> Reply {
        // File I/O and parsing: keep it off the async worker.
        let outcome =
            tokio::task::block_in_place(|| self.state.reload("admin")).map_err(|problems| {
                GatewayError::BadRequest(format!(
                    "config rejected, the previous config keeps serving: {problems}"
                ))
            })?;
        let (reloaded, version) = match outcome {
            ReloadOutcome::Reloaded { version } => (true, version),
            ReloadOutcome::Unchanged { version } => (false, version),
        };
        ok(json!({"reloaded": reloaded, "version": version}))
    }

    /// A key's view with its new secret, shown this once.
    fn with_secret(&self, id: i64, secret: String, note: &str) -> Result<Value, GatewayError> {
        let mut view = views::key_by_id(&self.state, id)?;
        view["key"] = Value::from(secret);
        view["note"] = Value::from(note);
        Ok(view)
    }

    async fn create_key(&self, new: NewKey) -> Reply {
        let now = now_unix();
        let (id, secret) = self
            .state
            .store
            .call(true, move |c| ops::create_key(c, &new, now))
            .await?;
        let view = self.with_secret(
            id,
            secret,
            "the key is shown this once; weir keeps only its hash",
        )?;
        Ok(Answer::Json(201, view))
    }

    async fn update_key(&self, id: i64, patch: KeyPatch) -> Reply {
        let store = &self.state.store;
        store
            .call(true, move |c| ops::update_key(c, id, &patch))
            .await?;
        ok(views::key_by_id(&self.state, id)?)
    }

    async fn reset_key(&self, id: i64) -> Reply {
        let store = &self.state.store;
        let secret = store.call(true, move |c| ops::reset_key(c, id)).await?;
        ok(self.with_secret(
            id,
            secret,
            "the old key stopped working; the new one is shown this once",
        )?)
    }

    async fn top_up(&self, id: i64, amount: f64) -> Reply {
        let store = &self.state.store;
        store
            .call(true, move |c| ops::top_up(c, id, amount))
            .await?;
        if let Some(shared) = &self.state.shared {
            shared.top_up(id, amount);
        }
        ok(views::key_by_id(&self.state, id)?)
    }

    async fn delete_key(&self, id: i64) -> Reply {
        let store = &self.state.store;
        store.call(true, move |c| ops::delete_key(c, id)).await?;
        ok(json!({"deleted": id}))
    }

    async fn create_group(&self, g: NewGroup) -> Reply {
        let name = g.name.clone();
        let store = &self.state.store;
        store.call(true, move |c| ops::create_group(c, &g)).await?;
        Ok(Answer::Json(201, json!({"created": name})))
    }

    async fn delete_group(&self, name: String) -> Reply {
        let n = name.clone();
        let store = &self.state.store;
        store.call(true, move |c| ops::delete_group(c, &n)).await?;
        ok(json!({"deleted": name}))
    }

    async fn set_group_models(&self, name: String, models: Vec<String>) -> Reply {
        let (n, m) = (name.clone(), models.clone());
        let store = &self.state.store;
        store
            .call(true, move |c| ops::set_group_models(c, &n, &m))
            .await?;
        ok(json!({"group": name, "models": models}))
    }

    async fn put_model(&self, m: ModelDef) -> Reply {
        if let Some(p) = &m.provider {
            self.state
                .snapshot()
                .check_provider(p)
                .map_err(|e| GatewayError::BadRequest(format!("provider: {e}")))?;
        }
        let view = serde_json::to_value(&m).unwrap_or(Value::Null);
        let store = &self.state.store;
        store.call(true, move |c| ops::upsert_model(c, &m)).await?;
        ok(view)
    }

    async fn delete_model(&self, name: String) -> Reply {
        let n = name.clone();
        let store = &self.state.store;
        store.call(true, move |c| ops::delete_model(c, &n)).await?;
        ok(json!({"deleted": name}))
    }

    /// Per gateway: tokens against the quota, and calls per hour today (G8).
    async fn gateways(&self) -> Reply {
        let now = now_unix();
        let day_start = now - now.rem_euclid(86_400);
        let hourly = self
            .state
            .store
            .read(move |c| queries::hourly(c, day_start))
            .await?;
        ok(views::gateways(&self.state, day_start, &hourly))
    }

    /// The calling key's own usage by day (unless grouped otherwise) and its last calls.
    async fn my_usage(&self, caller: Caller, q: UsageQuery) -> Reply {
        let id = match caller {
            Caller::Admin { key_id: Some(id) } | Caller::User { key_id: id } => id,
            Caller::Admin { key_id: None } => {
                return Err(GatewayError::BadRequest(
                    "the bootstrap admin key has no usage of its own; see /admin/usage".into(),
                ))
            }
        };
        if q.key_id.is_some_and(|k| k != id) {
            return Err(GatewayError::Forbidden {
                code: "admin_only",
                message: "/admin/me/usage shows the calling key's own usage only".into(),
            });
        }
        let q = UsageQuery {
            key_id: Some(id),
            group_by: q.group_by.or(Some(UsageGroup::Day)),
            ..q
        };
        let (rows, calls) = self
            .state
            .store
            .read(move |c| Ok((queries::usage(c, &q)?, queries::recent_calls(c, id, 50)?)))
            .await?;
        ok(json!({"key": views::key_by_id(&self.state, id)?, "usage": rows, "recent_calls": calls}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_is_the_proxy_listener() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(
            base_url_of(any, Some("gw.example:8081")),
            "http://gw.example:8080"
        );
        assert_eq!(base_url_of(any, Some("[::1]:8081")), "http://[::1]:8080");
        assert_eq!(base_url_of(any, None), "http://127.0.0.1:8080");
        let one: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(base_url_of(one, Some("x:1")), "http://127.0.0.1:9000");
        let v6: SocketAddr = "[::1]:9000".parse().unwrap();
        assert_eq!(base_url_of(v6, None), "http://[::1]:9000");
    }
}
