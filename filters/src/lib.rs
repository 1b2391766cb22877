//! weir's request and response logic as plain functions and types over plain data.
//! Nothing here touches a socket; the steps in the `weir` crate's `proxy` call it
//! (`docs/requirements.md` defines the feature IDs).
//!
//! | module | what | used by |
//! |---|---|---|
//! | `accounts` | keys, roles, groups, models as data, usage queries, their checks | store, admin, CLI |
//! | `calllog` | call log queries, cursors, what of a failed call is kept | admin, store, `logging` |
//! | `config` | the YAML, parsed whole, validated, indexed for the request path | everything |
//! | `route` | gateway and endpoint of a request | `intake` |
//! | `auth` | key position, database/regex/JWT checks | `admission` |
//! | `access` | allow and deny lists | `admission` |
//! | `limits` | rate-limit rules and windows | `admission` |
//! | `rolling` | exact rolling windows as admission logs (not wired yet, issue 13) | — |
//! | `request_body` | parse, map, rewrite the body | `call`, `bodies` |
//! | `cache_key` | what makes two requests the same | `cached` |
//! | `failover` | channel order, retries, health trials, the final error | `dispatch` |
//! | `health` | passive health of channels and keys, and their registry | `dispatch`, `relay` |
//! | `adapters` | providers (OpenAI, Azure, Anthropic, Gemini) behind one trait | `exchange`, `relay` |
//! | `upstream_request` | the request's bytes on the wire | `exchange` |
//! | `response_body` | SSE tap, usage in answers | `relay` |
//! | `usage` | token counts and estimates | `relay`, `logging` |
//! | `mock` | the built-in `mock` channel | `exchange` |
//! | `feishu` | the Feishu bot's events: decryption, signature, questions, replies | `proxy::feishu` |
//! | `one_api` | what a One API / New API channel or token becomes in weir | admin, CLI |
//! | `people`, `key_mail` | bulk key import: CSV rows, the mail a key goes out in | admin, CLI, `mail` |

pub mod access;
pub mod accounts;
pub mod adapters;
pub mod auth;
pub mod cache_key;
pub mod calllog;
pub mod chunk_text;
pub mod client_addr;
pub mod config;
pub mod error;
pub mod failover;
pub mod feishu;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod json_scan;
pub mod key_mail;
pub mod limits;
pub mod lockout;
pub mod masking;
pub mod mock;
pub mod multipart;
pub mod one_api;
pub mod people;
pub mod request_body;
pub mod response_body;
pub mod rolling;
pub mod route;
pub mod safety;
pub mod shape;
pub mod upstream_request;
pub mod usage;

pub use error::GatewayError;
