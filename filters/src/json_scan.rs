//! Finding one top-level field of a JSON object without parsing the rest: billing
//! needs an answer's `usage`, and walking the answer with serde to reach it was the
//! relay's largest cost (callgrind: ~5.9k instructions for a 330-byte answer).
//!
//! The scanner only skips: strings by their quotes and escapes, arrays and objects by
//! bracket depth. Whatever it cannot walk with certainty (not an object, an escaped
//! key, a field given twice, a truncated body) is `Unsure`, and the caller parses the
//! body in full as before.

#[derive(Debug, PartialEq, Eq)]
pub enum Field<'a> {
    /// The field's raw value.
    Found(&'a [u8]),
    Absent,
    Unsure,
}

pub fn top_level_field<'a>(body: &'a [u8], name: &str) -> Field<'a> {
    scan(body, name.as_bytes()).unwrap_or(Field::Unsure)
}

fn scan<'a>(b: &'a [u8], name: &[u8]) -> Option<Field<'a>> {
    let mut i = skip_ws(b, 0);
    if *b.get(i)? != b'{' {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut found = None;
    if *b.get(i)? == b'}' {
        return finish(b, i + 1, found);
    }
    loop {
        if *b.get(i)? != b'"' {
            return None;
        }
        let end = skip_string(b, i)?;
        let key = &b[i + 1..end - 1];
        if key.contains(&b'\\') {
            return None;
        }
        i = skip_ws(b, end);
        if *b.get(i)? != b':' {
            return None;
        }
        i = skip_ws(b, i + 1);
        let value_end = skip_value(b, i)?;
        if key == name {
            if found.is_some() {
                return None;
            }
            found = Some(&b[i..value_end]);
        }
        i = skip_ws(b, value_end);
        match *b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return finish(b, i + 1, found),
            _ => return None,
        }
    }
}

/// Only whitespace may follow the object.
fn finish<'a>(b: &[u8], i: usize, found: Option<&'a [u8]>) -> Option<Field<'a>> {
    if skip_ws(b, i) != b.len() {
        return None;
    }
    Some(found.map_or(Field::Absent, Field::Found))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Just past the string that opens at `b[i]`.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[k] == b'\\' {
            j = k + 2;
        } else {
            return Some(k + 1);
        }
    }
}

/// Just past the value that starts at `b[i]`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let end = b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .map_or(b.len(), |p| i + p);
            (end > i).then_some(end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(body: &str) -> Option<String> {
        match top_level_field(body.as_bytes(), "usage") {
            Field::Found(v) => Some(String::from_utf8(v.to_vec()).unwrap()),
            Field::Absent => None,
            Field::Unsure => Some("UNSURE".into()),
        }
    }

    #[test]
    fn finds_the_top_level_field_only() {
        let body = r#"{"id":"x","choices":[{"message":{"content":"{\"usage\": 1} \" ] }"},"usage":{"prompt_tokens":0}}],"usage":{"prompt_tokens":9,"completion_tokens":2}}"#;
        assert_eq!(
            found(body).as_deref(),
            Some(r#"{"prompt_tokens":9,"completion_tokens":2}"#)
        );
        assert_eq!(
            found(r#" { "a" : [1, {"b": "}"}] , "usage" : null } "#).as_deref(),
            Some("null")
        );
        assert_eq!(found(r#"{"usage":12.5e3}"#).as_deref(), Some("12.5e3"));
        assert_eq!(
            found(r#"{"a":"\\","usage":"s\"q"}"#).as_deref(),
            Some(r#""s\"q""#)
        );
    }

    #[test]
    fn absent_and_empty() {
        assert_eq!(
            found(r#"{"choices":[{"usage":{"prompt_tokens":1}}]}"#),
            None
        );
        assert_eq!(found("{}"), None);
        assert_eq!(found(" {\n} \n"), None);
    }

    /// Random documents, compact and pretty: the scanner agrees with serde_json.
    #[test]
    fn agrees_with_serde_on_random_documents() {
        use rand::{Rng, SeedableRng};
        use serde_json::{json, Value};
        fn value(rng: &mut rand::rngs::StdRng, depth: u32) -> Value {
            let words = ["usage", "a", "}", "]", "\\\"", "{\"usage\":1}", "é", ""];
            match rng.gen_range(0..if depth > 3 { 4 } else { 6 }) {
                0 => Value::Null,
                1 => json!(rng.gen_range(-1000.0..1000.0)),
                2 => json!(rng.gen_bool(0.5)),
                3 => json!(words[rng.gen_range(0..words.len())]),
                4 => Value::Array(
                    (0..rng.gen_range(0..4))
                        .map(|_| value(rng, depth + 1))
                        .collect(),
                ),
                _ => Value::Object(
                    (0..rng.gen_range(0..4))
                        .map(|_| {
                            (
                                words[rng.gen_range(0..words.len())].to_string(),
                                value(rng, depth + 1),
                            )
                        })
                        .collect(),
                ),
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let mut doc = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..6) {
                let k = ["usage", "choices", "id", "x"][rng.gen_range(0..4)];
                doc.insert(k.to_string(), value(&mut rng, 1));
            }
            let doc = Value::Object(doc);
            for text in [doc.to_string(), serde_json::to_string_pretty(&doc).unwrap()] {
                // Compared with serde's reading of the same text (floats need not
                // round-trip exactly).
                let whole: Value = serde_json::from_str(&text).unwrap();
                match top_level_field(text.as_bytes(), "usage") {
                    Field::Found(raw) => assert_eq!(
                        serde_json::from_slice::<Value>(raw).unwrap(),
                        whole["usage"],
                        "{text}"
                    ),
                    Field::Absent => assert!(doc.get("usage").is_none(), "{text}"),
                    Field::Unsure => panic!("unsure on valid JSON: {text}"),
                }
            }
        }
    }

    #[test]
    fn unsure_when_it_cannot_walk_with_certainty() {
        for body in [
            "",
            "[]",
            "null",
            r#"{"usag\u0065":{}}"#,
            r#"{"usage":{},"usage":{}}"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":1 "usage":{}}"#,
            r#"{"a":1}}"#,
            r#"{"a":]}"#,
            r#"{"usage":{}} trailing"#,
            r#"{a:1}"#,
        ] {
            assert_eq!(found(body).as_deref(), Some("UNSURE"), "{body}");
        }
    }
}
