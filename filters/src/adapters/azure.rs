//! Azure OpenAI: OpenAI's wire format on a deployment URL,
//! `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…`, with
//! the key in an `api-key` header. The deployment is the upstream model name (map
//! client names to deployments with `model_mapping`). Answers are OpenAI's.

use super::{base_path, Incoming, Outgoing, Provider};
use crate::config::{Channel, Upstream};
use crate::route::Endpoint;
use crate::GatewayError;

/// A GA version that has chat, completions, embeddings and streaming usage.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// Azure OpenAI: OpenAI's bodies on deployment URLs.
pub struct Azure;

impl Provider for Azure {
    fn supports(&self, endpoint: Endpoint) -> bool {
        matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
        )
    }

    /// The deployment is the upstream model name.
    fn prepare(&self, channel: &Channel, req: Incoming) -> Result<Outgoing, GatewayError> {
        // A byte search first: the body is otherwise passed without parsing.
        let may_search = memchr::memmem::find(&req.body, b"\"web_search_options\"").is_some();
        if req.endpoint == Endpoint::ChatCompletions && may_search {
            let body = super::request::parse_json(&req.body)?;
            if super::features::search(&body).is_some() {
                return Err(GatewayError::InvalidParam {
                    param: "web_search_options".into(),
                    code: "unsupported_parameter",
                    message: format!(
                        "web search is not available through the Azure channel `{}`; route the model to an OpenAI, Anthropic or Gemini channel",
                        channel.name
                    ),
                });
            }
        }
        let op = match req.endpoint {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            _ => req
                .rest
                .split('?')
                .next()
                .unwrap_or("")
                .trim_start_matches('/'),
        };
        let version = channel
            .api_version
            .as_deref()
            .unwrap_or(DEFAULT_API_VERSION);
        let deployment = form_urlencoded::byte_serialize(req.upstream_model.as_bytes());
        let deployment: String = deployment.collect();
        let version: String = form_urlencoded::byte_serialize(version.as_bytes()).collect();
        let base = base_path(channel);
        Ok(Outgoing {
            path: format!("{base}/openai/deployments/{deployment}/{op}?api-version={version}"),
            headers: req
                .key
                .map(|k| vec![("api-key", k.to_string())])
                .unwrap_or_default(),
            body: req.body,
        })
    }

    /// The data plane (what a key opens) no longer lists deployments: that moved to
    /// Azure Resource Manager, which wants an Entra ID token, not an `api-key`. Its
    /// `/openai/models` lists base models the resource could deploy, whose names
    /// are not what a request must name, so docking it would make wrong channels.
    fn models_request(&self, _: &Upstream, _: Option<&str>) -> Result<Outgoing, GatewayError> {
        Err(GatewayError::BadRequest(
            "Azure OpenAI deployments cannot be listed with an API key (only through \
             Azure Resource Manager); name the channel's deployments in `models`"
                .into(),
        ))
    }

    fn parse_models(&self, _: &[u8]) -> Option<Vec<String>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, ChannelType};
    use bytes::Bytes;

    #[test]
    fn builds_the_deployment_url() {
        let rt = parse("channels:\n  - {name: az, type: azure, base_url: 'https://res.openai.azure.com', models: [gpt-4o], api_version: '2024-06-01'}\n").unwrap();
        let ch = &rt.channels[0];
        assert_eq!(ch.kind, ChannelType::Azure);
        let out = super::super::prepare(
            ch,
            Endpoint::ChatCompletions,
            "/chat/completions",
            Bytes::from_static(b"{}"),
            "my-gpt4o",
            Some("azkey"),
        )
        .unwrap();
        assert_eq!(
            out.path,
            "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-06-01"
        );
        assert_eq!(out.headers, vec![("api-key", "azkey".to_string())]);
        let out = super::super::prepare(
            ch,
            Endpoint::Embeddings,
            "/embeddings",
            Bytes::new(),
            "emb",
            None,
        )
        .unwrap();
        assert!(out.path.starts_with("/openai/deployments/emb/embeddings?"));
    }

    #[test]
    fn deployments_are_not_listable_with_a_key() {
        let up = crate::config::Upstream::parse("https://res.openai.azure.com").unwrap();
        let err = super::super::models_request(ChannelType::Azure, &up, Some("azkey"));
        let Err(GatewayError::BadRequest(message)) = err else {
            panic!("{err:?}");
        };
        assert!(message.contains("`models`"), "{message}");
        let list = br#"{"data":[{"id":"gpt-4o-2024-08-06","object":"model"}],"object":"list"}"#;
        assert_eq!(super::super::parse_models(ChannelType::Azure, list), None);
    }
}
