//! Relay: the chosen answer goes to the client. Headers and body chunks pass as
//! they arrive; the SSE tap reads usage on the way and strips the usage chunk the
//! client did not ask for; a stream that breaks ends with an SSE error event, never
//! a clean `[DONE]`; a clean answer may be stored in the cache.

use super::ctx::Ctx;
use super::exchange::Answer;
use super::failure::Failure;
use super::passes::{Passes, ToClient};
use super::request::Dialect;
use crate::cache::{CacheKey, CachedAnswer};
use crate::state::AppState;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora_core::protocols::http::ServerSession as Session;
use pingora_http::ResponseHeader;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_filters::adapters::{self, StreamTranslator};
use weir_filters::config::{CachePolicy, ChannelType};
use weir_filters::health::{HealthId, HealthPolicy};
use weir_filters::masking::Table;
use weir_filters::request_body::{prompt_text, JsonBody};
use weir_filters::response_body::{json_usage, SseTap};
use weir_filters::safety::Safety;
use weir_filters::usage::{estimate_with_overflow, Usage};
use weir_filters::GatewayError;

/// A JSON answer is kept up to this size to read its `usage`.
const MAX_JSON_KEPT: usize = 16 * 1024 * 1024;

/// Upstream headers passed to the client. Everything else (hop-by-hop headers,
/// the provider's organisation, rate-limit and cookie headers) stays behind: the
/// client talks to weir, not to whoever is behind it.
const PASSED_HEADERS: &[&str] = &[
    "content-type",
    "cache-control",
    "x-request-id",
    "retry-after",
];

pub struct RelayPlan<'a> {
    /// Remove usage from the stream: weir asked for it, the client did not.
    pub strip_usage: bool,
    /// A stream in OpenAI's chunk format ends with `[DONE]` (or a finish reason and
    /// usage); other streams (`/v1/responses`…) end however they end.
    pub expect_done: bool,
    /// Ends the whole exchange, stream included.
    pub deadline: Instant,
    /// The deadline is the channel's own `timeouts.total` (its passing is the
    /// channel's fault), not the request's.
    pub channel_deadline: bool,
    /// The request, for a tokenizer estimate when no usage comes back.
    pub request: &'a JsonBody,
    pub gateway: &'a str,
    pub health: &'a HealthPolicy,
    /// The channel's type when its answers are not OpenAI's (Anthropic, Gemini).
    pub translate: Option<ChannelType>,
    /// The model name the client asked for, as translated answers name it.
    pub model: &'a str,
    /// The cache's policy, for storing this answer (when `ctx.reply.cache_fill` says where).
    pub cache: Option<&'a CachePolicy>,
    /// Data masking's placeholders, to put the originals back (`masking.restore`).
    pub restore: Option<&'a Arc<Table>>,
    /// Content safety's rules for the answer (`safety.answers`, chat and completions).
    pub guard: Option<&'a Arc<Safety>>,
    /// A JSON answer also goes to the moderation endpoint (`moderation.answers`).
    pub moderate: Option<super::safety::AnswerModeration<'a>>,
    /// The client speaks Messages or Responses and this answer is a chat one:
    /// it is made into the client's API, for the model the client named.
    pub to_client: Option<(Dialect, &'a str)>,
    /// An Anthropic channel's own answer to a Messages client: it passes as it
    /// is, its usage read through the Anthropic translator.
    pub native_usage: bool,
}

impl RelayPlan<'_> {
    /// For a channel's own answer in the client's API (Anthropic's to a
    /// Messages client, OpenAI's to a Responses one): it passes as it came, and
    /// ends however that API ends it.
    pub fn native(&mut self, dialect: Dialect) {
        self.translate = None;
        self.to_client = None;
        self.restore = None;
        self.guard = None;
        self.moderate = None;
        self.strip_usage = false;
        self.expect_done = false;
        // The tap reads the Responses API's usage itself.
        self.native_usage = dialect == Dialect::Messages;
    }

    /// Whether an answer with this status comes out as long as it came in.
    fn keeps_length(&self, status: u16) -> bool {
        self.to_client.is_none()
            && (status >= 300 || (self.restore.is_none() && self.guard.is_none()))
    }
}

