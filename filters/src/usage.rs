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
    /// `input_tokens` in the Responses API.
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: Option<u64>,
    /// `output_tokens` in the Responses API.
    #[serde(default, alias = "output_tokens")]
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

/// Loads the tokenizer ranks ahead of a count that must be quick (it takes
/// ~100 ms): a graceful stop about to cut streams does.
pub fn warm_up() {
    let _ = bpe();
}

/// Text beyond this is not tokenized; its count is extrapolated from the part that is.
pub const MAX_COUNTED: usize = 256 * 1024;

pub fn count_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    if text.len() <= MAX_COUNTED {
        return bpe().encode_ordinary(text).len() as u64;
    }
    let mut cut = MAX_COUNTED;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let counted = bpe().encode_ordinary(&text[..cut]).len() as u64;
    counted * text.len() as u64 / cut.max(1) as u64
}

/// OpenAI's chat accounting adds about 3 tokens per message and 3 for the reply.
pub fn estimate(prompt_text: &str, messages: usize, completion_text: &str) -> Usage {
    estimate_with_overflow(prompt_text, messages, completion_text, 0)
}

/// As `estimate`, for an answer of which `overflow` more bytes were seen than kept.
pub fn estimate_with_overflow(
    prompt_text: &str,
    messages: usize,
    completion_text: &str,
    overflow: usize,
) -> Usage {
    let framing = if messages > 0 {
        3 * messages as u64 + 3
    } else {
        0
    };
    let prompt = count_tokens(prompt_text) + framing;
    let mut completion = count_tokens(completion_text);
    if overflow > 0 && !completion_text.is_empty() {
        completion += completion * overflow as u64 / completion_text.len() as u64;
    }
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
    fn long_texts_are_extrapolated() {
        let text = "hello world ".repeat(60_000);
        let n = count_tokens(&text);
        // Exactly 2 tokens per repetition in the counted part.
        assert!((119_000..=121_000).contains(&n), "{n}");
        // 12 bytes kept and 12 more seen: twice the kept part's count.
        let u = estimate_with_overflow("", 0, "hello world ", 12);
        assert_eq!(u.completion_tokens, 2 * count_tokens("hello world "));
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

/// What a request costs: prices are per 1M tokens.
pub fn cost(u: &Usage, price_in: f64, price_out: f64) -> f64 {
    (u.prompt_tokens as f64 * price_in + u.completion_tokens as f64 * price_out) / 1_000_000.0
}

#[cfg(test)]
mod cost_tests {
    #[test]
    fn prices_are_per_million_tokens() {
        let u = super::Usage {
            prompt_tokens: 2_000,
            completion_tokens: 500,
            total_tokens: 2_500,
            estimated: false,
        };
        assert!((super::cost(&u, 0.5, 1.5) - 0.00175).abs() < 1e-12);
    }
}
