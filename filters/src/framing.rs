//! Request framing an edge proxy must not guess about. Where a request could be
//! read two ways (`Content-Length` and `Transfer-Encoding` both, two lengths, a
//! coding other than `chunked`), a server behind a proxy that guessed differently
//! would see a second, smuggled request; weir refuses such a request (400) and
//! closes the connection, as it does an oversize head (431). Pingora already
//! refuses conflicting lengths and a final coding other than `chunked`; it
//! accepts, and quietly repairs, the rest, which is checked here.

use crate::error::GatewayError;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderMap;

/// Checks a request head as read: `raw` its bytes, `headers` as parsed.
pub fn check(raw: &[u8], headers: &HeaderMap, max_header: usize) -> Result<(), GatewayError> {
    if raw.len() > max_header {
        return Err(GatewayError::HeaderTooLarge(format!(
            "the request's header section exceeds the limit of {max_header} bytes (server.max_header)"
        )));
    }
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Err(ambiguous("`Transfer-Encoding` must be a single `chunked`"));
        }
        // Pingora drops `Content-Length` when both came: only the raw head tells.
        if raw_has_content_length(raw) {
            return Err(ambiguous(
                "`Content-Length` and `Transfer-Encoding` together",
            ));
        }
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.next().is_some() || first.as_bytes().contains(&b',') {
            return Err(ambiguous("more than one `Content-Length`"));
        }
    }
    Ok(())
}

/// The answer to a head Pingora could not read (`detail` its error): 431 when it
/// was too large or had too many fields, else 400. Either way the connection
/// closes after it.
pub fn unreadable(detail: &str) -> GatewayError {
    if detail.contains("header larger than") {
        GatewayError::HeaderTooLarge("the request's header section exceeds 1 MiB".into())
    } else if detail.contains("too many headers") {
        GatewayError::HeaderTooLarge("the request has more than 256 header fields".into())
    } else {
        GatewayError::BadRequest("the request is not valid HTTP".into())
    }
}

fn raw_has_content_length(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length:";
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
}

fn ambiguous(what: &str) -> GatewayError {
    GatewayError::AmbiguousFraming(format!(
        "the request's framing is ambiguous ({what}); weir does not guess where a body ends"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[&str]) -> (Vec<u8>, HeaderMap) {
        let mut raw = b"POST /v1/chat/completions HTTP/1.1\r\n".to_vec();
        let mut map = HeaderMap::new();
        for line in lines {
            raw.extend_from_slice(line.as_bytes());
            raw.extend_from_slice(b"\r\n");
            let (name, value) = line.split_once(':').unwrap();
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            map.append(name, value.trim().parse().unwrap());
        }
        raw.extend_from_slice(b"\r\n");
        (raw, map)
    }

    fn code(lines: &[&str]) -> Option<&'static str> {
        let (raw, mut map) = head(lines);
        if map.contains_key(TRANSFER_ENCODING) {
            map.remove(CONTENT_LENGTH); // as Pingora does
        }
        check(&raw, &map, 64 * 1024).err().map(|e| e.code())
    }

    #[test]
    fn plain_framing_passes() {
        assert_eq!(code(&["Host: a", "Content-Length: 12"]), None);
        assert_eq!(code(&["Host: a", "Transfer-Encoding: chunked"]), None);
        assert_eq!(code(&["Host: a", "transfer-encoding: Chunked"]), None);
        assert_eq!(
            code(&[
                "Host: a",
                "X-Content-Length: 3",
                "Transfer-Encoding: chunked"
            ]),
            None
        );
        assert_eq!(code(&["Host: a"]), None);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let bad = "invalid_framing";
        assert_eq!(
            code(&["Content-Length: 5", "Transfer-Encoding: chunked"]),
            Some(bad)
        );
        assert_eq!(
            code(&["Transfer-Encoding: chunked", "content-LENGTH: 5"]),
            Some(bad)
        );
        assert_eq!(code(&["Content-Length: 5", "Content-Length: 5"]), Some(bad));
        assert_eq!(code(&["Content-Length: 5, 5"]), Some(bad));
        assert_eq!(
            code(&["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]),
            Some(bad)
        );
        assert_eq!(code(&["Transfer-Encoding: gzip, chunked"]), Some(bad));
    }

    #[test]
    fn an_oversize_head_is_431() {
        let big = format!("X-Big: {}", "a".repeat(70 * 1024));
        let (raw, map) = head(&[&big]);
        let e = check(&raw, &map, 64 * 1024).unwrap_err();
        assert_eq!((e.status(), e.code()), (431, "request_header_too_large"));
        assert_eq!(
            unreadable("Request header larger than 1048575").status(),
            431
        );
        assert_eq!(unreadable("buf: ... cause: too many headers").status(), 431);
        assert_eq!(unreadable("buf: GARBAGE").status(), 400);
    }
}