fn downstream_header(
    status: u16,
    upstream: Option<&ResponseHeader>,
    content_type: &str,
    known_len: Option<usize>,
) -> pingora_error::Result<ResponseHeader> {
    // No case map: each insert is one map write (Pingora writes the names it knows
    // in their usual case, others lowercase).
    let mut h = ResponseHeader::build_no_case(status, Some(8))?;
    if let Some(up) = upstream {
        for (name, value) in up.headers.iter() {
            if PASSED_HEADERS.contains(&name.as_str()) {
                h.append_header(name.clone(), value.clone())?;
            }
        }
    } else {
        h.insert_header("content-type", content_type)?;
    }
    match known_len {
        Some(n) => h.insert_header("content-length", HeaderValue::from(n))?,
        None => h.insert_header("transfer-encoding", HeaderValue::from_static("chunked"))?,
    };
    Ok(h)
}

enum Source {
    Upstream {
        up: Box<super::exchange::Upstream>,
        peer: Box<pingora_core::upstreams::peer::HttpPeer>,
    },
    Mock(std::vec::IntoIter<Bytes>),
}

/// An answer's body on its way to the client, and what is read from it on the way:
/// usage (from the SSE tap or the kept JSON) and the copy for the cache.
struct Body {
    source: Source,
    status: u16,
    is_sse: bool,
    tap: SseTap,
    /// A 2xx JSON answer, kept to read its `usage`, or an error answer for the call
    /// log; `None` once it is too large (audio and files just pass).
    kept: Option<Vec<u8>>,
    translator: Option<Box<dyn StreamTranslator>>,
    /// Masked originals put back, content safety's check.
    passes: Passes,
    /// Last of all: the chat answer made into the client's API.
    to_client: Option<ToClient>,
    /// A native Anthropic stream read as OpenAI chunks, for its usage only.
    shadow: Option<(Box<dyn StreamTranslator>, SseTap)>,
    /// The copy for the cache, `None` when the answer is not to be stored.
    capture: Option<Vec<u8>>,
}

/// Sends the answer to the client. From here on nothing is retried.
pub async fn relay(
    state: &AppState,
    session: &mut Session,
    ctx: &mut Ctx,
    answer: Answer,
    plan: RelayPlan<'_>,
    stop: Pin<&mut impl Future<Output = ()>>,
) -> Result<(), Failure> {
    let (mut header, mut body) = open(answer, &plan).map_err(Failure::Abort)?;
    ctx.reply.status = body.status;
    if let Some(r) = ctx.who.rate {
        crate::proxy::respond::rate_headers(&mut header, &r).map_err(Failure::Abort)?;
    }
    let fill = ctx
        .reply
        .cache_fill
        .filter(|_| body.status == 200)
        .zip(plan.cache);
    if fill.is_some() {
        header
            .insert_header("x-weir-cache", HeaderValue::from_static("miss"))
            .map_err(Failure::Abort)?;
        body.capture = Some(Vec::new());
    }
    let content_type = header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    if let Err(e) = session.write_response_header(Box::new(header)).await {
        ctx.reply.client_gone = true;
        shutdown(body.source).await;
        return Err(Failure::Abort(e));
    }
    let pumped = body.pump(state, session, ctx, &plan, stop).await;
    let Body {
        source,
        status,
        is_sse,
        tap,
        kept,
        capture,
        shadow,
        ..
    } = body;
    let filtered = body.passes.stopped().map(|f| f.rule.clone());
    let withheld = body.passes.withheld().unwrap_or("").to_string();
    if let Some(rule) = &filtered {
        note_filtered(state, ctx, &plan, rule);
    }
    match &pumped {
        // Boxed: its future would otherwise be reserved in every relay for the
        // whole stream.
        // A stream cut short (by its channel or by weir, content safety included)
        // is not drained for reuse.
        Ok(()) if !ctx.reply.broken && filtered.is_none() => Box::pin(finish(state, source)).await,
        _ => shutdown(source).await,
    }
    // Only an answer that ended cleanly is cached (not one content safety stopped).
    if let (Ok(()), Some(fill), Some(body)) = (&pumped, fill, capture) {
        if !ctx.reply.broken && filtered.is_none() && (!is_sse || tap.completed()) {
            let answer = CachedAnswer {
                content_type,
                body: Bytes::from(body),
                stream: is_sse,
            };
            Box::pin(store(state, ctx, &plan, fill, answer)).await;
        }
    }
    // Bill what was answered, also when the client left or the answer broke midway:
    // the upstream spent those tokens either way.
    if status < 300 {
        let mut kept = kept.unwrap_or_default();
        // A native Anthropic answer is counted as its OpenAI translation.
        let tap = shadow.map_or(tap, |(_, t)| t);
        if plan.native_usage && !is_sse {
            kept = adapters::translate_json(ChannelType::Anthropic, 200, &kept, plan.model);
        }
        let usage = usage_of(is_sse, tap, &kept, plan.request, withheld).await;
        ctx.reply.usage = Some(usage);
    } else if status >= 400 {
        note_upstream_error(ctx, status, kept);
    }
    pumped
}

