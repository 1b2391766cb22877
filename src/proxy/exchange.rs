//! One attempt's exchange with an upstream: weir sends the request itself with
//! Pingora's pooled `Connector` rather than through pingora-proxy, because stock
//! pingora-proxy picks the peer before the body is read and can replay a body only
//! up to 64 KiB, which failover needs for every attempt. Which channel and key each
//! attempt uses, and what its outcome means, is `weir_filters::failover`'s; this
//! file sends the bytes and reports what came back.

use crate::state::AppState;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession as Session;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{ErrorType, RetryType};
use pingora_http::ResponseHeader;
use std::borrow::Cow;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use weir_filters::adapters;
use weir_filters::config::{Channel, ChannelType};
use weir_filters::failover::{parse_retry_after, FailKind, Outcome};
use weir_filters::mock::{self, MockAnswer};
use weir_filters::request_body::JsonBody;
use weir_filters::route::Endpoint;
use weir_filters::upstream_request::{self, RequestHead};

/// An HTTP/1.1 session with an upstream. Weir writes the request itself (one
/// buffer, see `weir_filters::upstream_request`) and lets Pingora read the answer.
pub type Upstream = pingora_core::protocols::http::v1::client::HttpSession;

/// An upstream that answered with a status line and headers.
pub enum Answer {
    Upstream {
        up: Box<Upstream>,
        peer: Box<HttpPeer>,
        header: Box<ResponseHeader>,
    },
    Mock(MockAnswer),
    /// A provider's complete JSON answer (or error), already in OpenAI's shape.
    Translated {
        answer: MockAnswer,
        /// The provider said the key is the problem (Gemini's 400 `API_KEY_INVALID`).
        key_rejected: bool,
    },
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Answer::Upstream { header, .. } => header.status.as_u16(),
            Answer::Mock(m) | Answer::Translated { answer: m, .. } => m.status,
        }
    }

    /// What the failover plan is told about this answer.
    pub fn outcome(&self) -> Outcome<'static> {
        Outcome::Answered {
            status: self.status(),
            retry_after: self.retry_after(),
            key_rejected: matches!(
                self,
                Answer::Translated {
                    key_rejected: true,
                    ..
                }
            ),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Answer::Upstream { header, .. } => header
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
            Answer::Mock(_) | Answer::Translated { .. } => None,
        }
    }
}

/// Why an attempt produced no answer.
#[derive(Debug)]
pub enum AttemptError {
    /// Connect error, timeout, or a connection that broke before the answer.
    Failed(FailKind, String),
    ClientGone,
    /// The channel cannot take this request at all (an endpoint its provider lacks).
    Refused(weir_filters::GatewayError),
}

impl AttemptError {
    /// For a channel test's report: what went wrong, with the detail.
    pub fn describe(&self) -> String {
        match self {
            AttemptError::Failed(kind, detail) => kind.describe(detail),
            AttemptError::ClientGone => "the client left".into(),
            AttemptError::Refused(e) => e.to_string(),
        }
    }

    /// What the failover plan is told; `None` when the client left (nothing learned).
    pub fn outcome(&self) -> Option<Outcome<'_>> {
        match self {
            AttemptError::Failed(kind, detail) => Some(Outcome::Failed {
                kind: *kind,
                detail,
            }),
            AttemptError::ClientGone => None,
            AttemptError::Refused(e) => Some(Outcome::Refused(e.clone())),
        }
    }
}

fn timeout(detail: String) -> AttemptError {
    AttemptError::Failed(FailKind::Timeout, detail)
}

fn broke(detail: impl Into<String>) -> AttemptError {
    AttemptError::Failed(FailKind::Io, detail.into())
}

/// What one exchange needs to know about the request.
pub struct Outbound<'a> {
    pub endpoint: Endpoint,
    /// Path and query after `/v1`, e.g. `/chat/completions?x=1`.
    pub rest: &'a str,
    /// The OpenAI body after every rewrite; adapters turn it into the provider's.
    pub body: Bytes,
    pub accept: Option<&'a str>,
    /// The model name the upstream is asked for (an Azure deployment, a Gemini model).
    pub upstream_model: &'a str,
    /// The model name the client asked for (translated answers carry it).
    pub client_model: &'a str,
    /// The client's own protocol headers, for a native call (`anthropic-beta`).
    pub client_headers: &'a [(&'static str, String)],
}

