//! A request once intake knows its gateway and endpoint: what every later step reads.

use std::net::IpAddr;
use std::sync::Arc;
use weir_filters::config::{ChannelType, Gateway, Runtime};
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
    /// The client speaks another API than chat completions (Messages,
    /// Responses): its own request (the request itself goes on as chat).
    pub inbound: Option<Inbound>,
}

/// The API a client speaks when it is not OpenAI's chat completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Anthropic's Messages API.
    Messages,
    /// OpenAI's Responses API.
    Responses,
}

impl Dialect {
    /// The channels that take such a request as it is.
    pub fn native_kind(self) -> ChannelType {
        match self {
            Dialect::Messages => ChannelType::Anthropic,
            Dialect::Responses => ChannelType::Openai,
        }
    }

    /// The endpoint a native call asks for.
    pub fn endpoint(self) -> Endpoint {
        match self {
            Dialect::Messages => Endpoint::Messages,
            Dialect::Responses => Endpoint::Responses,
        }
    }
}

/// A request in another API, as the client sent it.
pub struct Inbound {
    pub dialect: Dialect,
    pub raw: bytes::Bytes,
    /// `count_tokens`: counted, not answered.
    pub count_only: bool,
    /// Its path after the gateway, with the query.
    pub rest: String,
    /// What its chat translation could not carry: the request is refused
    /// unless a channel takes it natively.
    pub untranslatable: Option<weir_filters::GatewayError>,
}
