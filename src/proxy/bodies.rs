//! The upstream request body: the client's bytes untouched when nothing changes,
//! otherwise rewritten once per distinct upstream model.

use super::request::Request;
use bytes::Bytes;
use std::sync::Arc;
use weir_filters::config::Gateway;
use weir_filters::masking::Table;
use weir_filters::request_body::{JsonBody, RequestFacts};
use weir_filters::GatewayError;

/// The upstream body for one upstream model name: the client's bytes untouched when
/// nothing changes, otherwise the rewritten body, made once per distinct model.
///
/// Order of rewrites: the key field out (G2), the prompt template (G6), data
/// masking, usage asked for (P9), then per upstream model: the model name (P6), `param_map`, then
/// `param_fixed` (G7), so a gateway can still map or pin the model a channel chose.
pub struct Bodies<'a> {
    /// The client's bytes.
    raw: Bytes,
    /// The parsed request after the gateway's rewrites (before per-model ones).
    pub parsed: JsonBody,
    client_model: String,
    rewritten: bool,
    made: Vec<(String, Bytes, String)>,
    gateway: &'a Gateway,
    /// Weir asked for stream usage the client did not: the relay removes it.
    pub strip_usage: bool,
    /// What `masking` replaced, when it replaced anything.
    pub masked: Option<Arc<Table>>,
}

/// The gateway's deep thinking and web search, for a request that says nothing
/// of either: true when the body changed.
fn switches(gateway: &Gateway, body: &mut JsonBody) -> Result<bool, GatewayError> {
    let mut changed = false;
    if let Some(effort) = gateway.thinking {
        if body.get("reasoning_effort").is_none() {
            body.set("reasoning_effort", &effort.as_str())?;
            changed = true;
        }
    }
    if gateway.web_search && body.get("web_search_options").is_none() {
        body.set("web_search_options", &serde_json::json!({}))?;
        changed = true;
    }
    Ok(changed)
}

impl<'a> Bodies<'a> {
    /// Applies the rewrites that do not depend on the channel. `rewritten`: the
    /// body already differs from the client's bytes (a key field was taken out).
    pub fn prepare(
        raw: Bytes,
        mut parsed: JsonBody,
        facts: &RequestFacts,
        req: &Request<'a>,
        mut rewritten: bool,
    ) -> Result<Self, GatewayError> {
        let gateway = req.gateway;
        if let Some(template) = &gateway.prompt_template {
            rewritten |= parsed.apply_template(template)?;
        }
        // After the template (its own text is masked too), before any channel.
        let mut masked = None;
        if let Some(masker) = &gateway.masking {
            let table = masker.mask_body(&mut parsed, req.endpoint)?;
            if !table.is_empty() {
                rewritten = true;
                masked = Some(Arc::new(table));
            }
        }
        if req.endpoint == weir_filters::route::Endpoint::ChatCompletions {
            rewritten |= switches(gateway, &mut parsed)?;
        }
        rewritten |= !gateway.param_map.is_empty() || !gateway.param_fixed.is_empty();
        // P9: a stream always asks for usage (only OpenAI chunk streams carry it);
        // the client sees it only if it asked too.
        let strip_usage =
            facts.stream && req.endpoint.streams_chunks() && !facts.client_wants_usage;
        if strip_usage {
            parsed.ensure_stream_usage()?;
            rewritten = true;
        }
        Ok(Bodies {
            raw,
            parsed,
            client_model: facts.model.clone(),
            rewritten,
            made: Vec::new(),
            gateway,
            strip_usage,
            masked,
        })
    }

    /// The body for a channel's upstream model, and the model it finally names
    /// (`param_map`/`param_fixed` may have changed it; adapters put it in URLs).
    /// The model name the client asked for.
    pub fn client_model(&self) -> &str {
        &self.client_model
    }

    pub fn for_model(&mut self, model: &str) -> Result<(Bytes, String), GatewayError> {
        if !self.rewritten && model == self.client_model {
            return Ok((self.raw.clone(), model.to_string()));
        }
        if let Some((_, b, m)) = self.made.iter().find(|(m, _, _)| m == model) {
            return Ok((b.clone(), m.clone()));
        }
        self.parsed.set("model", &model)?;
        // `model` was mapped before routing; the rest of the map applies here.
        let map = self.gateway.param_map.iter();
        self.parsed.map_params(
            map.filter(|(path, _)| path.as_str() != weir_filters::config::MODEL_PATH),
        )?;
        self.parsed.fix_params(&self.gateway.param_fixed)?;
        let effective = self
            .parsed
            .get_path("model")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| model.to_string());
        let b = self.parsed.to_bytes();
        self.made
            .push((model.to_string(), b.clone(), effective.clone()));
        Ok((b, effective))
    }
}