fn classify_error(e: &pingora_error::Error) -> AttemptError {
    let text = e.to_string();
    let kind = match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => FailKind::Timeout,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => FailKind::Timeout,
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::ConnectProxyFailure
        | ErrorType::SocketError
        | ErrorType::BindError => FailKind::Connect,
        _ => FailKind::Io,
    };
    AttemptError::Failed(kind, text)
}

/// Informational (1xx) responses skipped before the answer, at most.
const MAX_INFORMATIONAL: usize = 8;

/// How many pooled connections found closed by the upstream are replaced before
/// the failure counts.
const STALE_REUSE_RETRIES: usize = 3;

/// Sends one request to one channel with one key and waits for the response header.
pub async fn exchange(
    state: &AppState,
    session: Option<&mut Session>,
    channel: &Channel,
    key: Option<&str>,
    out: &Outbound<'_>,
    dns_ttl: Duration,
) -> Result<Answer, AttemptError> {
    let Some(upstream) = &channel.upstream else {
        return mock_answer(channel, out);
    };
    // The provider's path, headers (its way of sending the key) and body.
    let call = adapters::prepare(
        channel,
        out.endpoint,
        out.rest,
        out.body.clone(),
        out.upstream_model,
        key,
    )
    .map_err(AttemptError::Refused)?;
    let mut call = call;
    if !out.client_headers.is_empty() {
        call.headers = adapters::anthropic::with_client_headers(call.headers, out.client_headers);
    }
    let peer = peer(state, channel, upstream, dns_ttl).await?;
    let (path, headers) = target(channel, upstream, &call.path, &call.headers);
    let head = RequestHead {
        authority: upstream.authority.as_str(),
        path: &path,
        accept: out.accept,
        headers: &headers,
    };
    let mut wire = Vec::new();
    let inline =
        upstream_request::encode(&head, &call.body, &mut wire).map_err(|e| broke(e.to_string()))?;
    let request = Wire {
        head: &wire,
        body: (!inline).then_some(&call.body[..]),
    };
    let up = send(state, session, channel, &peer, request).await?;
    let Some(header) = up.resp_header().cloned() else {
        return Err(broke("no response header"));
    };
    // Only in absolute form: through a tunnel, a 407 is the upstream's own.
    if let (Some(proxy), false, 407) = (&channel.proxy, upstream.tls, header.status.as_u16()) {
        // The forward proxy's refusal, not the upstream's answer: the channel's
        // failure (its proxy credentials are wrong), never relayed as the answer.
        return Err(AttemptError::Failed(
            FailKind::Connect,
            format!("the proxy {} refused the request: HTTP 407", proxy.shown),
        ));
    }
    let sse = header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    // A Messages client's native call reads Anthropic's answer as it is.
    if adapters::translates(channel.kind) && !sse && out.endpoint != Endpoint::Messages {
        let deadline = Instant::now() + channel.total_timeout;
        let read = read_translated(
            state,
            up,
            &peer,
            &header,
            channel,
            out.client_model,
            deadline,
        );
        return Box::pin(read).await;
    }
    Ok(Answer::Upstream {
        up,
        peer,
        header: Box::new(header),
    })
}

/// Largest model list read when docking.
const MAX_LIST: usize = 4 * 1024 * 1024;

/// A GET on the channel's upstream (its model list, A6): the status and the body,
/// read within the channel's total timeout.
pub async fn fetch(
    state: &AppState,
    channel: &Channel,
    get: &adapters::Outgoing,
) -> Result<(u16, Vec<u8>), AttemptError> {
    call(state, channel, get, false).await
}

