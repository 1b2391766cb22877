//! weir: an OpenAI-compatible LLM gateway on Pingora.
//!
//! `server` wires the Pingora services; `proxy` is weir's HTTP application, one file
//! per step of a request's story (see `proxy/mod.rs`); the rules each step applies
//! live in the `weir_filters` crate. Feature IDs (P3, G4, K5…) are defined in
//! `docs/requirements.md`.

/// Maps on the request path: keys are config names, key hashes and ids, not data an
/// attacker can shape into collisions cheaply, and SipHash was ~2% of the profile.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub mod accounts;
pub mod admin_backend;
pub mod cache;
pub mod cli;
pub mod dns;
pub mod listeners;
pub mod logbuf;
pub mod mail;
pub mod metrics;
pub mod one_api;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod shared;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod tls;
