//! The shape a provider accepts, checked before any upstream call. A body OpenAI
//! would refuse with 400 is refused here the same way (same `param`, same `code`),
//! so a hostile or buggy client never reaches a channel: an inference server that
//! answers such a body with a 500 would otherwise count against the channel's
//! health, and one client could suspend a channel for everyone.
//!
//! Types and required fields only, plus the few values every provider refuses
//! (`n: 0`, an empty `messages`): fields weir does not know pass untouched, since
//! providers add their own. The check borrows the body's raw JSON: no string of
//! the conversation is copied.

use crate::error::GatewayError;
use crate::request_body::JsonBody;
use crate::route::Endpoint;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A JSON value's type, read from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    pub fn of(raw: &RawValue) -> Kind {
        let text = raw.get().trim_start();
        match text.as_bytes().first() {
            Some(b'n') => Kind::Null,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'"') => Kind::String,
            Some(b'[') => Kind::Array,
            Some(b'{') => Kind::Object,
            _ if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => Kind::Number,
            _ => Kind::Integer,
        }
    }

    /// As OpenAI's errors say it: "but got an integer instead".
    fn article(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Integer => "an integer",
            Kind::Number => "a decimal",
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

/// What a field may be: the kinds accepted (an integer is also a number) and how
/// an error describes them.
struct Want {
    kinds: &'static [Kind],
    says: &'static str,
}

const STRING: Want = Want {
    kinds: &[Kind::String],
    says: "a string",
};
const BOOL: Want = Want {
    kinds: &[Kind::Bool],
    says: "a boolean",
};
const NUMBER: Want = Want {
    kinds: &[Kind::Number, Kind::Integer],
    says: "a number",
};
const INTEGER: Want = Want {
    kinds: &[Kind::Integer],
    says: "an integer",
};
const OBJECT: Want = Want {
    kinds: &[Kind::Object],
    says: "an object",
};
const ARRAY: Want = Want {
    kinds: &[Kind::Array],
    says: "an array",
};
const STRING_OR_OBJECT: Want = Want {
    kinds: &[Kind::String, Kind::Object],
    says: "one of a string or an object",
};
const STRING_OR_ARRAY: Want = Want {
    kinds: &[Kind::String, Kind::Array],
    says: "one of a string or an array",
};
const CONTENT: Want = Want {
    kinds: &[Kind::String, Kind::Array],
    says: "one of a string or an array of objects",
};

/// Top-level fields of each endpoint, null allowed for every optional one (the
/// SDKs send `null` for unset fields).
const CHAT_FIELDS: &[(&str, Want)] = &[
    ("temperature", NUMBER),
    ("top_p", NUMBER),
    ("presence_penalty", NUMBER),
    ("frequency_penalty", NUMBER),
    ("n", INTEGER),
    ("max_tokens", INTEGER),
    ("max_completion_tokens", INTEGER),
    ("seed", INTEGER),
    ("top_logprobs", INTEGER),
    ("logprobs", BOOL),
    ("parallel_tool_calls", BOOL),
    ("store", BOOL),
    ("user", STRING),
    ("stop", STRING_OR_ARRAY),
    ("tools", ARRAY),
    ("functions", ARRAY),
    ("tool_choice", STRING_OR_OBJECT),
    ("response_format", OBJECT),
    ("logit_bias", OBJECT),
    ("metadata", OBJECT),
    ("reasoning_effort", STRING),
];

const COMPLETION_FIELDS: &[(&str, Want)] = &[
    ("temperature", NUMBER),
    ("top_p", NUMBER),
    ("presence_penalty", NUMBER),
    ("frequency_penalty", NUMBER),
    ("n", INTEGER),
    ("best_of", INTEGER),
    ("max_tokens", INTEGER),
    ("logprobs", INTEGER),
    ("seed", INTEGER),
    ("echo", BOOL),
    ("suffix", STRING),
    ("user", STRING),
    ("stop", STRING_OR_ARRAY),
    ("logit_bias", OBJECT),
];

const EMBEDDING_FIELDS: &[(&str, Want)] = &[
    ("encoding_format", STRING),
    ("dimensions", INTEGER),
    ("user", STRING),
];

/// Counts that must be at least one.
const POSITIVE: &[&str] = &[
    "n",
    "best_of",
    "max_tokens",
    "max_completion_tokens",
    "dimensions",
];

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Checks the body of a request to `endpoint`; `model`, `stream` and
/// `stream_options` are `JsonBody::facts`'s.
pub fn check(endpoint: Endpoint, body: &JsonBody) -> Result<(), GatewayError> {
    match endpoint {
        Endpoint::ChatCompletions => {
            fields(body, CHAT_FIELDS)?;
            messages(required(body, "messages")?)?;
            if let Some(tools) = present(body, "tools") {
                self::tools(tools)?;
            }
            if let Some(stop) = present(body, "stop") {
                strings("stop", stop)?;
            }
            Ok(())
        }
        Endpoint::Completions => {
            fields(body, COMPLETION_FIELDS)?;
            tokens_or_texts("prompt", required(body, "prompt")?)?;
            if let Some(stop) = present(body, "stop") {
                strings("stop", stop)?;
            }
            Ok(())
        }
        Endpoint::Embeddings => {
            fields(body, EMBEDDING_FIELDS)?;
            tokens_or_texts("input", required(body, "input")?)
        }
        // A Messages body is checked as it becomes a chat one (`adapters::messages_in`).
        Endpoint::ListModels | Endpoint::GetModel | Endpoint::Other => Ok(()),
        Endpoint::Messages | Endpoint::CountTokens | Endpoint::Responses => Ok(()),
        Endpoint::Forward => Ok(()),
    }
}

/// A field that is there and not null.
fn present<'b>(body: &'b JsonBody, name: &str) -> Option<&'b RawValue> {
    body.get(name).filter(|raw| Kind::of(raw) != Kind::Null)
}