/// Content safety stopped the answer: the call log and the metric say which rule.
fn note_filtered(state: &AppState, ctx: &mut Ctx, plan: &RelayPlan<'_>, rule: &str) {
    super::safety::count(state, plan.gateway, "answer", rule);
    ctx.reply.error_code = Some("content_filter".into());
    ctx.reply.error = Some(format!(
        "answer stopped by content safety: it matches safety.{rule}"
    ));
}

/// Keeps a cleanly ended answer in the response cache.
async fn store(
    state: &AppState,
    ctx: &Ctx,
    plan: &RelayPlan<'_>,
    ((key, slot), policy): ((CacheKey, u32), &CachePolicy),
    answer: CachedAnswer,
) {
    state
        .cache
        .put(key, slot, policy.max_per_request, answer, policy.ttl)
        .await;
    state
        .metrics
        .cache
        .with_label_values(&[plan.gateway, ctx.route.model_label.as_str(), "stored"])
        .inc();
}

/// An error relayed as the upstream said it: the call log keeps its code and body.
fn note_upstream_error(ctx: &mut Ctx, status: u16, body: Option<Vec<u8>>) {
    ctx.reply.error_code = body
        .as_deref()
        .and_then(weir_filters::response_body::error_code)
        .or_else(|| Some(format!("upstream_{status}")));
    ctx.reply.error_body = body;
}

/// The client's response header for an answer, and its body ready to pump.
fn open(answer: Answer, plan: &RelayPlan<'_>) -> pingora_error::Result<(ResponseHeader, Body)> {
    let status = answer.status();
    let (header, source, is_sse, is_json) = match answer {
        Answer::Upstream { up, peer, header } => {
            let ct = header
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let is_sse = ct.starts_with("text/event-stream");
            let is_json = ct.starts_with("application/json");
            // A JSON answer passes unchanged: its length still holds (unless
            // originals are put back into it).
            let len = header
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|_| !is_sse && plan.keeps_length(status));
            let h = downstream_header(status, Some(&header), "", len)?;
            (h, Source::Upstream { up, peer }, is_sse, is_json)
        }
        Answer::Mock(m) | Answer::Translated { answer: m, .. } => {
            let is_sse = m.content_type == "text/event-stream";
            let keeps = !is_sse && plan.keeps_length(m.status);
            let len = keeps.then(|| m.chunks.iter().map(|c| c.len()).sum());
            let h = downstream_header(m.status, None, m.content_type, len)?;
            (h, Source::Mock(m.chunks.into_iter()), is_sse, !is_sse)
        }
    };
    let body = Body {
        source,
        status,
        is_sse,
        tap: SseTap::new(plan.strip_usage && is_sse),
        kept: ((status < 300 && is_json) || status >= 400).then(Vec::new),
        translator: plan
            .translate
            .and_then(|kind| adapters::stream_translator(kind, plan.model, true)),
        passes: match status < 300 {
            true => Passes::new(is_sse, plan.restore, plan.guard),
            false => Passes::default(),
        },
        to_client: plan
            .to_client
            .map(|(dialect, model)| ToClient::new(dialect, status, is_sse, model)),
        shadow: (plan.native_usage && is_sse && status < 300)
            .then(|| adapters::stream_translator(ChannelType::Anthropic, plan.model, true))
            .flatten()
            .map(|t| (t, SseTap::new(false))),
        capture: None,
    };
    Ok((header, body))
}

