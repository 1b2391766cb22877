//! A manager form, turned into the admin API call it stands for. Every write the
//! manager makes is an admin API call with the same validation and permissions as
//! `curl` would get; the form only says which call and how to type its fields.
//!
//! Control fields start with `_`: `_csrf`, `_method`, `_path` (an `/admin/…` path),
//! `_back` (the manager page to return to) and `_form` (which form on it). Data
//! fields carry their JSON type after a colon:
//! `name` string (left out when empty), `email:null` string or `null` when empty,
//! `budget:num` / `budget:numnull` number, `models:list` strings split on commas and
//! new lines (`:listopt` the same, left out when empty), `keys:lines` strings one
//! per line (left out when empty: an empty key box keeps the keys), `active:bool` (a hidden `false`
//! before the checkbox, the last value wins), `config:json` any JSON, `group:q` a
//! query parameter (left out when empty). A field named `_body:list` or
//! `_body:json` is the whole body; `_body:raw` is the body as typed (a CSV).

use serde_json::{Map, Value};
use std::collections::HashMap;

/// The admin call a form stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: String,
    pub path: String,
    /// The query of the call, from `_path`'s own and the `:q` fields.
    pub query: String,
    pub body: Vec<u8>,
    pub back: String,
    pub form: String,
    /// The data fields as typed, to fill the form again after an error.
    pub values: HashMap<String, String>,
    /// `_keep`: fill the form again after success too (docking: discover, then save).
    pub keep: bool,
}

/// A form field that cannot become its JSON type.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Fields whose values are never echoed back into a page.
fn secret(field: &str) -> bool {
    let f = field.to_ascii_lowercase();
    ["key", "secret", "password", "token"]
        .iter()
        .any(|s| f.contains(s))
}

/// Pairs of an `application/x-www-form-urlencoded` body, in order.
pub fn pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// One field of a form body (the last one of that name), or empty.
pub fn field(body: &[u8], name: &str) -> String {
    pairs(body)
        .into_iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

pub fn parse(body: &[u8]) -> Result<Call, FieldError> {
    let mut control: HashMap<String, String> = HashMap::new();
    let mut data: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs(body) {
        if k.starts_with("_body:") {
            data.push((k, v));
        } else if let Some(c) = k.strip_prefix('_') {
            control.insert(c.to_string(), v);
        } else {
            data.push((k, v));
        }
    }
    let take = |k: &str| control.get(k).cloned().unwrap_or_default();
    let (method, path, back) = (
        take("method").to_ascii_uppercase(),
        take("path"),
        take("back"),
    );
    if !path.starts_with("/admin/") {
        return Err(field_error("_path", "must be an /admin/ path"));
    }
    if !matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(field_error("_method", "must be POST, PUT, PATCH or DELETE"));
    }
    let (path, mut query) = match path.split_once('?') {
        Some((p, q)) => (
            p.to_string(),
            form_urlencoded::Serializer::new(q.to_string()),
        ),
        None => (path, form_urlencoded::Serializer::new(String::new())),
    };
    for (k, v) in data.iter().filter(|(k, _)| k.ends_with(":q")) {
        if !v.trim().is_empty() {
            query.append_pair(base(k), v.trim());
        }
    }
    data.retain(|(k, _)| !k.ends_with(":q"));
    let values = data
        .iter()
        .filter(|(k, _)| !secret(k))
        .map(|(k, v)| (base(k).to_string(), v.clone()))
        .collect();
    Ok(Call {
        method,
        path,
        query: query.finish(),
        body: body_of(&data)?,
        back: safe_back(&back),
        form: take("form"),
        values,
        keep: control.contains_key("keep"),
    })
}

/// Only a manager page: a form cannot send the browser anywhere else.
pub fn safe_back(back: &str) -> String {
    let ok = back.starts_with("/manager/") && !back.contains("//") && !back.contains('\\');
    if ok { back } else { "/manager/" }.to_string()
}

fn base(field: &str) -> &str {
    field.split_once(':').map_or(field, |(b, _)| b)
}