fn required<'b>(body: &'b JsonBody, name: &str) -> Result<&'b RawValue, GatewayError> {
    present(body, name).ok_or_else(|| missing(name.to_string()))
}

fn fields(body: &JsonBody, list: &[(&str, Want)]) -> Result<(), GatewayError> {
    for (name, want) in list {
        if let Some(raw) = present(body, name) {
            expect(|| name.to_string(), raw, want)?;
            representable(name, raw, want)?;
            if POSITIVE.contains(name) && raw.get().trim_start().starts_with(['-', '0']) {
                return Err(invalid_value(
                    name.to_string(),
                    format!(
                        "Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {} instead.",
                        echo(raw)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A number the providers can read: JSON allows `1e999` and 30-digit integers,
/// which a strict parser refuses and Python servers read as `inf` (then fail).
fn representable(name: &str, raw: &RawValue, want: &Want) -> Result<(), GatewayError> {
    let text = raw.get().trim();
    let fits = if want.kinds == INTEGER.kinds {
        text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok()
    } else if want.kinds == NUMBER.kinds {
        text.parse::<f64>().is_ok_and(f64::is_finite)
    } else {
        true
    };
    if fits {
        return Ok(());
    }
    Err(invalid_value(
        name.to_string(),
        format!("Invalid '{name}': {} is out of range.", echo(raw)),
    ))
}

/// The message list: a non-empty array of objects, each with a known role and the
/// content that role takes.
fn messages(raw: &RawValue) -> Result<(), GatewayError> {
    expect(|| "messages".into(), raw, &ARRAY)?;
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        role: Option<&'a RawValue>,
        #[serde(borrow)]
        content: Option<&'a RawValue>,
        #[serde(borrow)]
        name: Option<&'a RawValue>,
        #[serde(borrow)]
        tool_calls: Option<&'a RawValue>,
        #[serde(borrow)]
        tool_call_id: Option<&'a RawValue>,
    }
    let list: Vec<Message> = match serde_json::from_str(raw.get()) {
        Ok(list) => list,
        // Only a bad body takes this slower path: find the element that is not an
        // object (or repeats a field) to name it.
        Err(e) => return Err(bad_element("messages", raw, &OBJECT, &e)),
    };
    if list.is_empty() {
        return Err(empty_array("messages"));
    }
    for (i, m) in list.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        let role = m.role.ok_or_else(|| missing(at("role")))?;
        expect(|| at("role"), role, &STRING)?;
        // Owned only when escaped (`"us\u0065r"` is `user` too).
        let role_name: Cow<str> = serde_json::from_str(role.get()).unwrap_or_default();
        let role_name = role_name.as_ref();
        if !ROLES.contains(&role_name) {
            return Err(invalid_value(
                at("role"),
                format!(
                    "Invalid value: {}. Supported values are: 'system', 'developer', 'user', 'assistant', 'tool' and 'function'.",
                    echo(role)
                ),
            ));
        }
        let content = m.content.filter(|c| Kind::of(c) != Kind::Null);
        match content {
            Some(c) => {
                expect(|| at("content"), c, &CONTENT)?;
                if Kind::of(c) == Kind::Array {
                    parts(&at("content"), c)?;
                }
            }
            // An assistant turn may carry only tool calls.
            None if role_name == "assistant" => {}
            None => return Err(missing(at("content"))),
        }
        if let Some(name) = m.name {
            expect(|| at("name"), name, &STRING)?;
        }
        if let Some(calls) = m.tool_calls.filter(|c| Kind::of(c) != Kind::Null) {
            expect(|| at("tool_calls"), calls, &ARRAY)?;
        }
        if let Some(id) = m.tool_call_id {
            expect(|| at("tool_call_id"), id, &STRING)?;
        }
    }
    Ok(())
}

/// Content parts: objects with a string `type`.
fn parts(path: &str, raw: &RawValue) -> Result<(), GatewayError> {
    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a RawValue>,
    }
    let list: Vec<Part> =
        serde_json::from_str(raw.get()).map_err(|e| bad_element(path, raw, &OBJECT, &e))?;
    for (i, part) in list.iter().enumerate() {
        let at = || format!("{path}[{i}].type");
        let kind = part.kind.ok_or_else(|| missing(at()))?;
        expect(at, kind, &STRING)?;
    }
    Ok(())
}

/// Tools: objects with a string `type`; a function tool names its function.
fn tools(raw: &RawValue) -> Result<(), GatewayError> {
    #[derive(Deserialize)]
    struct Tool<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a RawValue>,
        #[serde(borrow)]
        function: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Function<'a> {
        #[serde(borrow)]
        name: Option<&'a RawValue>,
    }
    let list: Vec<Tool> =
        serde_json::from_str(raw.get()).map_err(|e| bad_element("tools", raw, &OBJECT, &e))?;
    for (i, tool) in list.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        let kind = tool.kind.ok_or_else(|| missing(at("type")))?;
        expect(|| at("type"), kind, &STRING)?;
        let kind: Cow<str> = serde_json::from_str(kind.get()).unwrap_or_default();
        if kind != "function" {
            continue;
        }
        let function = tool.function.ok_or_else(|| missing(at("function")))?;
        expect(|| at("function"), function, &OBJECT)?;
        let f: Function = serde_json::from_str(function.get())
            .map_err(|e| invalid_type(at("function"), e.to_string()))?;
        let name = f.name.ok_or_else(|| missing(at("function.name")))?;
        expect(|| at("function.name"), name, &STRING)?;
    }
    Ok(())
}

/// `stop`: a string or an array of strings.
fn strings(path: &str, raw: &RawValue) -> Result<(), GatewayError> {
    if Kind::of(raw) == Kind::Array {
        let list: Vec<&RawValue> = serde_json::from_str(raw.get())
            .map_err(|e| invalid_type(path.into(), e.to_string()))?;
        for (i, item) in list.iter().enumerate() {
            expect(|| format!("{path}[{i}]"), item, &STRING)?;
        }
    }
    Ok(())
}

/// `prompt` and `input`: a string, or a non-empty array of strings, of token ids,
/// or of arrays of token ids.
fn tokens_or_texts(path: &str, raw: &RawValue) -> Result<(), GatewayError> {
    const TEXTS: Want = Want {
        kinds: &[Kind::String, Kind::Array],
        says: "one of a string, an array of strings, an array of integers or an array of arrays of integers",
    };
    expect(|| path.into(), raw, &TEXTS)?;
    if Kind::of(raw) != Kind::Array {
        return Ok(());
    }
    let list: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|e| invalid_type(path.into(), e.to_string()))?;
    let Some(first) = list.first() else {
        return Err(empty_array(path));
    };
    let item = match Kind::of(first) {
        Kind::Integer => INTEGER,
        Kind::Array => ARRAY,
        _ => STRING,
    };
    for (i, element) in list.iter().enumerate() {
        let at = || format!("{path}[{i}]");
        expect(at, element, &item)?;
        if item.kinds == ARRAY.kinds {
            let ids: Vec<&RawValue> = serde_json::from_str(element.get())
                .map_err(|e| invalid_type(at(), e.to_string()))?;
            for (j, id) in ids.iter().enumerate() {
                expect(|| format!("{path}[{i}][{j}]"), id, &INTEGER)?;
            }
        }
    }
    Ok(())
}

fn expect(path: impl FnOnce() -> String, raw: &RawValue, want: &Want) -> Result<(), GatewayError> {
    let kind = Kind::of(raw);
    if want.kinds.contains(&kind) {
        return Ok(());
    }
    let path = path();
    let message = format!(
        "Invalid type for '{path}': expected {}, but got {} instead.",
        want.says,
        kind.article()
    );
    Err(invalid_type(path, message))
}

/// An array whose typed reading failed: the first element that is not `want` is
/// named; otherwise serde's own words (a repeated field, say).
fn bad_element(path: &str, raw: &RawValue, want: &Want, e: &serde_json::Error) -> GatewayError {
    if let Ok(list) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
        for (i, item) in list.iter().enumerate() {
            if let Err(err) = expect(|| format!("{path}[{i}]"), item, want) {
                return err;
            }
        }
    }
    invalid_type(path.into(), format!("Invalid '{path}': {e}."))
}

