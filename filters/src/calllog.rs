//! The call log (A4) as data: what `GET /admin/logs` may ask (filters, a page, a
//! cursor), and what of a failed call is kept (its bodies, without the client's key,
//! cut to size). The store runs the query; nothing here touches a database.

use crate::accounts::parse_time;
use crate::GatewayError;

/// Rows a page holds unless `limit` says otherwise, and at most.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// `status=` of a log query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// `2xx`, `4xx`, `5xx` (any class 1 to 5).
    Class(u16),
    /// One status, e.g. `429`.
    Exact(u16),
}

impl StatusFilter {
    pub fn parse(v: &str) -> Result<StatusFilter, GatewayError> {
        let bad = || {
            GatewayError::BadRequest(format!(
                "status `{v}`: use a class such as 2xx, 4xx, 5xx or a status such as 429"
            ))
        };
        let b = v.as_bytes();
        if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
            return Err(bad());
        }
        if v[1..].eq_ignore_ascii_case("xx") {
            return Ok(StatusFilter::Class(u16::from(b[0] - b'0')));
        }
        v.parse().map(StatusFilter::Exact).map_err(|_| bad())
    }

    /// The indexed status class the rows must have.
    pub fn class(self) -> u16 {
        match self {
            StatusFilter::Class(c) => c,
            StatusFilter::Exact(s) => s / 100,
        }
    }
}

/// Where a page ends: the `(ts, id)` of its last row. Pages run newest first, so the
/// next page holds the rows strictly before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts: i64,
    pub id: i64,
}

impl Cursor {
    /// `TS-ID`: opaque to clients, who only hand back what `next` said.
    pub fn encode(self) -> String {
        format!("{}-{}", self.ts, self.id)
    }

    pub fn parse(v: &str) -> Result<Cursor, GatewayError> {
        let bad = || {
            GatewayError::BadRequest(format!(
                "before `{v}` is not a cursor; pass the `next` of a previous page"
            ))
        };
        let (ts, id) = v.split_once('-').ok_or_else(bad)?;
        let (ts, id) = (
            ts.parse().map_err(|_| bad())?,
            id.parse().map_err(|_| bad())?,
        );
        if ts < 0 || id < 0 {
            return Err(bad());
        }
        Ok(Cursor { ts, id })
    }
}

/// `GET /admin/logs?key_id=&gateway=&model=&channel=&status=&from=&to=&q=&limit=&before=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub key_id: Option<i64>,
    pub gateway: Option<String>,
    pub model: Option<String>,
    pub channel: Option<String>,
    pub status: Option<StatusFilter>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub to: Option<i64>,
    /// Text the row's error, model, identity or attempts contain.
    pub q: Option<String>,
    pub limit: u32,
    pub before: Option<Cursor>,
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            key_id: None,
            gateway: None,
            model: None,
            channel: None,
            status: None,
            from: None,
            to: None,
            q: None,
            limit: DEFAULT_LIMIT,
            before: None,
        }
    }
}

/// `GET /admin/logs/export`: the filters of a query and a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Ndjson,
}

impl LogQuery {
    /// Parses the query string; `format` is accepted only when `export` (it is then
    /// returned, CSV by default).
    pub fn parse(query: &str, export: bool) -> Result<(LogQuery, ExportFormat), GatewayError> {
        let mut q = LogQuery::default();
        let mut format = ExportFormat::Csv;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let text = || Some(v.to_string()).filter(|s| !s.is_empty());
            match k.as_ref() {
                "key_id" => q.key_id = Some(number("key_id", &v)?),
                "gateway" => q.gateway = text(),
                "model" => q.model = text(),
                "channel" => q.channel = text(),
                "status" => q.status = Some(StatusFilter::parse(&v)?),
                "from" => q.from = Some(parse_time(&v)?),
                "to" => q.to = Some(parse_time(&v)?),
                "q" => q.q = text(),
                "limit" => q.limit = limit(&v)?,
                "before" => q.before = Some(Cursor::parse(&v)?),
                "format" if export => format = export_format(&v)?,
                other => {
                    return Err(GatewayError::BadRequest(format!(
                        "unknown query parameter `{other}`"
                    )))
                }
            }
        }
        Ok((q, format))
    }
}

fn number(what: &str, v: &str) -> Result<i64, GatewayError> {
    v.parse()
        .map_err(|_| GatewayError::BadRequest(format!("{what} `{v}` is not a number")))
}

fn limit(v: &str) -> Result<u32, GatewayError> {
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(GatewayError::BadRequest(format!(
            "limit `{v}`: use a number from 1 to {MAX_LIMIT}"
        ))),
    }
}

fn export_format(v: &str) -> Result<ExportFormat, GatewayError> {
    match v {
        "csv" => Ok(ExportFormat::Csv),
        "ndjson" => Ok(ExportFormat::Ndjson),
        _ => Err(GatewayError::BadRequest(format!(
            "format `{v}`: use csv or ndjson"
        ))),
    }
}

