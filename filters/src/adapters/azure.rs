//! Azure OpenAI: OpenAI's wire format on a deployment URL,
//! `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…`, with
//! the key in an `api-key` header. The deployment is the upstream model name (map
//! client names to deployments with `model_mapping`).

use super::Outgoing;
use crate::config::Channel;
use crate::route::Endpoint;
use crate::GatewayError;
use bytes::Bytes;

/// A GA version that has chat, completions, embeddings and streaming usage.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

pub fn prepare(
    channel: &Channel,
    base: &str,
    endpoint: Endpoint,
    rest: &str,
    body: Bytes,
    deployment: &str,
    key: Option<&str>,
) -> Result<Outgoing, GatewayError> {
    let op = match endpoint {
        Endpoint::ChatCompletions => "chat/completions",
        Endpoint::Completions => "completions",
        Endpoint::Embeddings => "embeddings",
        _ => rest.split('?').next().unwrap_or("").trim_start_matches('/'),
    };
    let version = channel
        .api_version
        .as_deref()
        .unwrap_or(DEFAULT_API_VERSION);
    let deployment: String = form_urlencoded::byte_serialize(deployment.as_bytes()).collect();
    let version: String = form_urlencoded::byte_serialize(version.as_bytes()).collect();
    Ok(Outgoing {
        path: format!("{base}/openai/deployments/{deployment}/{op}?api-version={version}"),
        headers: key
            .map(|k| vec![("api-key", k.to_string())])
            .unwrap_or_default(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, ChannelType};

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
}
