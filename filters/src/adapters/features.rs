//! Deep thinking and web search, one switch each in OpenAI's terms
//! (`reasoning_effort`, `web_search_options`, or a gateway's `thinking` and
//! `web_search`), said to each provider in its own: Anthropic's `thinking`
//! budget and its web search tool, Gemini's `thinkingConfig` and Google Search
//! grounding. Reasoning comes back as `reasoning_content`, search sources as
//! `url_citation` annotations, as OpenAI's own models give them.

use crate::GatewayError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// How hard a model thinks (OpenAI's `reasoning_effort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effort {
    None,
    Minimal,
    Low,
    Medium,
    High,
}

impl Effort {
    pub fn parse(s: &str) -> Option<Effort> {
        Some(match s {
            "none" => Effort::None,
            "minimal" => Effort::Minimal,
            "low" => Effort::Low,
            "medium" => Effort::Medium,
            "high" => Effort::High,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effort::None => "none",
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }

    /// The thinking budget in tokens, `None` for no thinking.
    pub fn budget(self) -> Option<u32> {
        match self {
            Effort::None | Effort::Minimal => None,
            Effort::Low => Some(1024),
            Effort::Medium => Some(4096),
            Effort::High => Some(16384),
        }
    }
}

/// The request's `reasoning_effort`, when it has one.
pub fn effort(req: &Value) -> Result<Option<Effort>, GatewayError> {
    match req.get("reasoning_effort") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Effort::parse(s).map(Some).ok_or_else(|| bad_effort(s)),
        Some(other) => Err(bad_effort(&other.to_string())),
    }
}

fn bad_effort(got: &str) -> GatewayError {
    GatewayError::InvalidParam {
        param: "reasoning_effort".into(),
        code: "invalid_value",
        message: format!(
            "`reasoning_effort` is {got}; it takes none, minimal, low, medium or high"
        ),
    }
}

/// The request's `web_search_options`, when it asks for search.
pub fn search(req: &Value) -> Option<&Value> {
    req.get("web_search_options").filter(|o| o.is_object())
}

/// How many searches a search context size allows.
fn searches(options: &Value) -> u32 {
    match options.get("search_context_size").and_then(Value::as_str) {
        Some("low") => 1,
        Some("high") => 10,
        _ => 5,
    }
}

/// Thinking and search on an Anthropic Messages request.
pub fn anthropic(req: &Value, out: &mut Map<String, Value>) -> Result<(), GatewayError> {
    // Anthropic wants a tool-calling turn's thinking block (with its signature)
    // back in the conversation; a chat history cannot carry it, so a
    // conversation already calling tools goes on without thinking.
    let calls_tools = req
        .get("messages")
        .and_then(Value::as_array)
        .is_some_and(|ms| {
            ms.iter()
                .any(|m| m.get("tool_calls").is_some_and(|c| !c.is_null()))
        });
    let effort = effort(req)?.filter(|_| !calls_tools);
    if let Some(budget) = effort.and_then(Effort::budget) {
        out.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
        // The answer must have room after the thinking; sampling is the model's own.
        let max = out.get("max_tokens").and_then(Value::as_u64).unwrap_or(0);
        if max <= u64::from(budget) {
            out.insert(
                "max_tokens".into(),
                json!(u64::from(budget) + max.max(1024)),
            );
        }
        for k in ["temperature", "top_p", "top_k"] {
            out.remove(k);
        }
    }
    if let Some(options) = search(req) {
        let mut tool = json!({"type": "web_search_20250305", "name": "web_search", "max_uses": searches(options)});
        if let Some(Value::Object(loc)) = options.pointer("/user_location/approximate") {
            let mut l = loc.clone();
            l.insert("type".into(), json!("approximate"));
            tool["user_location"] = Value::Object(l);
        }
        match out.get_mut("tools").and_then(Value::as_array_mut) {
            Some(tools) => tools.push(tool),
            None => {
                out.insert("tools".into(), json!([tool]));
            }
        }
    }
    Ok(())
}

/// Thinking and search on a Gemini `generateContent` request.
pub fn gemini(
    req: &Value,
    generation: &mut Map<String, Value>,
    tools: &mut Vec<Value>,
) -> Result<(), GatewayError> {
    if let Some(e) = effort(req)? {
        let budget = e.budget().unwrap_or(0);
        generation.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": budget, "includeThoughts": budget > 0}),
        );
    }
    if search(req).is_some() {
        tools.push(json!({"googleSearch": {}}));
    }
    Ok(())
}