/// Top-level body fields that carry a caller's secret whatever the gateway says.
const SECRET_FIELDS: &[&str] = &["api_key", "apiKey", "access_token"];

/// A failed call's request body as the log keeps it: the client's key field (the
/// gateway's `key_from: body:FIELD`) and well-known secret fields removed, cut at
/// `cap` bytes (on a character boundary, marked).
pub fn kept_request_body(body: &[u8], key_field: Option<&str>, cap: usize) -> Vec<u8> {
    let secret = |k: &str| key_field == Some(k) || SECRET_FIELDS.contains(&k);
    let cleaned = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => {
            let before = map.len();
            map.retain(|k, _| !secret(k));
            if map.len() == before {
                None
            } else {
                serde_json::to_vec(&map).ok()
            }
        }
        _ => None,
    };
    cut(cleaned.as_deref().unwrap_or(body), cap)
}

/// An error body as the log keeps it: any of `secrets` (the channel's provider keys,
/// which some upstreams echo) replaced by its hint, cut at `cap` bytes.
pub fn kept_error_body(body: &[u8], secrets: &[String], cap: usize) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), &crate::config::key_hint(s));
        }
    }
    cut(text.as_bytes(), cap)
}

/// What was cut off is said at the end, so a reader knows the body is partial.
fn cut(bytes: &[u8], cap: usize) -> Vec<u8> {
    if bytes.len() <= cap {
        return bytes.to_vec();
    }
    let mut end = cap;
    // Back off to a UTF-8 boundary: at most 3 continuation bytes.
    while end > 0 && end > cap.saturating_sub(3) && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    let mut out = bytes[..end].to_vec();
    out.extend_from_slice(format!("…[{} more bytes]", bytes.len() - end).as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_name_what_is_wrong() {
        let (q, f) = LogQuery::parse(
            "key_id=3&gateway=team%2Da&status=5xx&from=2026-11-01&limit=50&before=1800000000-42",
            false,
        )
        .unwrap();
        assert_eq!(q.key_id, Some(3));
        assert_eq!(q.gateway.as_deref(), Some("team-a"));
        assert_eq!(q.status, Some(StatusFilter::Class(5)));
        assert_eq!(q.from, Some(1_793_491_200));
        assert_eq!(q.limit, 50);
        assert_eq!(
            q.before,
            Some(Cursor {
                ts: 1_800_000_000,
                id: 42
            })
        );
        assert_eq!(f, ExportFormat::Csv);
        assert_eq!(LogQuery::parse("", false).unwrap().0.limit, DEFAULT_LIMIT);
        for bad in [
            "status=6xx",
            "status=abc",
            "status=20",
            "limit=0",
            "limit=1001",
            "limit=x",
            "before=garbage",
            "before=1-",
            "before=-1-2",
            "key_id=k",
            "from=yesterday",
            "colour=red",
            "format=csv",
        ] {
            let e = LogQuery::parse(bad, false).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
        assert_eq!(
            LogQuery::parse("format=ndjson", true).unwrap().1,
            ExportFormat::Ndjson
        );
        assert!(LogQuery::parse("format=xml", true).is_err());
    }

    #[test]
    fn status_filters_know_their_class() {
        assert_eq!(
            StatusFilter::parse("429").unwrap(),
            StatusFilter::Exact(429)
        );
        assert_eq!(StatusFilter::parse("4XX").unwrap(), StatusFilter::Class(4));
        assert_eq!(StatusFilter::Exact(503).class(), 5);
    }

    #[test]
    fn cursors_round_trip() {
        let c = Cursor { ts: 17, id: 9 };
        assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
    }

    #[test]
    fn kept_request_bodies_lose_their_keys() {
        let body =
            br#"{"model":"m","user_key":"sk-secret-1234567890","api_key":"x","messages":[]}"#;
        let kept = kept_request_body(body, Some("user_key"), 1024);
        let v: serde_json::Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(v["model"], "m");
        assert!(v.get("user_key").is_none() && v.get("api_key").is_none());
        // Nothing to remove: the bytes as sent.
        assert_eq!(
            kept_request_body(br#"{"a": 1}"#, None, 1024),
            br#"{"a": 1}"#
        );
        assert_eq!(kept_request_body(b"not json", Some("k"), 1024), b"not json");
    }

    #[test]
    fn kept_bodies_are_cut_on_a_character_boundary() {
        let body = "é".repeat(100);
        let kept = String::from_utf8(kept_request_body(body.as_bytes(), None, 11)).unwrap();
        assert!(kept.starts_with("ééééé…["), "{kept}");
        assert!(kept.ends_with("more bytes]"));
    }

    #[test]
    fn kept_error_bodies_hide_provider_keys() {
        let keys = vec!["sk-provider-key-0123456789".to_string()];
        let kept = kept_error_body(
            br#"{"error":"Incorrect API key provided: sk-provider-key-0123456789"}"#,
            &keys,
            1024,
        );
        let text = String::from_utf8(kept).unwrap();
        assert!(!text.contains("sk-provider"), "{text}");
        assert!(text.contains("…6789"));
    }
}
