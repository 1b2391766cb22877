//! Token usage (P9): what the upstream reported, or a tokenizer estimate when it
//! reported nothing.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// True when counted by our tokenizer rather than reported by the upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

/// The `usage` object of an OpenAI answer. Embeddings report no completion tokens.
#[derive(Debug, Deserialize)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Usage {
        let prompt = w.prompt_tokens.unwrap_or(0);
        let completion = w.completion_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: w.total_tokens.unwrap_or(prompt + completion),
            estimated: false,
        }
    }
}

fn bpe() -> &'static CoreBPE {
    static BPE: OnceLock<CoreBPE> = OnceLock::new();
    // o200k_base is the vocabulary of current OpenAI models; for other model families
    // it is a close estimate, which is all an estimate claims to be. The ranks ship
    // inside the crate, so this never touches the network.
    BPE.get_or_init(|| {
        tiktoken_rs::o200k_base().unwrap_or_else(|_| {
            tiktoken_rs::cl100k_base()
                .unwrap_or_else(|e| panic!("embedded tokenizer ranks are corrupt: {e}"))
        })
    })
}

/// Loads the tokenizer ranks ahead of the first request (it takes ~100 ms).
pub fn warm_up() {
    let _ = bpe();
}

pub fn count_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe().encode_ordinary(text).len() as u64
}

/// OpenAI's chat accounting adds about 3 tokens per message and 3 for the reply.
pub fn estimate(prompt_text: &str, messages: usize, completion_text: &str) -> Usage {
    let prompt = count_tokens(prompt_text)
        + if messages > 0 {
            3 * messages as u64 + 3
        } else {
            0
        };
    let completion = count_tokens(completion_text);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        estimated: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_a_real_tokenizer() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("hello world"), 2);
        let u = estimate("hello world", 1, "hi");
        assert_eq!(u.prompt_tokens, 2 + 6);
        assert_eq!(u.completion_tokens, 1);
        assert!(u.estimated);
    }

    #[test]
    fn wire_usage_fills_total() {
        let w: WireUsage =
            serde_json::from_str(r#"{"prompt_tokens":5,"completion_tokens":7}"#).unwrap();
        let u: Usage = w.into();
        assert_eq!(u.total_tokens, 12);
        assert!(!u.estimated);
    }
}