/// One request on the channel's upstream, a GET or (`post`) a JSON POST of `out`'s
/// body: the status and the body, read within the channel's total timeout. The
/// bot's calls to Feishu and to weir itself use it too, on a channel of their own.
pub async fn call(
    state: &AppState,
    channel: &Channel,
    get: &adapters::Outgoing,
    post: bool,
) -> Result<(u16, Vec<u8>), AttemptError> {
    let Some(upstream) = &channel.upstream else {
        return Err(broke("the mock channel has no upstream to list"));
    };
    let deadline = Instant::now() + channel.total_timeout;
    let peer = peer(
        state,
        channel,
        upstream,
        state.snapshot().server().dns_ttl.0,
    )
    .await?;
    let (path, headers) = target(channel, upstream, &get.path, &get.headers);
    let head = RequestHead {
        authority: upstream.authority.as_str(),
        path: &path,
        accept: None,
        headers: &headers,
    };
    let mut wire = Vec::new();
    let inline = if post {
        upstream_request::encode(&head, &get.body, &mut wire)
    } else {
        upstream_request::encode_get(&head, &mut wire).map(|()| true)
    }
    .map_err(|e| broke(e.to_string()))?;
    let request = Wire {
        head: &wire,
        body: (!inline).then_some(&get.body[..]),
    };
    let mut up = send(state, None, channel, &peer, request).await?;
    let status = up.resp_header().map(|h| h.status.as_u16()).unwrap_or(0);
    let mut body = Vec::new();
    let read = async {
        while let Some(chunk) = up.read_body_bytes().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_LIST {
                return Err("the answer is larger than 4 MiB".to_string());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(Ok(())) => release(state, up, &peer).await,
        Ok(Err(e)) => return Err(broke(e)),
        Err(_) => return Err(timeout("the answer did not end within the timeout".into())),
    }
    Ok((status, body))
}

/// Where a verbatim request (`proxy::forward`) goes: the channel's peer, and the
/// request target and headers as they go on the wire (through its proxy too).
pub async fn forward_target(
    state: &AppState,
    channel: &Channel,
    out: &adapters::Outgoing,
    dns_ttl: Duration,
) -> Result<(Box<HttpPeer>, String, Vec<(&'static str, String)>), AttemptError> {
    let Some(upstream) = &channel.upstream else {
        return Err(broke("the mock channel has no upstream"));
    };
    let peer = peer(state, channel, upstream, dns_ttl).await?;
    let (path, headers) = target(channel, upstream, &out.path, &out.headers);
    Ok((peer, path.into_owned(), headers.into_owned()))
}

/// A new connection to the peer: a streamed body cannot be sent again on a
/// fresh one if a pooled connection turns out closed.
pub async fn connect(state: &AppState, peer: &HttpPeer) -> Result<Stream, AttemptError> {
    Box::pin(state.connector.new_stream(peer))
        .await
        .map_err(|e| classify_error(&e))
}

/// The answer's head on a connection the request was written to.
pub async fn read_head(
    stream: Stream,
    peer: &HttpPeer,
    channel: &Channel,
) -> Result<Answer, AttemptError> {
    let mut up = Box::new(Upstream::new_with_options(stream, peer));
    up.read_timeout = Some(channel.first_byte_timeout);
    for _ in 0..=MAX_INFORMATIONAL {
        up.read_response().await.map_err(|e| classify_error(&e))?;
        let Some(header) = up.resp_header().cloned() else {
            return Err(broke("no response header"));
        };
        if !header.status.is_informational() {
            return Ok(Answer::Upstream {
                up,
                peer: Box::new(peer.clone()),
                header: Box::new(header),
            });
        }
    }
    Err(broke("the upstream sent only informational responses"))
}

/// `mock`: answered here, the same way a server would.
fn mock_answer(channel: &Channel, out: &Outbound<'_>) -> Result<Answer, AttemptError> {
    let body = JsonBody::parse(&out.body).map_err(|e| broke(e.to_string()))?;
    let facts = body.facts().map_err(|e| broke(e.to_string()))?;
    debug_assert_eq!(channel.kind, ChannelType::Mock);
    Ok(Answer::Mock(mock::answer(
        out.endpoint,
        &body,
        &facts.model,
        facts.stream,
        facts.client_wants_usage,
    )))
}

/// The provider's headers, borrowed unless a proxy adds its own.
type Headers<'a> = Cow<'a, [(&'static str, String)]>;

/// The request target and the provider's headers as they go on the wire: through
/// a forward proxy, an `http` upstream is asked in absolute form, with the
/// proxy's credentials (an `https` one is tunnelled and asked as usual).
fn target<'a>(
    channel: &Channel,
    upstream: &weir_filters::config::Upstream,
    path: &'a str,
    headers: &'a [(&'static str, String)],
) -> (Cow<'a, str>, Headers<'a>) {
    match &channel.proxy {
        Some(proxy) if !upstream.tls => {
            let mut with = headers.to_vec();
            if let Some(auth) = &proxy.authorization {
                with.push(("proxy-authorization", auth.clone()));
            }
            let absolute = format!("http://{}{path}", upstream.authority);
            (Cow::Owned(absolute), Cow::Owned(with))
        }
        _ => (Cow::Borrowed(path), Cow::Borrowed(headers)),
    }
}

/// The channel's upstream, resolved within its connect timeout, with its timeouts.
async fn peer(
    state: &AppState,
    channel: &Channel,
    upstream: &weir_filters::config::Upstream,
    dns_ttl: Duration,
) -> Result<Box<HttpPeer>, AttemptError> {
    if let Some(proxy) = &channel.proxy {
        // The proxy resolves the upstream's name; the address here is a stand-in
        // the proxy connector never dials.
        let stand_in = std::net::SocketAddr::from(([0, 0, 0, 0], upstream.port));
        let mut peer = Box::new(HttpPeer::new(stand_in, upstream.tls, upstream.host.clone()));
        super::forward_proxy::route_through(&mut peer, proxy, upstream, channel.connect_timeout);
        set_timeouts(&mut peer, channel);
        return Ok(peer);
    }
    let resolve = state.dns.resolve(&upstream.host, upstream.port, dns_ttl);
    let addr = match tokio::time::timeout(channel.connect_timeout, resolve).await {
        Ok(r) => r.map_err(|e| AttemptError::Failed(FailKind::Connect, e))?,
        Err(_) => {
            return Err(timeout(format!(
                "resolving {} took over {:?}",
                upstream.host, channel.connect_timeout
            )))
        }
    };
    // Boxed once: the answer carries it to the relay, which returns the connection.
    let mut peer = Box::new(HttpPeer::new(addr, upstream.tls, upstream.host.clone()));
    set_timeouts(&mut peer, channel);
    Ok(peer)
}

fn set_timeouts(peer: &mut HttpPeer, channel: &Channel) {
    peer.options.connection_timeout = Some(channel.connect_timeout);
    peer.options.total_connection_timeout = Some(channel.connect_timeout.saturating_mul(2));
    peer.options.read_timeout = Some(channel.first_byte_timeout);
    peer.options.write_timeout = Some(channel.first_byte_timeout);
    peer.options.idle_timeout = Some(Duration::from_secs(60));
}

/// The request's bytes: the head (with the body when it was small enough to go
/// along), then a large body on its own.
#[derive(Clone, Copy)]
struct Wire<'a> {
    head: &'a [u8],
    body: Option<&'a [u8]>,
}

