//! The upstream request as it goes on the wire. Weir writes the request line, the
//! headers and (up to `INLINE_BODY_MAX`) the body from one buffer, so a whole request
//! leaves in one `send`: Pingora's client session flushes its header on its own and
//! sends the body in a second segment, which costs a syscall and a wake-up on each
//! side of the connection for every request.

/// Bodies up to this size are copied behind the header; larger ones are written
/// after it, where the copy would cost more than the second write.
pub const INLINE_BODY_MAX: usize = 64 * 1024;

/// What the upstream request carries besides its body.
pub struct RequestHead<'a> {
    /// `host[:port]` as the upstream expects it in `Host`.
    pub authority: &'a str,
    /// Path and query on the upstream.
    pub path: &'a str,
    /// The client's `Accept`, passed on; `None` asks for JSON or SSE.
    pub accept: Option<&'a str>,
    /// The provider's authentication and protocol headers (lowercase names).
    pub headers: &'a [(&'static str, String)],
}

/// A part of the request that cannot be written without breaking its framing.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    /// The path is empty, relative, or holds a space or control byte.
    Path,
    /// The named header's value holds a control byte (CR or LF would split it).
    Value(&'static str),
    /// A header name is not an HTTP token, or names a field weir writes itself.
    Name(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Path => write!(f, "the upstream path is not a valid request target"),
            WireError::Value(name) => write!(f, "the `{name}` header value is not valid"),
            WireError::Name(name) => {
                write!(f, "`{name}` is not a header a provider adapter may set")
            }
        }
    }
}

const USER_AGENT: &str = concat!("weir/", env!("CARGO_PKG_VERSION"));

/// Fields `encode` writes itself, or that would change the request's framing.
const RESERVED: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "accept",
    "accept-encoding",
    "user-agent",
    "expect",
    "upgrade",
];