/// A source the answer cites, as OpenAI annotates its search answers.
pub fn url_citation(url: &Value, title: &Value, start: u64, end: u64) -> Value {
    json!({"type": "url_citation", "url_citation": {"url": url, "title": title, "start_index": start, "end_index": end}})
}

/// Gemini's grounding sources as annotations over the answer's text.
pub fn grounding(v: &Value) -> Vec<Value> {
    let Some(meta) = v.pointer("/candidates/0/groundingMetadata") else {
        return Vec::new();
    };
    let chunks = meta.get("groundingChunks").and_then(Value::as_array);
    let web = |i: u64| {
        chunks
            .and_then(|c| c.get(i as usize))
            .and_then(|c| c.get("web"))
    };
    let mut out = Vec::new();
    for s in meta
        .get("groundingSupports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let start = s
            .pointer("/segment/startIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let end = s
            .pointer("/segment/endIndex")
            .and_then(Value::as_u64)
            .unwrap_or(start);
        for i in s
            .get("groundingChunkIndices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(w) = i.as_u64().and_then(web) {
                out.push(url_citation(&w["uri"], &w["title"], start, end));
            }
        }
    }
    if out.is_empty() {
        // Sources without spans: cited over the whole answer.
        for w in chunks.into_iter().flatten().filter_map(|c| c.get("web")) {
            out.push(url_citation(&w["uri"], &w["title"], 0, 0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinking_and_search_become_anthropic_s() {
        let req = json!({"reasoning_effort": "medium", "web_search_options": {"search_context_size": "low",
            "user_location": {"type": "approximate", "approximate": {"country": "DE", "city": "Berlin"}}}});
        let mut out = Map::new();
        out.insert("max_tokens".into(), json!(1000));
        out.insert("temperature".into(), json!(0.2));
        anthropic(&req, &mut out).unwrap();
        assert_eq!(
            out["thinking"],
            json!({"type": "enabled", "budget_tokens": 4096})
        );
        assert_eq!(out["max_tokens"], 4096 + 1024);
        assert!(out.get("temperature").is_none());
        assert_eq!(out["tools"][0]["type"], "web_search_20250305");
        assert_eq!(out["tools"][0]["max_uses"], 1);
        assert_eq!(out["tools"][0]["user_location"]["city"], "Berlin");
        let mut none = Map::new();
        anthropic(&json!({"reasoning_effort": "minimal"}), &mut none).unwrap();
        assert!(none.get("thinking").is_none());
        let e = anthropic(&json!({"reasoning_effort": "max"}), &mut Map::new()).unwrap_err();
        assert_eq!(e.param(), Some("reasoning_effort"));
        // A location that is not an object is left out, not a panic.
        let odd = json!({"web_search_options": {"user_location": {"approximate": "Berlin"}}});
        let mut out = Map::new();
        anthropic(&odd, &mut out).unwrap();
        assert!(out["tools"][0].get("user_location").is_none());
        // A conversation already calling tools goes on without thinking.
        let tools = json!({"reasoning_effort": "high", "messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "t"}]}]});
        let mut out = Map::new();
        anthropic(&tools, &mut out).unwrap();
        assert!(out.get("thinking").is_none());
    }

    #[test]
    fn thinking_and_search_become_gemini_s() {
        let (mut generation, mut tools) = (Map::new(), Vec::new());
        gemini(
            &json!({"reasoning_effort": "high", "web_search_options": {}}),
            &mut generation,
            &mut tools,
        )
        .unwrap();
        assert_eq!(
            generation["thinkingConfig"],
            json!({"thinkingBudget": 16384, "includeThoughts": true})
        );
        assert_eq!(tools, vec![json!({"googleSearch": {}})]);
        let mut off = Map::new();
        gemini(
            &json!({"reasoning_effort": "none"}),
            &mut off,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(off["thinkingConfig"]["thinkingBudget"], 0);
    }

    #[test]
    fn grounding_becomes_url_citations() {
        let v = json!({"candidates": [{"groundingMetadata": {
            "groundingChunks": [{"web": {"uri": "https://a.example", "title": "A"}}, {"web": {"uri": "https://b.example", "title": "B"}}],
            "groundingSupports": [{"segment": {"startIndex": 0, "endIndex": 12}, "groundingChunkIndices": [1]}]}}]});
        let a = grounding(&v);
        assert_eq!(
            a,
            vec![url_citation(
                &json!("https://b.example"),
                &json!("B"),
                0,
                12
            )]
        );
    }
}