/// Sends the request on a pooled or new connection and reads the response header,
/// within the channel's first-byte timeout, stopping at once if the client leaves.
/// A pooled connection the upstream had already closed is replaced, not counted.
async fn send(
    state: &AppState,
    mut session: Option<&mut Session>,
    channel: &Channel,
    peer: &HttpPeer,
    request: Wire<'_>,
) -> Result<Box<Upstream>, AttemptError> {
    let wait = channel.first_byte_timeout.min(channel.total_timeout);
    let deadline = Instant::now() + wait;
    let mut stale = 0;
    loop {
        // Boxed: the connect future is ~9 KiB and would otherwise stay reserved in
        // every request's future for as long as its stream is relayed.
        let (stream, reused) = Box::pin(state.connector.get_stream(peer))
            .await
            .map_err(|e| classify_error(&e))?;
        let sent = round_trip(stream, peer, channel, request);
        let result = tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), sent) => match r {
                Ok(r) => r,
                Err(_) => return Err(timeout(format!("no response header within {wait:?}"))),
            },
            _ = client_left(session.as_deref_mut()) => return Err(AttemptError::ClientGone),
        };
        match result {
            Ok(up) => return Ok(up),
            Err(mut e) => {
                // Pingora decides whether the error can only be a pooled connection
                // the upstream had already closed (nothing was processed): then a
                // fresh connection is not a retry and costs nothing upstream.
                e.retry.decide_reuse(reused);
                if reused && e.retry() && stale < STALE_REUSE_RETRIES {
                    stale += 1;
                    continue;
                }
                return Err(classify_error(&e));
            }
        }
    }
}

/// Resolves when the client leaves; never for a request weir makes itself (a
/// channel test or probe, which has no client).
async fn client_left(session: Option<&mut Session>) {
    match session {
        Some(s) => {
            let _ = s.read_body_or_idle(true).await;
        }
        None => std::future::pending().await,
    }
}

