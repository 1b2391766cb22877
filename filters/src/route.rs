//! Routing (G1, P1): which endpoint of a gateway a request is for.

use crate::error::GatewayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// `GET /models`: answered by the gateway.
    ListModels,
    /// `GET /models/{id}`: answered by the gateway.
    GetModel,
    /// Anthropic's Messages API (`POST /messages`), served by any channel.
    Messages,
    /// `POST /messages/count_tokens`.
    CountTokens,
    /// OpenAI's Responses API (`POST /responses`), served by any channel.
    Responses,
    /// `GET`/`DELETE` of anything else (files, batches): to the gateway's
    /// `passthrough` channel, verbatim.
    Forward,
    /// Any other `POST` under the gateway: routed by the body's `model`, passed through.
    Other,
}

impl Endpoint {
    /// Whether the client speaks Anthropic's Messages API (and reads its errors).
    pub fn speaks_anthropic(self) -> bool {
        matches!(self, Endpoint::Messages | Endpoint::CountTokens)
    }

    /// Whether a streamed answer is SSE in OpenAI's chunk format.
    pub fn streams_chunks(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::ListModels => "list_models",
            Endpoint::GetModel => "get_model",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Responses => "responses",
            Endpoint::Forward => "forward",
            Endpoint::Other => "other",
        }
    }
}

/// `rest` is the path after the gateway prefix, e.g. `/chat/completions`.
pub fn classify(method: &str, rest: &str, full_path: &str) -> Result<Endpoint, GatewayError> {
    let not_found = || GatewayError::RouteNotFound {
        method: method.to_string(),
        path: full_path.to_string(),
    };
    let wrong_method = || GatewayError::MethodNotAllowed {
        method: method.to_string(),
        path: full_path.to_string(),
    };
    let rest = rest.trim_end_matches('/');
    let post_only = |e: Endpoint| {
        if method == "POST" {
            Ok(e)
        } else {
            Err(wrong_method())
        }
    };
    match rest {
        "/chat/completions" => post_only(Endpoint::ChatCompletions),
        "/completions" => post_only(Endpoint::Completions),
        "/embeddings" => post_only(Endpoint::Embeddings),
        "/messages" => post_only(Endpoint::Messages),
        "/messages/count_tokens" => post_only(Endpoint::CountTokens),
        "/responses" => post_only(Endpoint::Responses),
        "/models" => match method {
            "GET" => Ok(Endpoint::ListModels),
            _ => Err(wrong_method()),
        },
        r if r.starts_with("/models/") && r.len() > "/models/".len() => match method {
            "GET" => Ok(Endpoint::GetModel),
            _ => Err(wrong_method()),
        },
        "" => Err(not_found()),
        // Other paths go upstream verbatim: nothing that could climb out of `/v1`.
        r if !is_plain_path(r) => Err(not_found()),
        _ if method == "POST" => Ok(Endpoint::Other),
        _ if method == "GET" || method == "DELETE" => Ok(Endpoint::Forward),
        _ => Err(not_found()),
    }
}

/// Segments of letters, digits and `-_.:`, none of them `.` or `..`, no escapes.
fn is_plain_path(rest: &str) -> bool {
    rest.strip_prefix('/').is_some_and(|r| {
        r.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_openai_paths() {
        for (method, rest, path, want) in [
            (
                "POST",
                "/chat/completions",
                "/v1/chat/completions",
                Endpoint::ChatCompletions,
            ),
            (
                "POST",
                "/completions/",
                "/v1/completions/",
                Endpoint::Completions,
            ),
            ("POST", "/embeddings", "", Endpoint::Embeddings),
            ("GET", "/models", "", Endpoint::ListModels),
            ("GET", "/models/gpt-4o", "", Endpoint::GetModel),
            ("POST", "/audio/speech", "", Endpoint::Other),
        ] {
            assert_eq!(
                classify(method, rest, path).unwrap(),
                want,
                "{method} {rest}"
            );
        }
    }

    #[test]
    fn rejects_wrong_methods_and_unknown_paths() {
        assert_eq!(
            classify("GET", "/chat/completions", "/v1/chat/completions")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            classify("POST", "/models", "/v1/models")
                .unwrap_err()
                .status(),
            405
        );
        // What names no model goes to the gateway's passthrough channel.
        assert_eq!(
            classify("GET", "/files", "/v1/files").unwrap(),
            Endpoint::Forward
        );
        assert_eq!(
            classify("DELETE", "/files/f-1", "/v1/files/f-1").unwrap(),
            Endpoint::Forward
        );
        assert_eq!(
            classify("PUT", "/files", "/v1/files").unwrap_err().status(),
            404
        );
        assert_eq!(
            classify("GET", "/../x", "/v1/../x").unwrap_err().status(),
            404
        );
        assert_eq!(classify("POST", "", "/v1").unwrap_err().status(), 404);
        for bad in [
            "/../admin",
            "/a/../../x",
            "/%2e%2e/x",
            "/a//b",
            "/a/./b",
            "/a\\b",
        ] {
            assert_eq!(
                classify("POST", bad, bad).unwrap_err().status(),
                404,
                "{bad}"
            );
        }
        assert_eq!(
            classify("POST", "/responses", "").unwrap(),
            Endpoint::Responses
        );
        assert_eq!(
            classify("POST", "/audio/speech", "").unwrap(),
            Endpoint::Other
        );
    }
}