/// A client's value quoted in an error: at most 64 bytes of it (a refusal must
/// not send a megabyte back, nor put it in the call log).
fn echo(raw: &RawValue) -> &str {
    let text = raw.get().trim();
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn invalid_type(param: String, message: String) -> GatewayError {
    GatewayError::InvalidParam {
        param,
        code: "invalid_type",
        message,
    }
}

fn invalid_value(param: String, message: String) -> GatewayError {
    GatewayError::InvalidParam {
        param,
        code: "invalid_value",
        message,
    }
}

fn missing(param: String) -> GatewayError {
    GatewayError::InvalidParam {
        message: format!("Missing required parameter: '{param}'."),
        param,
        code: "missing_required_parameter",
    }
}

fn empty_array(path: &str) -> GatewayError {
    GatewayError::InvalidParam {
        param: path.into(),
        code: "empty_array",
        message: format!(
            "Invalid '{path}': empty array. Expected an array with minimum length 1, but got an empty array instead."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(endpoint: Endpoint, body: serde_json::Value) -> Result<(), (String, &'static str)> {
        let raw = serde_json::to_vec(&body).unwrap();
        let parsed = JsonBody::parse(&raw).unwrap();
        check(endpoint, &parsed).map_err(|e| match e {
            GatewayError::InvalidParam { param, code, .. } => (param, code),
            other => panic!("not a param error: {other}"),
        })
    }

    fn chat(body: serde_json::Value) -> Result<(), (String, &'static str)> {
        run(Endpoint::ChatCompletions, body)
    }

    fn err(param: &str, code: &'static str) -> Result<(), (String, &'static str)> {
        Err((param.to_string(), code))
    }

    #[test]
    fn well_formed_chat_bodies_pass() {
        let ok = [
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "m", "messages": [
                {"role": "system", "content": "be terse"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:x"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ], "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
               "tool_choice": "auto", "temperature": 1, "top_p": 0.5, "max_tokens": 10, "n": 1,
               "stop": ["x", "y"], "user": null, "seed": -3, "response_format": {"type": "json_object"},
               "vendor_extension": {"anything": [1, 2]}}),
            json!({"model": "m", "messages": [{"role": "developer", "content": "x"}], "stop": "END", "tools": [{"type": "web_search"}]}),
        ];
        for body in ok {
            assert_eq!(chat(body.clone()), Ok(()), "{body}");
        }
    }

    #[test]
    fn chat_errors_name_the_field_as_openai_does() {
        let m = |messages: serde_json::Value| json!({"model": "m", "messages": messages});
        assert_eq!(
            chat(json!({"model": "m"})),
            err("messages", "missing_required_parameter")
        );
        assert_eq!(chat(m(json!("hi"))), err("messages", "invalid_type"));
        assert_eq!(
            chat(m(json!({"role": "user"}))),
            err("messages", "invalid_type")
        );
        assert_eq!(chat(m(json!([]))), err("messages", "empty_array"));
        assert_eq!(chat(m(json!([1]))), err("messages[0]", "invalid_type"));
        assert_eq!(
            chat(m(json!([{"role": "user", "content": "a"}, "b"]))),
            err("messages[1]", "invalid_type")
        );
        assert_eq!(
            chat(m(json!([{"content": "a"}]))),
            err("messages[0].role", "missing_required_parameter")
        );
        assert_eq!(
            chat(m(json!([{"role": 7, "content": "a"}]))),
            err("messages[0].role", "invalid_type")
        );
        assert_eq!(
            chat(m(json!([{"role": "robot", "content": "a"}]))),
            err("messages[0].role", "invalid_value")
        );
        assert_eq!(
            chat(m(json!([{"role": "user"}]))),
            err("messages[0].content", "missing_required_parameter")
        );
        assert_eq!(
            chat(m(json!([{"role": "user", "content": 5}]))),
            err("messages[0].content", "invalid_type")
        );
        assert_eq!(
            chat(m(json!([{"role": "user", "content": [5]}]))),
            err("messages[0].content[0]", "invalid_type")
        );
        assert_eq!(
            chat(m(json!([{"role": "user", "content": [{"text": "x"}]}]))),
            err("messages[0].content[0].type", "missing_required_parameter")
        );
        assert_eq!(
            chat(m(json!([{"role": "assistant", "tool_calls": {}}]))),
            err("messages[0].tool_calls", "invalid_type")
        );
        let with = |field: &str, v: serde_json::Value| {
            let mut b = m(json!([{"role": "user", "content": "a"}]));
            b[field] = v;
            chat(b)
        };
        assert_eq!(
            with("temperature", json!("hot")),
            err("temperature", "invalid_type")
        );
        assert_eq!(with("n", json!(1.5)), err("n", "invalid_type"));
        assert_eq!(with("n", json!(0)), err("n", "invalid_value"));
        assert_eq!(
            with("max_tokens", json!(-1)),
            err("max_tokens", "invalid_value")
        );
        assert_eq!(with("stop", json!([1])), err("stop[0]", "invalid_type"));
        assert_eq!(
            with("tools", json!([{"type": "function"}])),
            err("tools[0].function", "missing_required_parameter")
        );
        assert_eq!(
            with(
                "tools",
                json!([{"type": "function", "function": {"name": 1}}])
            ),
            err("tools[0].function.name", "invalid_type")
        );
        assert_eq!(
            with("tool_choice", json!(3)),
            err("tool_choice", "invalid_type")
        );
        assert_eq!(with("temperature", json!(null)), Ok(()));
        let raw = |field: &str, number: &str| {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"a"}}],"{field}":{number}}}"#
            );
            let parsed = JsonBody::parse(body.as_bytes()).unwrap();
            check(Endpoint::ChatCompletions, &parsed).map_err(|e| match e {
                GatewayError::InvalidParam { param, code, .. } => (param, code),
                other => panic!("{other}"),
            })
        };
        assert_eq!(
            raw("temperature", "1e99999"),
            err("temperature", "invalid_value")
        );
        assert_eq!(
            raw("seed", "123456789012345678901234567890"),
            err("seed", "invalid_value")
        );
        assert_eq!(raw("temperature", "1e2"), Ok(()));
    }

    #[test]
    fn completions_and_embeddings_take_texts_or_token_ids() {
        for prompt in [
            json!("a"),
            json!(["a", "b"]),
            json!([1, 2]),
            json!([[1], [2, 3]]),
        ] {
            assert_eq!(
                run(
                    Endpoint::Completions,
                    json!({"model": "m", "prompt": prompt})
                ),
                Ok(())
            );
            assert_eq!(
                run(Endpoint::Embeddings, json!({"model": "m", "input": prompt})),
                Ok(())
            );
        }
        let e = |input: serde_json::Value| {
            run(Endpoint::Embeddings, json!({"model": "m", "input": input}))
        };
        assert_eq!(
            run(Endpoint::Embeddings, json!({"model": "m"})),
            err("input", "missing_required_parameter")
        );
        assert_eq!(e(json!([])), err("input", "empty_array"));
        assert_eq!(e(json!(["a", 1])), err("input[1]", "invalid_type"));
        assert_eq!(e(json!([[1, "x"]])), err("input[0][1]", "invalid_type"));
        assert_eq!(e(json!({"a": 1})), err("input", "invalid_type"));
        assert_eq!(
            run(Endpoint::Completions, json!({"model": "m", "prompt": 3})),
            err("prompt", "invalid_type")
        );
        assert_eq!(
            run(
                Endpoint::Embeddings,
                json!({"model": "m", "input": "a", "dimensions": "big"})
            ),
            err("dimensions", "invalid_type")
        );
    }

    #[test]
    fn escaped_strings_are_read_as_what_they_say() {
        let escaped = r#"{"model":"m","messages":[{"role":"us\u0065r","content":"a"}],
            "tools":[{"type":"func\u0074ion","function":{"name":1}}]}"#;
        let parsed = JsonBody::parse(escaped.as_bytes()).unwrap();
        let e = check(Endpoint::ChatCompletions, &parsed).unwrap_err();
        assert_eq!(e.param(), Some("tools[0].function.name"), "{e}");
    }

    #[test]
    fn kinds_are_read_from_the_first_byte() {
        let k = |s: &str| Kind::of(&RawValue::from_string(s.to_string()).unwrap());
        assert_eq!(k("-1"), Kind::Integer);
        assert_eq!(k("1e3"), Kind::Number);
        assert_eq!(k("2.0"), Kind::Number);
        assert_eq!(k("null"), Kind::Null);
        assert_eq!(k("false"), Kind::Bool);
    }

    #[test]
    fn other_endpoints_are_not_checked() {
        assert_eq!(
            run(Endpoint::Other, json!({"model": "m", "messages": 3})),
            Ok(())
        );
    }
}