/// Writes the request and reads up to the answer's header, skipping `100 Continue`
/// and `103 Early Hints`.
async fn round_trip(
    mut stream: Stream,
    peer: &HttpPeer,
    channel: &Channel,
    request: Wire<'_>,
) -> pingora_error::Result<Box<Upstream>> {
    write_request(&mut stream, request.head, request.body).await?;
    // Boxed once here: the session is large, and it travels back through three
    // futures' results to the relay.
    let mut up = Box::new(Upstream::new_with_options(stream, peer));
    up.read_timeout = Some(channel.first_byte_timeout);
    for _ in 0..=MAX_INFORMATIONAL {
        up.read_response().await?;
        if !up
            .resp_header()
            .is_some_and(|h| h.status.is_informational())
        {
            return Ok(up);
        }
    }
    Err(pingora_error::Error::explain(
        ErrorType::InvalidHTTPHeader,
        "the upstream sent only informational responses",
    ))
}

/// Writes the request: the head (with the body, when it was small enough to go
/// along) in one write, then a large body.
async fn write_request(
    stream: &mut Stream,
    wire: &[u8],
    body: Option<&[u8]>,
) -> pingora_error::Result<()> {
    let failed = |e: std::io::Error| {
        // An OS error on a pooled connection is most likely the upstream having
        // closed it while idle, as Pingora judges read errors on reused connections.
        let stale = e.raw_os_error().is_some();
        let mut e =
            pingora_error::Error::because(ErrorType::WriteError, "while writing the request", e);
        if stale {
            e.retry = RetryType::ReusedOnly;
        }
        e
    };
    stream.write_all(wire).await.map_err(failed)?;
    if let Some(body) = body {
        stream.write_all(body).await.map_err(failed)?;
    }
    stream.flush().await.map_err(failed)
}

/// Returns an upstream connection to the pool, or closes it if it cannot be reused
/// (body not read to its end, `Connection: close`, HTTP/1.0 without keep-alive):
/// Pingora's `reuse` decides, so callers need not check.
pub async fn release(state: &AppState, mut up: Box<Upstream>, peer: &HttpPeer) {
    up.respect_keepalive();
    if let Some(stream) = up.reuse().await {
        state
            .connector
            .release_stream(stream, peer.reuse_hash(), peer.options.idle_timeout);
    }
}

/// Reads a provider's whole JSON answer and turns it into OpenAI's shape.
async fn read_translated(
    state: &AppState,
    mut up: Box<Upstream>,
    peer: &HttpPeer,
    header: &ResponseHeader,
    channel: &Channel,
    model: &str,
    deadline: Instant,
) -> Result<Answer, AttemptError> {
    const LIMIT: usize = 16 * 1024 * 1024;
    let status = header.status.as_u16();
    let mut body = Vec::new();
    let read = async {
        while let Some(chunk) = up.read_body_bytes().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > LIMIT {
                return Err("the answer is too large to translate".to_string());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            up.shutdown().await;
            return Err(broke(e));
        }
        Err(_) => {
            up.shutdown().await;
            return Err(timeout("the channel's total timeout ran out".into()));
        }
    }
    release(state, up, peer).await;
    if status < 300 && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return Err(broke(
            "the upstream answered 2xx with a body that is not JSON",
        ));
    }
    let key_rejected = adapters::key_rejected(channel.kind, status, &body);
    let translated = adapters::translate_json(channel.kind, status, &body, model);
    Ok(Answer::Translated {
        answer: MockAnswer {
            status,
            content_type: "application/json",
            chunks: vec![Bytes::from(translated)],
        },
        key_rejected,
    })
}

/// Reads and drops a failed answer so its connection can be reused; gives the error
/// code (never the message, which may quote the key) for the summary.
pub async fn discard(state: &AppState, answer: Answer) -> Option<String> {
    let Answer::Upstream { mut up, peer, .. } = answer else {
        // Local and translated answers were read already; their code is in the body.
        if let Answer::Translated { answer, .. } = answer {
            return weir_filters::response_body::error_code(answer.chunks.first()?);
        }
        return None;
    };
    const LIMIT: usize = 64 * 1024;
    let mut body = Vec::new();
    // An answer not read to its end (too large, too slow, broken) is closed by
    // `release`, not pooled.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(chunk)) = up.read_body_bytes().await {
            if body.len() + chunk.len() > LIMIT {
                return;
            }
            body.extend_from_slice(&chunk);
        }
    })
    .await;
    release(state, up, peer.as_ref()).await;
    weir_filters::response_body::error_code(&body)
}
