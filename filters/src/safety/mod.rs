//! Content safety (per gateway, `safety:`): deny rules (keywords and regexes)
//! checked on what a client asks and on what the model answers, and optionally an
//! external moderation endpoint in OpenAI's `/v1/moderations` shape. A refused
//! request gets OpenAI's `content_filter` error; an answer that breaks a rule is
//! stopped where it breaks it, with `finish_reason: "content_filter"`, streams
//! included (see `guard`).

mod guard;
mod moderation;

pub use guard::{JsonGuard, SseGuard};
pub use moderation::{moderation_body, read_verdict, Moderation, OnError, Verdict, MAX_MODERATED};

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;
use std::collections::HashSet;

/// The look-behind of a stream check when `window` is not set: a pattern's match
/// is found across chunks when it fits in this many bytes.
pub const DEFAULT_WINDOW: usize = 256;
const MAX_WINDOW: usize = 64 * 1024;

/// Which rule a text broke, named as the config names it (`deny[2]`,
/// `patterns[0]`), never with the text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: String,
}

/// A match of a rule in a text being streamed: definite, or (a pattern's match
/// that reaches the end of what has arrived) one the next text may still undo,
/// as `\bword\b` is undone by a letter after it.
#[derive(Debug, PartialEq, Eq)]
enum Hit {
    Found(Finding),
    Pending { from: usize },
}

/// A gateway's safety rules, compiled.
pub struct Safety {
    keywords: Option<AhoCorasick>,
    /// Every proper prefix of every keyword, ASCII-lower-cased: the end of a
    /// streamed text that may be a keyword's start is held back.
    prefixes: HashSet<Vec<u8>>,
    longest_keyword: usize,
    patterns: Vec<Regex>,
    /// Bytes of already-passed text a stream check looks back over.
    pub window: usize,
    pub requests: bool,
    pub answers: bool,
    pub moderation: Option<Moderation>,
    /// The rules as written, for equality (reload diffing) and debugging.
    source: (Vec<String>, Vec<String>),
}

impl std::fmt::Debug for Safety {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Safety")
            .field("keywords", &self.source.0.len())
            .field("patterns", &self.source.1)
            .field("window", &self.window)
            .field("requests", &self.requests)
            .field("answers", &self.answers)
            .field("moderation", &self.moderation)
            .finish()
    }
}

impl PartialEq for Safety {
    fn eq(&self, o: &Safety) -> bool {
        self.source == o.source
            && self.window == o.window
            && (self.requests, self.answers) == (o.requests, o.answers)
            && self.moderation == o.moderation
    }
}

/// What `safety:` says, before compiling.
pub struct Spec<'a> {
    pub deny: &'a [String],
    pub patterns: &'a [String],
    pub window: Option<usize>,
    pub requests: bool,
    pub answers: bool,
    pub moderation: Option<Moderation>,
}

