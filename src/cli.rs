//! `weir keys …`: key management from a shell, straight on the store file.

use crate::accounts::now_unix;
use crate::mail;
use crate::store::db::Sql;
use crate::store::ops;
use crate::store::schema::Target;
use clap::{Args, Subcommand};
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use weir_filters::accounts::{NewKey, Role};
use weir_filters::key_mail::KeyMail;
use weir_filters::people::{self, ImportOptions};

#[derive(Subcommand)]
pub enum KeysAction {
    /// Create a key; prints it once.
    Create(CreateArgs),
    /// List keys (never their secrets).
    List,
    /// Give a key a new secret; the old one stops working.
    Reset { id: i64 },
    /// Add to a key's balance.
    Topup { id: i64, amount: f64 },
    /// A key for each person of a CSV file (`name,email`, or a Cognito user
    /// export); people whose email already has a key are skipped.
    Import(ImportArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    /// The CSV file.
    file: std::path::PathBuf,
    #[arg(long, default_value = "default")]
    group: String,
    /// Models granted to every new key, comma-separated.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    #[arg(long)]
    monthly_budget: Option<f64>,
    /// Show what would be created; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Imports the file's people; answers the same JSON as `POST /admin/keys/import`.
/// With `smtp:` set the mails go out before it returns, retried as configured, and
/// each row's `mailed` says how its mail ended (`sent` or `failed`).
fn import(
    conn: &mut dyn Sql,
    args: ImportArgs,
    smtp: Option<mail::Settings>,
) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let (found, unreadable) = people::parse(&bytes).map_err(|e| e.to_string())?;
    let options = ImportOptions {
        group: args.group,
        models: args.models,
        monthly_budget: args.monthly_budget,
        dry_run: args.dry_run,
    };
    let mut done = ops::import_keys(conn, &found, &options, smtp.is_some(), now_unix())
        .map_err(|e| e.to_string())?;
    let mails = std::mem::take(&mut done.mails);
    let mut view = crate::admin_backend::imported_view(done, unreadable, options.dry_run);
    if let (Some(smtp), false) = (smtp, mails.is_empty()) {
        let outcome = send_now(conn, &mails, smtp)?;
        for row in view["created"].as_array_mut().into_iter().flatten() {
            if let Some((status, error)) = row["id"].as_i64().and_then(|id| outcome.get(&id)) {
                row["mailed"] = json!(status);
                row["mail_error"] = json!(error);
            }
        }
    }
    Ok(view)
}

/// Sends `mails` one after another on a runtime of its own, recording each in the
/// outbox as the server would; returns each key's final state and error.
fn send_now(
    conn: &mut dyn Sql,
    mails: &[KeyMail],
    smtp: mail::Settings,
) -> Result<HashMap<i64, (String, Option<String>)>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the mailer: {e}"))?;
    let outcome = RefCell::new(HashMap::new());
    // Both the record and the check below use the connection, never at once.
    let conn = RefCell::new(conn);
    let conn = &conn;
    let transports = mail::Transports::default();
    let outcomes = &outcome;
    runtime.block_on(async {
        let mut settings = smtp;
        for m in mails {
            eprintln!("mailing key {} to {}", m.key_id, m.email);
            let id = m.key_id;
            let record = |a: mail::Attempt| async move {
                let written = crate::store::mail::record(
                    &mut **conn.borrow_mut(),
                    m,
                    a.status,
                    a.attempts,
                    a.error.as_deref(),
                    now_unix(),
                );
                if let Err(e) = written {
                    eprintln!("cannot record the mail of key {id}: {e}");
                }
                outcomes
                    .borrow_mut()
                    .insert(id, (a.status.to_string(), a.error));
            };
            let current = || async {
                crate::store::mail::current(&mut **conn.borrow_mut(), m).unwrap_or(true)
            };
            let config = || Some(settings.clone());
            mail::deliver(m, &transports, config, current, record, |_| {}).await;
            // One mail given up: the server is down; the rest get one try each, so
            // the command does not wait out the whole backoff once per key.
            if outcomes
                .borrow()
                .get(&id)
                .is_some_and(|(s, _)| s == "failed")
            {
                settings.0.retries = 0;
            }
        }
    });
    Ok(outcome.into_inner())
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
    role: String,
    #[arg(long, default_value = "default")]
    group: String,
    #[arg(long)]
    email: Option<String>,
    /// Money per calendar month (UTC).
    #[arg(long)]
    monthly_budget: Option<f64>,
    /// Prepaid balance.
    #[arg(long)]
    balance: Option<f64>,
    /// RFC 3339 time or YYYY-MM-DD.
    #[arg(long)]
    expires_at: Option<String>,
    /// Models granted to the key, comma-separated (`*` for all).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
}

