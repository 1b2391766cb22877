//! `weir keys …`: key management from a shell, straight on the store file.

use crate::accounts::now_unix;
use crate::store::{ops, schema};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::Path;
use weir_filters::accounts::{NewKey, Role};
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
fn import(conn: &mut rusqlite::Connection, args: ImportArgs) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let (found, unreadable) = people::parse(&bytes).map_err(|e| e.to_string())?;
    let options = ImportOptions {
        group: args.group,
        models: args.models,
        monthly_budget: args.monthly_budget,
        dry_run: args.dry_run,
    };
    let done = ops::import_keys(conn, &found, &options, now_unix()).map_err(|e| e.to_string())?;
    Ok(crate::admin_backend::imported_view(
        done,
        unreadable,
        options.dry_run,
    ))
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
    let mut conn = schema::open(&rt.file.storage.sqlite)?;
    let err = |e: weir_filters::GatewayError| e.to_string();
    let out = match action {
        KeysAction::Create(args) => {
            let new = args.into_new_key();
            let (id, secret) = ops::create_key(&mut conn, &new, now_unix()).map_err(err)?;
            json!({"id": id, "key": secret, "note": "shown this once; weir keeps only its hash"})
        }
        KeysAction::List => {
            let snap = ops::load_snapshot(&conn).map_err(err)?;
            let money =
                ops::load_money(&conn, crate::accounts::month_of(now_unix())).map_err(err)?;
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
            let secret = ops::reset_key(&mut conn, id).map_err(err)?;
            json!({"id": id, "key": secret, "note": "the old key no longer works"})
        }
        KeysAction::Topup { id, amount } => {
            let balance = ops::top_up(&mut conn, id, amount).map_err(err)?;
            json!({"id": id, "balance": balance})
        }
        KeysAction::Import(args) => import(&mut conn, args)?,
    };
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}
