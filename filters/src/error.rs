//! The one error type a client can see. Every variant knows its HTTP status and
//! serialises to OpenAI's error JSON, so no code path invents its own error shape.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A field of the body the provider would refuse, named as OpenAI names it
    /// (`messages[0].content`), with OpenAI's code (`invalid_type`, `invalid_value`,
    /// `missing_required_parameter`, `empty_array`).
    #[error("{message}")]
    InvalidParam {
        param: String,
        code: &'static str,
        message: String,
    },
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// 431: the header section is too large or has too many fields.
    #[error("{0}")]
    HeaderTooLarge(String),
    /// A head that could be read two ways (request smuggling).
    #[error("{0}")]
    AmbiguousFraming(String),
    #[error("unknown route {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the model `{0}` does not exist or is not served by this gateway")]
    ModelNotFound(String),
    #[error("gateway `{0}` is disabled")]
    GatewayInactive(String),
    #[error("gateway `{0}` expired")]
    GatewayExpired(String),
    /// Nothing could be tried: every candidate is cooling down.
    #[error("no channel is available for model `{model}`: {detail}")]
    NoChannelAvailable {
        model: String,
        detail: String,
        retry_after_secs: u64,
    },
    /// Every candidate was tried and each one failed.
    #[error("all upstream attempts failed for model `{model}`: {detail}")]
    UpstreamFailed { model: String, detail: String },
    /// Every attempt ended in a 429 from the upstream.
    #[error("upstream rate limit for model `{model}`: {detail}")]
    UpstreamRateLimited {
        model: String,
        detail: String,
        retry_after_secs: u64,
    },
    #[error("upstream timed out for model `{model}`: {detail}")]
    UpstreamTimeout { model: String, detail: String },
    /// A graceful stop's grace period ended before the upstream answered: retry
    /// (another instance, or this one once restarted).
    #[error("weir is stopping: {0}")]
    ShuttingDown(String),
    /// Docking (A6): the upstream could not be reached or said nothing usable.
    #[error("{0}")]
    DockingFailed(String),
    #[error("admin authentication failed: {0}")]
    AdminUnauthorized(String),
    /// Too many failed sign-ins from this address (`lockout`).
    #[error("too many failed authentications from this address; retry after {retry_after_secs}s")]
    TooManyAuthFailures { retry_after_secs: u64 },
    /// No key, or a key that is wrong, expired or disabled.
    #[error("{0}")]
    InvalidKey(String),
    /// The caller is known but this is not theirs to do.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("rate limit reached: {rule}; retry after {retry_after_secs}s")]
    RateLimited {
        rule: String,
        retry_after_secs: u64,
        limit: u64,
        reset_secs: u64,
    },
    #[error("gateway `{gateway}` used its token quota of {quota}")]
    QuotaExceeded { gateway: String, quota: u64 },
    #[error("this key spent its monthly budget of {budget:.2}")]
    BudgetExceeded { budget: f64 },
    #[error("this key's balance is used up ({balance:.4}); top it up to continue")]
    InsufficientBalance { balance: f64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the model `{0}` takes text only (multimodal: false); send the image or audio to a multimodal model")]
    ModelNotMultimodal(String),
    /// An entity of the YAML file: read-only through the API.
    #[error("`{0}` is defined in the config file; change it there (the API changes only what it created)")]
    DefinedInFile(String),
    /// Content safety refused the request (a deny rule or the moderation endpoint).
    #[error("{0}")]
    ContentFiltered(String),
    /// The moderation endpoint could not judge and `on_error` is `closed`.
    #[error("{0}")]
    ModerationUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            BadRequest(_) | InvalidJson(_) | InvalidParam { .. } | AmbiguousFraming(_) => 400,
            HeaderTooLarge(_) => 431,
            AdminUnauthorized(_) | InvalidKey(_) => 401,
            InsufficientBalance { .. } => 402,
            GatewayInactive(_) | GatewayExpired(_) | Forbidden { .. } => 403,
            RouteNotFound { .. } | ModelNotFound(_) | NotFound(_) => 404,
            Conflict(_) | DefinedInFile(_) => 409,
            ModelNotMultimodal(_) | ContentFiltered(_) => 400,
            RateLimited { .. } | QuotaExceeded { .. } | BudgetExceeded { .. } => 429,
            TooManyAuthFailures { .. } => 429,
            MethodNotAllowed { .. } => 405,
            BodyTooLarge { .. } => 413,
            UpstreamRateLimited { .. } => 429,
            Internal(_) => 500,
            UpstreamFailed { .. } | DockingFailed(_) => 502,
            NoChannelAvailable { .. } | ShuttingDown(_) | ModerationUnavailable(_) => 503,
            UpstreamTimeout { .. } => 504,
        }
    }

    /// OpenAI's `error.type`.
    pub fn kind(&self) -> &'static str {
        use GatewayError::*;
        match self {
            BadRequest(_)
            | InvalidJson(_)
            | InvalidParam { .. }
            | HeaderTooLarge(_)
            | AmbiguousFraming(_)
            | BodyTooLarge { .. }
            | RouteNotFound { .. }
            | MethodNotAllowed { .. }
            | ModelNotFound(_)
            | NotFound(_)
            | Conflict(_)
            | DefinedInFile(_)
            | ContentFiltered(_)
            | ModelNotMultimodal(_) => "invalid_request_error",
            AdminUnauthorized(_) | InvalidKey(_) => "authentication_error",
            GatewayInactive(_) | GatewayExpired(_) | Forbidden { .. } => "permission_error",
            UpstreamRateLimited { .. } | RateLimited { .. } | TooManyAuthFailures { .. } => {
                "rate_limit_error"
            }
            QuotaExceeded { .. } | BudgetExceeded { .. } | InsufficientBalance { .. } => {
                "insufficient_quota"
            }
            NoChannelAvailable { .. }
            | UpstreamFailed { .. }
            | UpstreamTimeout { .. }
            | DockingFailed(_) => "upstream_error",
            Internal(_) | ShuttingDown(_) | ModerationUnavailable(_) => "server_error",
        }
    }

    /// OpenAI's `error.code`: a stable machine-readable name.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            BadRequest(_) => "bad_request",
            InvalidJson(_) => "invalid_json",
            InvalidParam { code, .. } => code,
            BodyTooLarge { .. } => "request_too_large",
            HeaderTooLarge(_) => "request_header_too_large",
            AmbiguousFraming(_) => "invalid_framing",
            RouteNotFound { .. } => "unknown_url",
            MethodNotAllowed { .. } => "method_not_allowed",
            ModelNotFound(_) => "model_not_found",
            GatewayInactive(_) => "gateway_inactive",
            GatewayExpired(_) => "gateway_expired",
            NoChannelAvailable { .. } => "no_channel_available",
            UpstreamFailed { .. } => "upstream_failed",
            DockingFailed(_) => "docking_failed",
            UpstreamRateLimited { .. } => "upstream_rate_limited",
            UpstreamTimeout { .. } => "upstream_timeout",
            AdminUnauthorized(_) => "invalid_admin_key",
            InvalidKey(_) => "invalid_api_key",
            Forbidden { code, .. } => code,
            RateLimited { .. } => "rate_limit_exceeded",
            TooManyAuthFailures { .. } => "too_many_auth_failures",
            QuotaExceeded { .. } => "token_quota_exceeded",
            BudgetExceeded { .. } => "budget_exceeded",
            InsufficientBalance { .. } => "insufficient_balance",
            NotFound(_) => "not_found",
            Conflict(_) => "conflict",
            DefinedInFile(_) => "defined_in_file",
            ModelNotMultimodal(_) => "model_not_multimodal",
            Internal(_) => "internal_error",
            ShuttingDown(_) => "shutting_down",
            ContentFiltered(_) => "content_filter",
            ModerationUnavailable(_) => "moderation_unavailable",
        }
    }

    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::ModelNotFound(_) => Some("model"),
            GatewayError::InvalidParam { param, .. } => Some(param),
            _ => None,
        }
    }

    /// Seconds a client should wait, for the errors where waiting helps.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::NoChannelAvailable {
                retry_after_secs, ..
            }
            | GatewayError::UpstreamRateLimited {
                retry_after_secs, ..
            }
            | GatewayError::RateLimited {
                retry_after_secs, ..
            }
            | GatewayError::TooManyAuthFailures { retry_after_secs } => {
                Some((*retry_after_secs).max(1))
            }
            _ => None,
        }
    }

    /// `x-ratelimit-*` headers (OpenAI's names) for a rate-limit refusal.
    pub fn rate_limit_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            GatewayError::RateLimited {
                limit, reset_secs, ..
            } => vec![
                ("x-ratelimit-limit-requests", limit.to_string()),
                ("x-ratelimit-remaining-requests", "0".to_string()),
                ("x-ratelimit-reset-requests", format!("{reset_secs}s")),
            ],
            _ => Vec::new(),
        }
    }

    /// The OpenAI-shaped JSON body: `{"error":{"message","type","param","code"}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorInner {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: self.code(),
            },
        };
        // Serialising a struct of strings cannot fail; fall back to a fixed body anyway.
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#.to_vec()
        })
    }

    /// The same error as one SSE event, for a stream that breaks after its headers went out.
    pub fn to_sse_event(&self) -> Vec<u8> {
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(&self.to_json());
        out.extend_from_slice(b"\n\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_openai_shape() {
        let e = GatewayError::ModelNotFound("gpt-9".into());
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
        assert_eq!(e.status(), 404);
    }

    #[test]
    fn statuses_match_the_spec() {
        assert_eq!(GatewayError::BodyTooLarge { limit: 1 }.status(), 413);
        let failed = GatewayError::UpstreamFailed {
            model: "m".into(),
            detail: "x".into(),
        };
        assert_eq!(failed.status(), 502);
        let none = GatewayError::NoChannelAvailable {
            model: "m".into(),
            detail: "x".into(),
            retry_after_secs: 0,
        };
        assert_eq!(none.status(), 503);
        assert_eq!(none.retry_after(), Some(1));
    }

    #[test]
    fn sse_event_is_one_data_line() {
        let e = GatewayError::Internal("boom".into());
        let ev = e.to_sse_event();
        assert!(ev.starts_with(b"data: {\"error\""));
        assert!(ev.ends_with(b"\n\n"));
    }
}