impl CreateArgs {
    fn into_new_key(self) -> NewKey {
        NewKey {
            // The parser admits only `user` and `admin`.
            role: Role::parse(&self.role).unwrap_or(Role::User),
            name: self.name,
            group: self.group,
            email: self.email,
            monthly_budget: self.monthly_budget,
            balance: self.balance,
            expires_at: self.expires_at,
            models: self.models,
        }
    }
}

pub fn keys(config: &Path, action: KeysAction) -> Result<String, String> {
    let (_, rt) = crate::server::load(config)?;
    let mut conn = Target::of(&rt.file.storage).open()?;
    let conn = &mut *conn;
    let err = |e: weir_filters::GatewayError| e.to_string();
    let out = match action {
        KeysAction::Create(args) => {
            let new = args.into_new_key();
            let (id, secret) = ops::create_key(conn, &new, now_unix()).map_err(err)?;
            json!({"id": id, "key": secret, "note": "shown this once; weir keeps only its hash"})
        }
        KeysAction::List => {
            let snap = ops::load_snapshot(conn).map_err(err)?;
            let money =
                ops::load_money(conn, crate::accounts::month_of(now_unix())).map_err(err)?;
            let mut keys: Vec<_> = snap.keys_by_id.values().collect();
            keys.sort_by_key(|k| k.id);
            let rows: Vec<_> = keys
                .iter()
                .map(|k| {
                    json!({
                        "id": k.id, "name": k.name, "role": k.role.as_str(), "group": k.group,
                        "prefix": k.prefix, "active": k.active, "models": k.models,
                        "monthly_budget": k.monthly_budget,
                        "spent_this_month": money.spent.get(&k.id).copied().unwrap_or(0.0),
                        "balance": money.balances.get(&k.id).copied().flatten(),
                    })
                })
                .collect();
            json!({"keys": rows})
        }
        KeysAction::Reset { id } => {
            let secret = ops::reset_key(conn, id).map_err(err)?;
            json!({"id": id, "key": secret, "note": "the old key no longer works"})
        }
        KeysAction::Topup { id, amount } => {
            let balance = ops::top_up(conn, id, amount).map_err(err)?;
            if let Some(redis) = &rt.file.storage.redis {
                // The store has it; Redis must too, or instances keep refusing.
                if let Err(e) = crate::shared::admission::top_up_now(redis, id, amount) {
                    eprintln!(
                        "the store has the top-up, Redis not ({e}): delete `{}bal:{id}` there (it is seeded again from the store)",
                        redis.prefix
                    );
                }
            }
            json!({"id": id, "balance": balance})
        }
        KeysAction::Import(args) => {
            let smtp = rt
                .file
                .smtp
                .clone()
                .map(|s| (s, rt.file.server.ca_file.clone()));
            import(conn, args, smtp)?
        }
    };
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
pub enum ImportAction {
    /// Channels (and with --tokens, tokens as keys) from a One API or New API
    /// database: `mysql://user:pass@host:3306/oneapi`, One API's own
    /// `user:pass@tcp(host:3306)/oneapi`, or `sqlite:PATH`.
    OneApi(OneApiArgs),
}

#[derive(Args)]
pub struct OneApiArgs {
    dsn: String,
    /// Show the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also import tokens as keys (stored hashed; clients keep their keys).
    #[arg(long)]
    tokens: bool,
    /// Channels are named `{prefix}-{source id}` (default: one-api or new-api).
    #[arg(long)]
    prefix: Option<String>,
}

/// `weir import one-api DSN`: the same plan and report as `POST /admin/import/one-api`,
/// written straight to the store file (a running gateway takes it up within a second).
pub fn import_from(config: &Path, action: ImportAction) -> Result<String, String> {
    let ImportAction::OneApi(args) = action;
    let (_, rt) = crate::server::load(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the reader: {e}"))?;
    let source = runtime
        .block_on(crate::one_api::read(&args.dsn, args.tokens))
        .map_err(|e| e.to_string())?;
    let plan = crate::one_api::plan(source, args.prefix.as_deref()).map_err(|e| e.to_string())?;
    let storage = &rt.file.storage;
    let sealer = storage
        .secret_key
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(crate::store::sealed::Sealer::new)
        .transpose()?;
    let mut conn = Target::of(storage).open()?;
    let done = crate::store::one_api::apply(
        &mut *conn,
        &plan,
        sealer.as_ref(),
        &rt.file,
        args.dry_run,
        now_unix(),
    )
    .map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&done.report).map_err(|e| e.to_string())
}
