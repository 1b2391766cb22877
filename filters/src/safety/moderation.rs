//! An external moderation endpoint in OpenAI's `/v1/moderations` shape: weir
//! sends the request's text, the endpoint says whether it is flagged. When it
//! cannot say (down, slow, an answer that is not a verdict), `on_error` decides:
//! `closed` refuses the request, `open` lets it through.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// Longest text sent for moderation; a longer request counts as one the
/// endpoint could not judge.
pub const MAX_MODERATED: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse the request (503 `moderation_unavailable`).
    #[default]
    Closed,
    /// Let the request through, counted in `weir_safety_total`.
    Open,
}

/// `safety.moderation`, resolved against the snapshot's channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Moderation {
    /// The channel (an `openai` one) whose upstream and keys are used.
    pub channel: String,
    /// Its place in the snapshot's channel list.
    pub channel_index: usize,
    pub model: Option<String>,
    pub timeout: Duration,
    pub on_error: OnError,
    /// Only these categories refuse; empty: whatever the endpoint flags.
    pub categories: Vec<String>,
    /// Also judge JSON answers (held whole until it says).
    pub answers: bool,
}

/// What the endpoint said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Flagged, with the categories that were (may be empty when the endpoint
    /// names none).
    Flagged(Vec<String>),
}

/// The moderation request's body.
pub fn moderation_body(model: Option<&str>, text: &str) -> Vec<u8> {
    let mut body = json!({ "input": text });
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    body.to_string().into_bytes()
}

/// The endpoint's answer read as a verdict, or why it is none.
pub fn read_verdict(status: u16, body: &[u8], categories: &[String]) -> Result<Verdict, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        format!("the moderation endpoint answered HTTP {status} with a body that is not JSON")
    })?;
    if status != 200 {
        let (_, why) = crate::adapters::answer::error_fields(&v, "type", "", "no reason given");
        return Err(format!(
            "the moderation endpoint answered HTTP {status}: {why}"
        ));
    }
    let results = v
        .get("results")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or("the moderation endpoint's answer has no `results`")?;
    let mut flagged = false;
    let mut named = Vec::new();
    for r in results {
        let cats = r.get("categories").and_then(Value::as_object);
        let on = cats
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.as_bool() == Some(true))
            .map(|(k, _)| k.clone());
        if categories.is_empty() {
            flagged |= r.get("flagged").and_then(Value::as_bool).unwrap_or(false);
            named.extend(on);
        } else {
            let hit: Vec<String> = on.filter(|c| categories.contains(c)).collect();
            flagged |= !hit.is_empty();
            named.extend(hit);
        }
    }
    named.sort();
    named.dedup();
    Ok(match flagged {
        true => Verdict::Flagged(named),
        false => Verdict::Pass,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(flagged: bool, cats: &[(&str, bool)]) -> Vec<u8> {
        let categories: serde_json::Map<String, Value> = cats
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        json!({"id": "modr-1", "model": "omni-moderation-latest",
            "results": [{"flagged": flagged, "categories": categories}]})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_flagged_answer_names_its_categories() {
        let a = answer(true, &[("violence", true), ("hate", false)]);
        assert_eq!(
            read_verdict(200, &a, &[]),
            Ok(Verdict::Flagged(vec!["violence".into()]))
        );
        assert_eq!(
            read_verdict(200, &answer(false, &[("hate", false)]), &[]),
            Ok(Verdict::Pass)
        );
    }

    #[test]
    fn listed_categories_decide_alone() {
        let a = answer(true, &[("violence", true), ("hate", false)]);
        assert_eq!(read_verdict(200, &a, &["hate".into()]), Ok(Verdict::Pass));
        let b = answer(false, &[("hate", true)]);
        assert_eq!(
            read_verdict(200, &b, &["hate".into()]),
            Ok(Verdict::Flagged(vec!["hate".into()]))
        );
    }

    #[test]
    fn what_is_not_a_verdict_says_why() {
        let e = br#"{"error":{"message":"Incorrect API key"}}"#;
        assert!(read_verdict(401, e, &[])
            .unwrap_err()
            .contains("HTTP 401: Incorrect API key"));
        assert!(read_verdict(200, b"<html>", &[])
            .unwrap_err()
            .contains("not JSON"));
        assert!(read_verdict(200, b"{}", &[])
            .unwrap_err()
            .contains("no `results`"));
    }

    #[test]
    fn the_body_names_the_model_when_set() {
        let b: Value = serde_json::from_slice(&moderation_body(Some("m"), "hi")).unwrap();
        assert_eq!(b, json!({"input": "hi", "model": "m"}));
        let b: Value = serde_json::from_slice(&moderation_body(None, "hi")).unwrap();
        assert_eq!(b, json!({"input": "hi"}));
    }
}