impl Safety {
    /// Errors name the entry at fault, relative to `safety`.
    pub fn new(spec: Spec<'_>) -> Result<Safety, String> {
        for (i, k) in spec.deny.iter().enumerate() {
            if k.trim().is_empty() {
                return Err(format!(
                    "deny[{i}]: an empty keyword would refuse everything"
                ));
            }
        }
        let mut patterns = Vec::new();
        for (i, p) in spec.patterns.iter().enumerate() {
            let regex = regex::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("patterns[{i}]: {e}"))?;
            if regex.is_match("") {
                return Err(format!(
                    "patterns[{i}]: matches the empty string, so it would refuse everything"
                ));
            }
            patterns.push(regex);
        }
        if spec.deny.is_empty() && patterns.is_empty() && spec.moderation.is_none() {
            return Err(
                "deny: no rule given; list keywords, patterns or a moderation endpoint".into(),
            );
        }
        if !spec.requests && !spec.answers {
            return Err("requests: checks neither requests nor answers".into());
        }
        let window = spec.window.unwrap_or(DEFAULT_WINDOW);
        if window == 0 || window > MAX_WINDOW {
            return Err(format!("window: {window} must be 1 to {MAX_WINDOW} bytes"));
        }
        let keywords = (!spec.deny.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(spec.deny)
                    .map_err(|e| format!("deny: {e}"))
            })
            .transpose()?;
        let mut prefixes = HashSet::new();
        for k in spec.deny {
            let lower = k.to_ascii_lowercase().into_bytes();
            for end in 1..lower.len() {
                if k.is_char_boundary(end) {
                    prefixes.insert(lower[..end].to_vec());
                }
            }
        }
        let longest_keyword = spec.deny.iter().map(String::len).max().unwrap_or(0);
        Ok(Safety {
            keywords,
            prefixes,
            longest_keyword,
            patterns,
            window: window.max(longest_keyword),
            requests: spec.requests,
            answers: spec.answers,
            moderation: spec.moderation,
            source: (spec.deny.to_vec(), spec.patterns.to_vec()),
        })
    }

    /// The first rule a whole text breaks.
    pub fn check(&self, text: &str) -> Option<Finding> {
        match self.scan(text, true) {
            Some(Hit::Found(f)) => Some(f),
            _ => None,
        }
    }

    /// Rules over a text that may go on (`complete: false`): a keyword found is
    /// final; a pattern's match that ends where the text ends is only pending.
    fn scan(&self, text: &str, complete: bool) -> Option<Hit> {
        if let Some(m) = self.keywords.as_ref().and_then(|k| k.find(text)) {
            return Some(Hit::Found(Finding {
                rule: format!("deny[{}]", m.pattern().as_usize()),
            }));
        }
        let mut pending: Option<usize> = None;
        for (i, p) in self.patterns.iter().enumerate() {
            for m in p.find_iter(text) {
                if complete || m.end() < text.len() {
                    return Some(Hit::Found(Finding {
                        rule: format!("patterns[{i}]"),
                    }));
                }
                pending = Some(pending.map_or(m.start(), |s| s.min(m.start())));
            }
        }
        pending.map(|from| Hit::Pending { from })
    }

    /// How many bytes at the end of `text` could begin a keyword (and are held
    /// back until the next text says whether they do).
    fn keyword_start(&self, text: &str) -> usize {
        let b = text.as_bytes();
        let from = b
            .len()
            .saturating_sub(self.longest_keyword.saturating_sub(1));
        (from..b.len())
            .find(|&i| {
                text.is_char_boundary(i) && self.prefixes.contains(&b[i..].to_ascii_lowercase())
            })
            .map_or(0, |i| b.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(deny: &[&str], patterns: &[&str]) -> Result<Safety, String> {
        let deny: Vec<String> = deny.iter().map(|s| s.to_string()).collect();
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        Safety::new(Spec {
            deny: &deny,
            patterns: &patterns,
            window: None,
            requests: true,
            answers: true,
            moderation: None,
        })
    }

    pub(super) fn safety(deny: &[&str], patterns: &[&str]) -> Safety {
        build(deny, patterns).unwrap()
    }

    #[test]
    fn keywords_match_ignoring_ascii_case_and_name_their_rule() {
        let s = safety(&["forbidden", "禁词"], &[]);
        assert_eq!(s.check("this is FORBIDDEN").unwrap().rule, "deny[0]");
        assert_eq!(s.check("这里有禁词").unwrap().rule, "deny[1]");
        assert_eq!(s.check("all fine"), None);
    }

    #[test]
    fn patterns_name_their_rule_and_a_pending_match_waits_for_more() {
        let s = safety(&[], &[r"(?i)\bbomb\b"]);
        assert_eq!(s.check("a bomb here").unwrap().rule, "patterns[0]");
        assert_eq!(s.check("a bombastic talk"), None);
        assert_eq!(s.scan("a bomb", false), Some(Hit::Pending { from: 2 }));
        assert_eq!(s.scan("a bombastic", false), None);
        assert!(matches!(s.scan("a bomb", true), Some(Hit::Found(_))));
    }

    #[test]
    fn the_start_of_a_keyword_at_the_end_is_found() {
        let s = safety(&["forbidden", "禁词"], &[]);
        assert_eq!(s.keyword_start("this is FORB"), 4);
        assert_eq!(s.keyword_start("this is fine"), 0);
        assert_eq!(s.keyword_start("这里有禁"), "禁".len());
        // A whole keyword is not a start (the scan finds it).
        assert_eq!(s.keyword_start("forbidden"), 0);
    }

    #[test]
    fn bad_rules_are_named() {
        let e = |deny: &[&str], patterns: &[&str]| build(deny, patterns).unwrap_err();
        assert!(e(&[" "], &[]).starts_with("deny[0]"));
        assert!(e(&[], &["("]).starts_with("patterns[0]"));
        assert!(e(&[], &["a*"]).contains("empty string"));
        assert!(e(&[], &[]).starts_with("deny: no rule"));
    }
}
