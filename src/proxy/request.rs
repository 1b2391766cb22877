//! A request once intake knows its gateway and endpoint: what every later step reads.

use std::net::IpAddr;
use std::sync::Arc;
use weir_filters::config::{Gateway, Runtime};
use weir_filters::route::Endpoint;

/// A request whose gateway and endpoint are known.
pub struct Request<'a> {
    /// The config snapshot the request runs on from start to end.
    pub snap: &'a Arc<Runtime>,
    pub gateway: &'a Gateway,
    pub endpoint: Endpoint,
    /// Path after `/v1`, with the query to forward (a key in the query removed).
    pub rest: String,
    /// The body field that carries the key, for `body:` gateways.
    pub body_key: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    /// The client speaks Anthropic's Messages API: its own body (the request
    /// itself goes on as its chat translation).
    pub anthropic: Option<AnthropicIn>,
}

/// A Messages client's request as it sent it.
pub struct AnthropicIn {
    pub raw: bytes::Bytes,
    /// `count_tokens`: counted, not answered.
    pub count_only: bool,
    /// Its path after the gateway, with the query.
    pub rest: String,
}