fn field_error(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// The JSON body of the data fields; empty when there are none.
fn body_of(data: &[(String, String)]) -> Result<Vec<u8>, FieldError> {
    let mut obj = Map::new();
    let mut whole: Option<Value> = None;
    for (k, v) in data {
        if k == "_body:raw" {
            return Ok(v.as_bytes().to_vec());
        }
        let (name, kind) = k.split_once(':').unwrap_or((k.as_str(), "str"));
        let Some(value) = typed(name, kind, v)? else {
            obj.remove(name);
            continue;
        };
        if name == "_body" {
            whole = Some(value);
        } else if let Some((parent, child)) = name.split_once('.') {
            // `config.appId`: a field of a nested object (a webhook's config).
            let nested = obj
                .entry(parent.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(fields) = nested {
                fields.insert(child.to_string(), value);
            }
        } else {
            obj.insert(name.to_string(), value);
        }
    }
    let body = match whole {
        Some(v) => v,
        None if obj.is_empty() && data.is_empty() => return Ok(Vec::new()),
        None => Value::Object(obj),
    };
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

/// One field's value as its JSON type; `None`: leave the field out.
fn typed(name: &str, kind: &str, v: &str) -> Result<Option<Value>, FieldError> {
    let t = v.trim();
    let number = |t: &str| {
        t.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| field_error(name, &format!("`{t}` is not a number")))
    };
    Ok(match kind {
        "str" if t.is_empty() => None,
        "str" => Some(Value::from(t)),
        "null" if t.is_empty() => Some(Value::Null),
        "null" => Some(Value::from(t)),
        "num" if t.is_empty() => None,
        "num" => Some(number(t)?),
        "numnull" if t.is_empty() => Some(Value::Null),
        "numnull" => Some(number(t)?),
        "int" if t.is_empty() => None,
        "int" => Some(
            t.parse::<i64>()
                .map(Value::from)
                .map_err(|_| field_error(name, &format!("`{t}` is not a whole number")))?,
        ),
        "bool" => Some(Value::Bool(matches!(t, "on" | "true" | "1" | "yes"))),
        "list" => Some(Value::from(split(t, |c| c == ',' || c == '\n'))),
        "listopt" | "lines" if t.is_empty() => None,
        "listopt" => Some(Value::from(split(t, |c| c == ',' || c == '\n'))),
        "lines" => Some(Value::from(split(t, |c| c == '\n'))),
        "json" if t.is_empty() => None,
        "json" => Some(
            serde_json::from_str(t)
                .map_err(|e| field_error(name, &format!("not valid JSON: {e}")))?,
        ),
        other => return Err(field_error(name, &format!("unknown field type `{other}`"))),
    })
}

fn split(t: &str, sep: impl Fn(char) -> bool) -> Vec<String> {
    t.split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(call: &Call) -> Value {
        serde_json::from_slice(&call.body).unwrap()
    }

    #[test]
    fn fields_take_their_types() {
        let c = parse(
            b"_csrf=t&_method=patch&_path=/admin/keys/3&_back=/manager/keys&_form=edit-3\
              &name=+ann+&email:null=&monthly_budget:numnull=12.5&models:list=a,+b%0Ac\
              &active:bool=false&active:bool=on&expires_at:null=",
        )
        .unwrap();
        assert_eq!(
            (c.method.as_str(), c.path.as_str()),
            ("PATCH", "/admin/keys/3")
        );
        assert_eq!(
            (c.back.as_str(), c.form.as_str()),
            ("/manager/keys", "edit-3")
        );
        assert_eq!(field(b"_csrf=a&x=1&_csrf=t", "_csrf"), "t");
        assert_eq!(
            body(&c),
            json!({"name": "ann", "email": null, "monthly_budget": 12.5,
                   "models": ["a", "b", "c"], "active": true, "expires_at": null})
        );
        assert_eq!(c.values["name"], " ann ");
    }

    #[test]
    fn whole_bodies_empty_bodies_and_secrets() {
        let c = parse(b"_method=PUT&_path=/admin/groups/g/models&_body:list=m1,m2").unwrap();
        assert_eq!(body(&c), json!(["m1", "m2"]));
        let c = parse(b"_method=POST&_path=/admin/keys/3/reset").unwrap();
        assert!(c.body.is_empty());
        assert_eq!(c.back, "/manager/");
        let c = parse(b"_method=POST&_path=/admin/channels&keys:lines=sk-1%0Ask-2&name=c").unwrap();
        assert_eq!(body(&c), json!({"keys": ["sk-1", "sk-2"], "name": "c"}));
        assert!(!c.values.contains_key("keys"));
    }

    #[test]
    fn dotted_names_fill_nested_objects() {
        let call = parse(b"_method=POST&_path=/admin/webhooks&name=t&config.appId=a&config.modelId=m&config.encryptKey=").unwrap();
        assert_eq!(
            body(&call),
            json!({"name": "t", "config": {"appId": "a", "modelId": "m"}})
        );
    }

    #[test]
    fn query_fields_and_raw_bodies() {
        let c = parse(
            b"_method=POST&_path=/admin/keys/import?x=1&group:q=team&dry_run:q=&_body:raw=name,email%0Aa,a@x.io",
        )
        .unwrap();
        assert_eq!(
            (c.path.as_str(), c.query.as_str()),
            ("/admin/keys/import", "x=1&group=team")
        );
        assert_eq!(c.body, b"name,email\na,a@x.io");
    }

    #[test]
    fn bad_fields_and_places_are_named() {
        let e = parse(b"_method=POST&_path=/admin/keys&monthly_budget:num=lots").unwrap_err();
        assert_eq!(e.field, "monthly_budget");
        assert!(e.message.contains("lots"));
        let e = parse(b"_method=POST&_path=/admin/models&config:json={").unwrap_err();
        assert_eq!(e.field, "config");
        assert_eq!(
            parse(b"_method=POST&_path=/metrics").unwrap_err().field,
            "_path"
        );
        assert_eq!(
            parse(b"_method=GET&_path=/admin/keys").unwrap_err().field,
            "_method"
        );
        let c = parse(b"_method=POST&_path=/admin/keys&_back=//evil.example/").unwrap();
        assert_eq!(c.back, "/manager/");
        let c = parse(b"_method=POST&_path=/admin/keys&_back=https://evil.example/").unwrap();
        assert_eq!(c.back, "/manager/");
    }
}
