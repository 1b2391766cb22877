//! weir's request and response logic, phase by phase, as plain functions over plain
//! data. Nothing here touches a socket; the Pingora glue in the `weir` crate calls it.
//!
//! | module | phase |
//! |---|---|
//! | `route` | `request_filter`: gateway and endpoint |
//! | `auth` | `request_filter`: key position, database/regex/JWT checks |
//! | `access` | `request_filter`: allow and deny lists |
//! | `limits` | `request_filter`: rate-limit rules and windows |
//! | `request_body` | `request_body_filter`: parse, map, rewrite |
//! | `upstream_peer` | `upstream_peer`: channel order, retries, failover |
//! | `upstream_request` | `upstream_request_filter`: the request's bytes on the wire |
//! | `health` | passive health of channels and keys |
//! | `response_body` | `response_body_filter`: SSE tap, usage |
//! | `usage` | token counts and estimates |
//! | `mock` | the built-in `mock` channel |

pub mod access;
pub mod adapters;
pub mod auth;
pub mod cache_key;
pub mod config;
pub mod error;
pub mod failover;
pub mod health;
pub mod json_scan;
pub mod limits;
pub mod mock;
pub mod request_body;
pub mod response_body;
pub mod route;

pub mod upstream_request;
pub mod usage;

pub use error::GatewayError;