impl Body {
    /// Moves the body from the source to the client, then ends it.
    async fn pump(
        &mut self,
        state: &AppState,
        session: &mut Session,
        ctx: &mut Ctx,
        plan: &RelayPlan<'_>,
        // Resolves when a graceful stop's grace period ends with this answer still
        // open: it is cut as a broken stream, so its usage is written.
        mut stopped: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), Failure> {
        let broken = loop {
            let (chunk, ended, broken) = match self.read(plan, stopped.as_mut()).await {
                Ok(Some(read)) => read,
                Ok(None) => break None,
                Err(e) => break Some(e),
            };
            let out = self.pass(chunk);
            if !out.is_empty() {
                keep(&mut self.capture, &out, plan);
                if ctx.reply.first_byte.is_none() {
                    ctx.reply.first_byte = Some(ctx.started.elapsed());
                }
                // A client that stops reading blocks the write: the stop cuts it
                // there too, or the stream would outlive the grace period unwritten.
                let cut = tokio::select! {
                    biased;
                    r = write(session, ctx, out, false) => {
                        r?;
                        false
                    }
                    () = stopped.as_mut() => true,
                };
                if cut {
                    return Err(cut_while_writing(state, ctx, plan));
                }
            }
            // Content safety stopped the answer: its end is already written.
            if ended || broken.is_some() || self.passes.stopped().is_some() {
                break broken;
            }
        };
        self.end(state, session, ctx, plan, broken).await
    }

    /// The next chunk, with whatever else the upstream already sent: those go out in
    /// one write, as Pingora's own proxy loop does (one flush per upstream chunk
    /// cost streams a third of their speed). Also says whether the body ended, or
    /// broke, right after it.
    async fn read(
        &mut self,
        plan: &RelayPlan<'_>,
        stopped: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<(Bytes, bool, Option<Broke>)>, Broke> {
        let up = match &mut self.source {
            Source::Mock(chunks) => return Ok(chunks.next().map(|c| (c, false, None))),
            Source::Upstream { up, .. } => up,
        };
        let next = tokio::time::timeout_at(plan.deadline.into(), up.read_body_bytes());
        // The stop first: a stream whose upstream always has bytes ready is cut too.
        let read = tokio::select! {
            biased;
            () = stopped => {
                return Err(Broke::by_weir("weir stopped: the stream was cut at the end of the grace period"))
            }
            r = next => r,
        };
        let first = match read {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => return Err(Broke::by_channel(e.to_string())),
            Err(_) if plan.channel_deadline => {
                return Err(Broke::by_channel("the channel's timeouts.total ran out"))
            }
            Err(_) => {
                return Err(Broke::by_weir(
                    "the request's deadline (its gateway's timeout) passed",
                ))
            }
        };
        let (mut more, mut ended, mut broken): (Option<BytesMut>, _, _) = (None, false, None);
        for _ in 0..MAX_COALESCED {
            match ready_now(up.read_body_bytes()) {
                Some(Ok(Some(c))) => more
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&c),
                Some(Ok(None)) => {
                    ended = true;
                    break;
                }
                Some(Err(e)) => {
                    broken = Some(Broke::by_channel(e.to_string()));
                    break;
                }
                None => break,
            }
        }
        let chunk = more.map_or(first, BytesMut::freeze);
        Ok(Some((chunk, ended, broken)))
    }

    /// What the client gets of a chunk: translated and tapped when it is SSE, kept
    /// for its usage when it is JSON.
    fn pass(&mut self, chunk: Bytes) -> Bytes {
        if let Some((t, tap)) = &mut self.shadow {
            tap.feed(Bytes::from(t.feed(&chunk)));
        }
        let chunk = match self.translator.as_mut().filter(|_| self.is_sse) {
            Some(t) => Bytes::from(t.feed(&chunk)),
            None => chunk,
        };
        let chunk = self.passes.feed(chunk);
        if self.is_sse {
            let out = self.tap.feed(chunk);
            return self.in_client_api(out);
        }
        self.keep_json(&chunk);
        self.in_client_api(chunk)
    }

    /// The chat answer as the client reads it, when it speaks another API.
    fn in_client_api(&mut self, chunk: Bytes) -> Bytes {
        match &mut self.to_client {
            Some(t) => Bytes::from(t.feed(&chunk)),
            None => chunk,
        }
    }

    /// The last bytes, and what turning them into the client's API still owes.
    fn end_in_client_api(&mut self, last: Vec<u8>) -> Vec<u8> {
        match &mut self.to_client {
            Some(t) => {
                let mut out = t.feed(&last);
                out.extend(t.finish());
                out
            }
            None => last,
        }
    }

    /// A JSON answer is kept as the client gets it, to read its usage.
    fn keep_json(&mut self, chunk: &[u8]) {
        if let Some(kept) = &mut self.kept {
            if kept.len() + chunk.len() <= MAX_JSON_KEPT {
                kept.extend_from_slice(chunk);
            } else {
                self.kept = None;
            }
        }
    }

