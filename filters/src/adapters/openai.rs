//! OpenAI and every OpenAI-compatible upstream (vLLM, llama.cpp, Ollama, …), and
//! the built-in `mock`: requests go as they came, to `{base}/v1{rest}` with the key
//! as a bearer token, and answers are already OpenAI's. These functions are also
//! the [`Provider`] defaults, which is why `OpenAi` itself overrides nothing.

use super::{Incoming, Outgoing, Provider};
use serde_json::Value;

/// OpenAI's wire format, unchanged.
pub struct OpenAi;

impl Provider for OpenAi {}

/// `authorization: Bearer {key}`, the header OpenAI-compatible servers read.
pub(crate) fn bearer(key: Option<&str>) -> Vec<(&'static str, String)> {
    key.map(|k| vec![("authorization", format!("Bearer {k}"))])
        .unwrap_or_default()
}

pub(crate) fn prepare(base: &str, req: Incoming) -> Outgoing {
    Outgoing {
        path: format!("{base}/v1{}", req.rest),
        headers: bearer(req.key),
        body: req.body,
    }
}

/// `GET /v1/models`: every model the key can use, in one answer (no paging).
pub(crate) fn models_request(base: &str, key: Option<&str>) -> Outgoing {
    Outgoing::get(format!("{base}/v1/models"), bearer(key))
}

/// `{"object": "list", "data": [{"id": …}, …]}` → the ids. Anthropic's list has
/// the same `data[].id` shape.
pub(crate) fn parse_models(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let ids = v
        .get("data")?
        .as_array()?
        .iter()
        .filter_map(|m| m.get("id").and_then(|i| i.as_str()))
        .map(str::to_string)
        .collect();
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::super::{parse_models, prepare, provider};
    use crate::config::{parse, ChannelType, Upstream};
    use crate::route::Endpoint;
    use bytes::Bytes;

    #[test]
    fn requests_go_as_they_came_with_a_bearer_key() {
        let rt = parse("channels:\n  - {name: o, type: openai, base_url: 'http://llm:8000/proxy/v1', models: [m]}\n").unwrap();
        let body = Bytes::from_static(b"{\"model\":\"m\"}");
        let out = prepare(
            &rt.channels[0],
            Endpoint::Embeddings,
            "/embeddings?x=1",
            body.clone(),
            "upstream-m",
            Some("sk-1"),
        )
        .unwrap();
        assert_eq!(out.path, "/proxy/v1/embeddings?x=1");
        assert_eq!(
            out.headers,
            vec![("authorization", "Bearer sk-1".to_string())]
        );
        assert_eq!(out.body, body);
    }

    #[test]
    fn models_list_reads_data_ids() {
        let up = Upstream::parse("https://api.openai.com/v1").unwrap();
        let openai = provider(ChannelType::Openai);
        let req = openai.models_request(&up, Some("sk-1")).unwrap();
        assert_eq!(req.path, "/v1/models");
        assert_eq!(
            req.headers,
            vec![("authorization", "Bearer sk-1".to_string())]
        );
        assert!(req.body.is_empty());
        // Shaped as the documented `GET /v1/models` answer.
        let body = br#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"},{"id":"text-embedding-3-small","object":"model","created":1705948997,"owned_by":"system"},{"object":"model"}]}"#;
        assert_eq!(
            parse_models(ChannelType::Openai, body).unwrap(),
            ["gpt-4o-mini", "text-embedding-3-small"]
        );
        assert_eq!(
            parse_models(ChannelType::Mock, b"{\"data\":[]}"),
            Some(vec![])
        );
        assert_eq!(parse_models(ChannelType::Openai, b"<html>"), None);
        assert_eq!(parse_models(ChannelType::Openai, b"{\"models\":[]}"), None);
    }
}
