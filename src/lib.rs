//! weir: an OpenAI-compatible LLM gateway on Pingora.
//!
//! `server` wires the Pingora services; `proxy` is the `ProxyHttp` glue, one file per
//! phase; the per-phase logic itself lives in the `weir_filters` crate.

pub mod accounts;
pub mod admin_backend;
pub mod cache;
pub mod cli;
pub mod dns;
pub mod health;
pub mod logbuf;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod state;
pub mod store;