/// The request's bytes: head, then the body when it is at most `INLINE_BODY_MAX`.
/// Returns whether the body is included; if not, the caller writes it next.
pub fn encode(head: &RequestHead<'_>, body: &[u8], out: &mut Vec<u8>) -> Result<bool, WireError> {
    if !valid_target(head.path) {
        return Err(WireError::Path);
    }
    let inline = body.len() <= INLINE_BODY_MAX;
    out.reserve(256 + head.path.len() + if inline { body.len() } else { 0 });
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(head.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    field(out, "Host", head.authority)?;
    out.extend_from_slice(b"Content-Type: application/json\r\n");
    field(
        out,
        "Accept",
        head.accept.unwrap_or("application/json, text/event-stream"),
    )?;
    // Usage and SSE are read as they pass: no compressed answers.
    out.extend_from_slice(b"Accept-Encoding: identity\r\nUser-Agent: ");
    out.extend_from_slice(USER_AGENT.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    provider_fields(out, head.headers)?;
    out.extend_from_slice(b"\r\n");
    if inline {
        out.extend_from_slice(body);
    }
    Ok(inline)
}

/// A GET without a body (a provider's model list, A6), in the same checked way.
pub fn encode_get(head: &RequestHead<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    if !valid_target(head.path) {
        return Err(WireError::Path);
    }
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(head.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    field(out, "Host", head.authority)?;
    out.extend_from_slice(b"Accept: application/json\r\nAccept-Encoding: identity\r\nUser-Agent: ");
    out.extend_from_slice(USER_AGENT.as_bytes());
    out.extend_from_slice(b"\r\n");
    provider_fields(out, head.headers)?;
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// How a passed-through request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`GET`, a `DELETE` without one).
    None,
    /// The client's declared length (after any change weir made to it).
    Length(u64),
    /// The client gave no length (HTTP/2, chunked): sent chunked.
    Chunked,
}

/// The head of a request passed on verbatim (`GET`/`DELETE`, uploads): the
/// client's method, path and content type; the provider's key and headers.
pub fn encode_forward(
    method: &str,
    head: &RequestHead<'_>,
    content_type: Option<&str>,
    framing: Framing,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    if !valid_target(head.path) || !matches!(method, "GET" | "DELETE" | "POST") {
        return Err(WireError::Path);
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    field(out, "Host", head.authority)?;
    if let Some(ct) = content_type {
        field(out, "Content-Type", ct)?;
    }
    field(out, "Accept", head.accept.unwrap_or("*/*"))?;
    out.extend_from_slice(b"Accept-Encoding: identity\r\nUser-Agent: ");
    out.extend_from_slice(USER_AGENT.as_bytes());
    out.extend_from_slice(b"\r\n");
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    provider_fields(out, head.headers)?;
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// One chunk of a chunked body (an empty `data` ends it).
pub fn chunk(data: &[u8], out: &mut Vec<u8>) {
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The provider's own headers; the framing and the fixed fields are weir's, and a
/// second one would conflict.
fn provider_fields(out: &mut Vec<u8>, headers: &[(&'static str, String)]) -> Result<(), WireError> {
    for (name, value) in headers {
        if name.is_empty()
            || !name.bytes().all(is_token)
            || RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r))
        {
            return Err(WireError::Name(name));
        }
        field(out, name, value)?;
    }
    Ok(())
}

fn field(out: &mut Vec<u8>, name: &'static str, value: &str) -> Result<(), WireError> {
    // RFC 9110 §5.5: visible characters, spaces and tabs, and obs-text; no CR, LF, NUL.
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    {
        return Err(WireError::Value(name));
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    // Optional whitespace around a value is not part of it (RFC 9110 §5.5).
    out.extend_from_slice(value.trim_matches([' ', '\t']).as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// An origin-form request target (`/` then visible ASCII, RFC 9112 §3.2), or the
/// absolute form a forward proxy takes (`http://host/path`).
fn valid_target(path: &str) -> bool {
    (path.starts_with('/') || path.starts_with("http://"))
        && path.bytes().all(|b| b > 0x20 && b < 0x7f)
}

/// Largest answer head a forward proxy may send to CONNECT.
pub const MAX_CONNECT_REPLY: usize = 16 * 1024;

/// The request that opens a tunnel to `target` (`host:port`) through a forward
/// proxy (RFC 9110 §9.3.6).
pub fn connect_request(target: &str, authorization: Option<&str>) -> Result<Vec<u8>, WireError> {
    if target.is_empty() || !target.bytes().all(|b| b > 0x20 && b < 0x7f) {
        return Err(WireError::Path);
    }
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    field(&mut out, "host", target)?;
    if let Some(auth) = authorization {
        field(&mut out, "proxy-authorization", auth)?;
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// A forward proxy's answer to CONNECT so far: `Ok(None)` until its head is
/// complete; then the head's length when it is 2xx (the tunnel is open and what
/// follows is the upstream's), else why not (its status line).
pub fn connect_reply(buf: &[u8]) -> Result<Option<usize>, String> {
    // httparse also ends lines at a bare LF, as RFC 9112 §2.2 lets a recipient do:
    // some proxies answer CONNECT that way.
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut reply = httparse::Response::new(&mut fields);
    let status_line = || {
        let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        String::from_utf8_lossy(line).trim().to_string()
    };
    match reply.parse(buf) {
        Ok(httparse::Status::Complete(len)) => match reply.code {
            Some(200..=299) => Ok(Some(len)),
            _ => Err(format!("the proxy refused the tunnel: {}", status_line())),
        },
        Ok(httparse::Status::Partial) if buf.len() <= MAX_CONNECT_REPLY => Ok(None),
        Ok(httparse::Status::Partial) => Err("the proxy's answer to CONNECT has no end".into()),
        Err(e) => Err(format!(
            "the proxy's answer to CONNECT is not HTTP ({e}): {}",
            status_line()
        )),
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_head_keeps_method_and_content_type_and_frames_the_body() {
        let head = RequestHead {
            authority: "api.example.com",
            path: "/v1/files/file-1",
            accept: None,
            headers: &[("authorization", "Bearer k".to_string())],
        };
        let mut out = Vec::new();
        encode_forward("DELETE", &head, None, Framing::None, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("DELETE /v1/files/file-1 HTTP/1.1\r\nHost: api.example.com\r\n"));
        assert!(!text.contains("Content-Length") && text.ends_with("Bearer k\r\n\r\n"));
        let mut out = Vec::new();
        let ct = Some("multipart/form-data; boundary=x");
        encode_forward("POST", &head, ct, Framing::Chunked, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Transfer-Encoding: chunked\r\n"));
        let mut out = Vec::new();
        assert_eq!(
            encode_forward("POST", &head, Some("a\r\nb"), Framing::None, &mut out),
            Err(WireError::Value("Content-Type"))
        );
        let mut c = Vec::new();
        chunk(&[7u8; 300], &mut c);
        assert!(c.starts_with(b"12c\r\n") && c.ends_with(b"\r\n"));
        c.clear();
        chunk(b"", &mut c);
        assert_eq!(c, b"0\r\n\r\n");
    }

    #[test]
    fn a_tunnel_is_asked_for_and_its_answer_read() {
        let req = connect_request("api.example.com:443", Some("Basic dTpw")).unwrap();
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "CONNECT api.example.com:443 HTTP/1.1\r\nhost: api.example.com:443\r\nproxy-authorization: Basic dTpw\r\n\r\n"
        );
        assert_eq!(connect_request("a b:1", None), Err(WireError::Path));
        assert_eq!(connect_reply(b"HTTP/1.1 200 Connection"), Ok(None));
        let ok = b"HTTP/1.1 200 Connection established\r\nProxy-agent: x\r\n\r\nTLS";
        assert_eq!(connect_reply(ok), Ok(Some(ok.len() - 3)));
        let refused = connect_reply(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n");
        assert_eq!(
            refused,
            Err("the proxy refused the tunnel: HTTP/1.0 407 Proxy Authentication Required".into())
        );
        assert!(connect_reply(&vec![b'a'; MAX_CONNECT_REPLY + 1]).is_err());
        assert!(connect_reply(b"SSH-2.0\r\n\r\n").is_err());
        // Bare LF line ends, as some proxies send.
        let lf = b"HTTP/1.1 200 OK\nProxy-agent: x\n\nTLS";
        assert_eq!(connect_reply(lf), Ok(Some(lf.len() - 3)));
        assert_eq!(connect_reply(b"HTTP/1.1 200 OK\n"), Ok(None));
    }

    fn head<'a>(path: &'a str, headers: &'a [(&'static str, String)]) -> RequestHead<'a> {
        RequestHead {
            authority: "api.example.com",
            path,
            accept: None,
            headers,
        }
    }

    #[test]
    fn a_small_request_is_one_buffer_that_httparse_reads_back() {
        let headers = [("authorization", "Bearer sk-1".to_string())];
        let body = br#"{"model":"m"}"#;
        let mut out = Vec::new();
        let inline = encode(&head("/v1/chat/completions?x=1", &headers), body, &mut out);
        assert_eq!(inline, Ok(true));
        let mut parsed = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut parsed);
        let httparse::Status::Complete(n) = req.parse(&out).expect("parses") else {
            panic!("incomplete head")
        };
        assert_eq!(req.method, Some("POST"));
        assert_eq!(req.path, Some("/v1/chat/completions?x=1"));
        let get = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).expect("utf-8"))
        };
        assert_eq!(get("host"), Some("api.example.com"));
        assert_eq!(get("content-length"), Some("13"));
        assert_eq!(get("authorization"), Some("Bearer sk-1"));
        assert_eq!(get("accept-encoding"), Some("identity"));
        assert_eq!(get("accept"), Some("application/json, text/event-stream"));
        assert_eq!(&out[n..], body);
    }

    #[test]
    fn a_large_body_is_left_for_a_second_write() {
        let body = vec![b'x'; INLINE_BODY_MAX + 1];
        let mut out = Vec::new();
        assert_eq!(
            encode(&head("/v1/embeddings", &[]), &body, &mut out),
            Ok(false)
        );
        assert!(out.ends_with(b"\r\n\r\n"));
        let text = String::from_utf8(out).expect("ascii head");
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn nothing_can_split_the_head() {
        let mut out = Vec::new();
        for path in ["", "v1/x", "/a b", "/a\r\nx: y", "/ü"] {
            assert_eq!(
                encode(&head(path, &[]), b"{}", &mut out),
                Err(WireError::Path),
                "{path:?}"
            );
        }
        let injected = [("x-api-key", "k\r\nx-evil: 1".to_string())];
        assert_eq!(
            encode(&head("/v1", &injected), b"{}", &mut out),
            Err(WireError::Value("x-api-key"))
        );
        for name in ["x key", "Content-Length", "transfer-encoding", "host"] {
            let bad_name = [(name, "v".to_string())];
            assert_eq!(
                encode(&head("/v1", &bad_name), b"{}", &mut out),
                Err(WireError::Name(name))
            );
        }
        let accept = RequestHead {
            accept: Some("text/event-stream\nx: y"),
            ..head("/v1", &[])
        };
        assert_eq!(
            encode(&accept, b"{}", &mut out),
            Err(WireError::Value("Accept"))
        );
    }
}