    /// The body is over, one way or another: end it as its kind must end.
    async fn end(
        &mut self,
        state: &AppState,
        session: &mut Session,
        ctx: &mut Ctx,
        plan: &RelayPlan<'_>,
        broken: Option<Broke>,
    ) -> Result<(), Failure> {
        if self.is_sse {
            let tail = self.sse_tail(state, ctx, plan, broken);
            keep(&mut self.capture, &tail, plan);
            let last = write(session, ctx, Bytes::from(tail), true);
            if !*state.stopping.borrow() {
                return last.await;
            }
            // Cut at the stop: a client that does not take the last event must not
            // hold the stream (and its row) past the grace period.
            return match tokio::time::timeout(Duration::from_millis(500), last).await {
                Ok(r) => r,
                Err(_) => {
                    ctx.reply.client_gone = true;
                    Err(Failure::Abort(pingora_error::Error::explain(
                        pingora_error::ErrorType::WriteError,
                        "the client did not take the stream's last event at the stop",
                    )))
                }
            };
        }
        let Some(broke) = broken else {
            if let (Some(am), true) = (&plan.moderate, self.status < 300) {
                if let Some(text) = self.passes.held_text() {
                    if let Some(rule) = super::safety::moderate_answer(state, am, &text).await {
                        self.passes.refuse(rule);
                    }
                }
            }
            let rest = self.passes.finish();
            self.keep_json(&rest);
            let rest = self.end_in_client_api(rest);
            keep(&mut self.capture, &rest, plan);
            return write(session, ctx, Bytes::from(rest), true).await;
        };
        // A JSON answer cut short: its length can no longer be kept; close.
        let why = broke.count(state, ctx, plan);
        ctx.reply.error = Some(format!("answer broken: {why}"));
        Err(Failure::Abort(pingora_error::Error::explain(
            pingora_error::ErrorType::ReadError,
            "upstream answer broke mid-body",
        )))
    }

    /// What a stream still owes the client: a translated stream's close, the usage
    /// chunk held back, and an SSE error event when it broke or ended short.
    fn sse_tail(
        &mut self,
        state: &AppState,
        ctx: &mut Ctx,
        plan: &RelayPlan<'_>,
        broken: Option<Broke>,
    ) -> Vec<u8> {
        let mut tail = Vec::new();
        let mut last = Vec::new();
        let filtered = self.passes.stopped().is_some();
        if let (Some(t), None, false) = (self.translator.as_mut(), &broken, filtered) {
            last = t.finish();
        }
        last = self.passes.feed(Bytes::from(last)).to_vec();
        last.extend(self.passes.finish());
        if !last.is_empty() {
            tail.extend_from_slice(&self.tap.feed(Bytes::from(last)));
        }
        tail.extend_from_slice(&self.tap.finish());
        let tap = &self.tap;
        let complete = !plan.expect_done || tap.completed() || tap.saw_error || self.status >= 300;
        if broken.is_none() && complete {
            return self.end_in_client_api(tail);
        }
        let why = match broken {
            Some(broke) => broke.count(state, ctx, plan),
            None => {
                let why = "the upstream ended the stream before it was complete";
                count_broken(state, ctx, plan);
                why.to_string()
            }
        };
        ctx.reply.broken = true;
        ctx.reply.error = Some(format!("stream broken: {why}"));
        let e = GatewayError::UpstreamFailed {
            model: ctx.route.model_label.clone(),
            detail: format!(
                "the stream from channel `{}` broke: {why}",
                ctx.tries.channel
            ),
        };
        tail.extend_from_slice(&e.to_sse_event());
        self.end_in_client_api(tail)
    }
}

/// The stop came while the client was not taking what was written: nothing more
/// is sent (it would block too), the stream counts as cut, and its usage is
/// written like any broken stream's.
fn cut_while_writing(state: &AppState, ctx: &mut Ctx, plan: &RelayPlan<'_>) -> Failure {
    let why = Broke::by_weir(
        "weir stopped: the stream was cut at the end of the grace period, its client not reading",
    )
    .count(state, ctx, plan);
    ctx.reply.error = Some(format!("stream broken: {why}"));
    ctx.reply.client_gone = true;
    Failure::Abort(pingora_error::Error::explain(
        pingora_error::ErrorType::WriteError,
        "cut at the graceful stop while writing",
    ))
}

/// Resolves when a graceful stop cuts what is still open (`AppState::stopping`).
/// Subscribes when first polled; made once per request and pinned, it registers
/// its waiter once, not on every read.
pub(super) async fn stopped(state: &AppState) {
    let mut stop = state.stopping.subscribe();
    if stop.wait_for(|s| *s).await.is_err() {
        // The sender lives as long as the state: never, but never resolve then.
        std::future::pending::<()>().await;
    }
}

/// Why an answer ended before its end.
struct Broke {
    why: String,
    /// The channel's doing (its connection broke, its total timeout ran out), which
    /// counts against its health; else weir's (a graceful stop, the request's
    /// deadline), which does not.
    channel: bool,
}

impl Broke {
    fn by_channel(why: impl Into<String>) -> Broke {
        Broke {
            why: why.into(),
            channel: true,
        }
    }

    fn by_weir(why: &str) -> Broke {
        Broke {
            why: why.to_string(),
            channel: false,
        }
    }

    /// Counts the break (and, when it is the channel's, against the channel);
    /// returns why, for the client and the log.
    fn count(self, state: &AppState, ctx: &mut Ctx, plan: &RelayPlan<'_>) -> String {
        if self.channel {
            broke_off(state, ctx, plan, &self.why);
        } else {
            ctx.reply.broken = true;
            count_broken(state, ctx, plan);
        }
        self.why
    }
}

/// An answer broke midway: a channel that answers 2xx and then breaks is not
/// healthy.
fn broke_off(state: &AppState, ctx: &mut Ctx, plan: &RelayPlan<'_>, why: &str) {
    ctx.reply.broken = true;
    state
        .health
        .failure(&HealthId::channel(&ctx.tries.channel), plan.health, why);
    count_broken(state, ctx, plan);
}

fn count_broken(state: &AppState, ctx: &Ctx, plan: &RelayPlan<'_>) {
    state
        .metrics
        .stream_errors
        .with_label_values(&[plan.gateway, ctx.tries.channel.as_str()])
        .inc();
}

async fn write(
    session: &mut Session,
    ctx: &mut Ctx,
    bytes: Bytes,
    end: bool,
) -> Result<(), Failure> {
    session.write_response_body(bytes, end).await.map_err(|e| {
        ctx.reply.client_gone = true;
        Failure::Abort(e)
    })
}

/// Upstream chunks taken in one go at most.
const MAX_COALESCED: usize = 64;

/// Polls a read once: its result when it is ready without waiting, `None` when it
/// would wait (the read is then dropped; Pingora's body readers are cancel-safe, its
/// own proxy loop relies on that in its `select!`s).
fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Adds to the copy kept for the cache, giving up on answers too large to keep.
fn keep(capture: &mut Option<Vec<u8>>, bytes: &[u8], plan: &RelayPlan<'_>) {
    let max = plan.cache.map(|c| c.max_entry_bytes).unwrap_or(0) as usize;
    if let Some(buf) = capture {
        if buf.len() + bytes.len() > max {
            *capture = None;
        } else {
            buf.extend_from_slice(bytes);
        }
    }
}

/// The upstream's usage, or a tokenizer estimate counted off the async workers.
/// `withheld`: text a stopped stream's upstream sent that the client never got
/// (the upstream generated it all the same).
async fn usage_of(
    is_sse: bool,
    tap: SseTap,
    kept: &[u8],
    request: &JsonBody,
    withheld: String,
) -> Usage {
    let (text, overflow) = if is_sse {
        if let Some(u) = tap.usage {
            return u;
        }
        let (mut text, overflow) = tap.completion_text();
        text.push_str(&withheld);
        (text, overflow)
    } else {
        match json_usage(kept) {
            (Some(u), _) => return u,
            (None, text) => (text, 0),
        }
    };
    let (prompt, messages) = prompt_text(request);
    let count = move || estimate_with_overflow(&prompt, messages, &text, overflow);
    match tokio::task::spawn_blocking(count).await {
        Ok(u) => u,
        Err(_) => Usage {
            estimated: true,
            ..Usage::default()
        },
    }
}

/// Returns a finished upstream connection to the pool.
async fn finish(state: &AppState, source: Source) {
    if let Source::Upstream { up, peer } = source {
        super::exchange::release(state, up, peer.as_ref()).await;
    }
}

async fn shutdown(source: Source) {
    if let Source::Upstream { mut up, .. } = source {
        up.shutdown().await;
    }
}
