//! The HTTP data path: one hyper connection per client (HTTP/1.1 or h2c),
//! and per request: rules, backend choice, balancing, forwarding through the
//! pooled upstream client, response rules, the access log.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use smallvec::SmallVec;
use tokio::sync::mpsc;

use super::log::{LogCtx, LogInfo, emit};
use super::rules::{self, Flow, error_reply};
use super::state::{ProxyRt, ServerRt, SessionGuard, World};
use super::timer::{Elapsed, Timeout};
use super::txn::{Phase, Reply, Session, Txn, header_value};
use super::upstream::{self, Body, BoxError};
use super::{balance, next_txn_id, select_backend};
use crate::config::model::Mode;
use crate::ext::{BoxFuture, ExtRef, Facility, HttpApplet};

/// Handles one HTTP request from a client of frontend `fe`.
///
/// What needs no waiting is done here, before the future is made: hyper
/// moves that future into its connection for every request, and an async
/// function keeps its arguments for its whole life, so the future holds
/// the transaction rather than the request it was made from.
pub fn handle(
    world: Arc<World>,
    fe: Arc<ProxyRt>,
    sess: Arc<Session>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static {
    let (parts, body) = req.into_parts();
    let request_line = if logs(&fe) {
        format!(
            "{} {} {}",
            parts.method,
            parts.uri,
            version_str(parts.version)
        )
    } else {
        String::new()
    };
    let mut txn = Txn::new(world, sess, fe.clone(), next_txn_id());
    txn.phase = Phase::Request;
    fe.counters.req_tot.fetch_add(1, Ordering::Relaxed);
    let mut info = LogInfo::new();
    info.t_request = Some(Duration::ZERO);
    info.conn_header = added_connection_header(&parts);
    info.client_http10 = parts.version == Version::HTTP_10;
    txn.req = Some(parts);
    let mut body = Some(body);
    // A block, not an async function: those copy their arguments into
    // the future twice.
    async move {
        tracing::Span::current().record("txn", txn.id);

        if fe.config.options.buffer_request
            && let Some(b) = body.take()
        {
            match b.collect().await {
                Ok(c) => txn.req_body = Some(c.to_bytes()),
                Err(_) => {
                    info.term = *b"CR--";
                    return Ok(finish_reply(txn, error_reply(400), info, request_line, None).await);
                }
            }
        }

        // tcp-request content rules also apply to HTTP streams.
        let flow = match rules::run(&fe.config.tcp_request_content, Facility::TcpReq, &mut txn)
            .await
        {
            Flow::Next => rules::run(&fe.config.http_request, Facility::HttpReq, &mut txn).await,
            other => other,
        };
        // Then the backend is chosen, and its own request rules run.
        let flow = match flow {
            Flow::Next => {
                let Some(be) = select_backend(&fe, &mut txn) else {
                    info.term = *b"SC--";
                    return Ok(finish_reply(txn, error_reply(503), info, request_line, None).await);
                };
                txn.backend = Some(be.clone());
                if Arc::ptr_eq(&be, &fe) {
                    Flow::Next
                } else {
                    be.counters.req_tot.fetch_add(1, Ordering::Relaxed);
                    rules::run(&be.config.http_request, Facility::HttpReq, &mut txn).await
                }
            }
            other => other,
        };
        match flow {
            Flow::Next => {}
            Flow::Reply(r) => {
                info.term = if r.local { *b"LR--" } else { *b"PR--" };
                return Ok(finish_reply(txn, r, info, request_line, None).await);
            }
            Flow::Service(s) => {
                return Ok(Box::pin(run_service(txn, s, body, info, request_line)).await);
            }
            Flow::Close => return Ok(close_response(txn, info, request_line)),
        }
        // Set above whenever the rules let the request go on.
        let Some(be) = txn.backend.clone() else {
            return Ok(finish_reply(txn, error_reply(500), info, request_line, None).await);
        };
        let be_guard = be.counters.open_session();

        let (srv, srv_guard, queued) = match balance::acquire(&be, txn.sess.src.ip()).await {
            Ok(got) => got,
            Err(why) => {
                info.term = match why {
                    balance::Unavailable::NoServer => *b"SC--",
                    balance::Unavailable::QueueTimeout => *b"sQ--",
                };
                tracing::debug!(backend = %be.name, ?why, "no server available");
                return Ok(finish_reply(
                    txn,
                    error_reply(503),
                    info,
                    request_line,
                    Some(vec![be_guard]),
                )
                .await);
            }
        };
        txn.server = Some(srv.clone());
        info.t_queue = Some(queued);
        let guards = vec![be_guard, srv_guard];

        // Build the upstream request. The request headers move to the server,
        // as in HAProxy: response rules no longer see them.
        let Some(up_req) = upstream_request(&mut txn, &fe, body.take()) else {
            return Ok(finish_reply(txn, error_reply(500), info, request_line, Some(guards)).await);
        };
        // The server's response time, for the access log (`Tr`).
        let t0 = logs(&fe).then(std::time::Instant::now);
        let result = match forward(&txn.world, &srv, &be, up_req).await {
            Ok(r) => r.map_err(Some),
            Err(Elapsed) => Err(None),
        };
        let resp = match result {
            Ok(r) => r,
            Err(None) => {
                info.term = *b"sH--";
                srv.counters.eresp.fetch_add(1, Ordering::Relaxed);
                be.counters.eresp.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(backend = %be.name, server = %srv.name, "server timeout: no response within 'timeout server'");
                return Ok(
                    finish_reply(txn, error_reply(504), info, request_line, Some(guards)).await,
                );
            }
            Err(Some(e)) => {
                let connect = e.is_connect();
                let (status, term) = if connect {
                    (503, *b"SC--")
                } else {
                    (502, *b"SH--")
                };
                info.term = term;
                if connect {
                    srv.counters.econ.fetch_add(1, Ordering::Relaxed);
                    be.counters.econ.fetch_add(1, Ordering::Relaxed);
                } else {
                    srv.counters.eresp.fetch_add(1, Ordering::Relaxed);
                    be.counters.eresp.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(backend = %be.name, server = %srv.name, "server error: {}", error_chain(&e));
                return Ok(finish_reply(
                    txn,
                    error_reply(status),
                    info,
                    request_line,
                    Some(guards),
                )
                .await);
            }
        };
        info.t_connect = Some(Duration::ZERO);
        info.t_response = t0.map(|t| t.elapsed());
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        txn.phase = Phase::Response;
        txn.res = Some(rparts);

        // Response rules: backend first, then frontend.
        let mut flow = rules::run(&be.config.http_response, Facility::HttpRes, &mut txn).await;
        if matches!(flow, Flow::Next) && !Arc::ptr_eq(&be, &fe) {
            flow = rules::run(&fe.config.http_response, Facility::HttpRes, &mut txn).await;
        }
        match flow {
            Flow::Next => {}
            Flow::Reply(r) => {
                info.term = if r.local { *b"LH--" } else { *b"PH--" };
                return Ok(finish_reply(txn, r, info, request_line, Some(guards)).await);
            }
            Flow::Service(_) | Flow::Close => return Ok(close_response(txn, info, request_line)),
        }
        Ok(respond(txn, rbody, info, request_line, Some(guards)).await)
    }
}

/// The request for the server: the client's method, URI and headers
/// (taken from the transaction), and its body. `None` when the
/// transaction has no request.
fn upstream_request(txn: &mut Txn, fe: &ProxyRt, body: Option<Incoming>) -> Option<Request<Body>> {
    let req = txn.req.as_mut()?;
    let mut parts = Request::new(()).into_parts().0;
    parts.method = req.method.clone();
    parts.uri = req.uri.clone();
    parts.version = req.version;
    parts.headers = std::mem::take(&mut req.headers);
    prepare_upstream_request(&mut parts, fe, txn);
    let up_body: Body = match (txn.req_body.clone(), body) {
        (Some(b), _) => Full::new(b)
            .map_err(|e: Infallible| -> BoxError { match e {} })
            .boxed(),
        (None, Some(b)) => b.map_err(|e| -> BoxError { Box::new(e) }).boxed(),
        (None, None) => empty(),
    };
    Some(Request::from_parts(parts, up_body))
}

/// Sends `req` to `srv` and waits for the response head, for at most the
/// backend's `timeout server`.
fn forward<'a>(
    world: &World,
    srv: &'a ServerRt,
    be: &ProxyRt,
    req: Request<Body>,
) -> Timeout<impl Future<Output = Result<Response<Body>, upstream::UpstreamError>> + 'a> {
    world.timers.timeout_opt(
        be.config.timeouts.server,
        upstream::send(&srv.pool, srv.addr, be.config.timeouts.connect, req),
    )
}

fn prepare_upstream_request(parts: &mut http::request::Parts, fe: &ProxyRt, txn: &Txn) {
    // Host: keep the client's; h2 requests carry it in the URI authority.
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    strip_hop_by_hop(&mut parts.headers);
    if let Some(ff) = &fe.config.options.forwardfor
        && let Ok(name) = HeaderName::from_bytes(ff.header.as_bytes())
        && !(ff.if_none && parts.headers.contains_key(&name))
    {
        let ip = txn.sess.src.ip().to_string();
        parts.headers.append(name, header_value(&ip));
    }
    // Origin form (`GET /path?q HTTP/1.1`), as HAProxy sends it: not every
    // server takes the absolute form. HTTP/1 clients mostly send it already.
    let origin_form = parts.uri.scheme().is_none()
        && parts.uri.authority().is_none()
        && parts.uri.path().starts_with('/');
    if !origin_form {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let pq = if pq.is_empty() { "/" } else { pq };
        if let Ok(u) = pq.parse::<Uri>() {
            parts.uri = u;
        }
    }
    parts.version = Version::HTTP_11;
}

/// Whether a header belongs to one connection only (RFC 9110 7.6.1) and
/// is not forwarded: the standard ones compare as small integers.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TE
        || n == header::TRANSFER_ENCODING
        || n == header::UPGRADE
        || n == header::PROXY_AUTHENTICATE
        || n.as_str() == "keep-alive"
        || n.as_str() == "proxy-connection"
}

/// Removes the hop-by-hop headers, and those `Connection` names. Most
/// requests have none, and most responses only `Connection: keep-alive`:
/// one pass over the names finds that out, without hashing any.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let (mut found, mut only_connection) = (false, true);
    for n in h.keys() {
        if is_hop_by_hop(n) {
            found = true;
            only_connection &= n == header::CONNECTION;
        }
    }
    if !found {
        return;
    }
    // The usual case: a lone `Connection: keep-alive` (or `close`), which
    // names no header to remove with it.
    if only_connection
        && h.get_all(header::CONNECTION).iter().all(|v| {
            let v = v.as_bytes();
            v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
        })
    {
        h.remove(header::CONNECTION);
        return;
    }
    let mut gone: SmallVec<[HeaderName; 4]> = SmallVec::new();
    for v in h.get_all(header::CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for t in v.split(',').map(str::trim) {
            // `close` and `keep-alive` name no header to remove (a
            // `Keep-Alive` header goes below anyway).
            if t.is_empty()
                || t.eq_ignore_ascii_case("close")
                || t.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                gone.push(n);
            }
        }
    }
    gone.extend(h.keys().filter(|n| is_hop_by_hop(n)).cloned());
    for n in gone {
        h.remove(n);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .boxed()
}

/// Turns a reply into the response head it describes (the response rules
/// see it as `txn.res`).
fn reply_parts(reply: &Reply) -> http::response::Parts {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    if let Some(h) = b.headers_mut() {
        for (n, v) in &reply.headers {
            if let Ok(n) = HeaderName::from_bytes(n.as_bytes()) {
                h.append(n, header_value(v));
            }
        }
        if !h.contains_key(header::CONTENT_LENGTH) {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(reply.body.len()));
        }
    }
    match b.body(()) {
        Ok(r) => r.into_parts().0,
        Err(_) => Response::new(()).into_parts().0,
    }
}

/// Sends a reply produced by the proxy (deny, return, redirect, errors),
/// after the `http-after-response` rules. Boxed: it is awaited from many
/// places in [`handle`], whose future would otherwise grow by its size.
fn finish_reply(
    mut txn: Txn,
    reply: Reply,
    info: LogInfo,
    request_line: String,
    guards: Option<Vec<SessionGuard>>,
) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async move {
        txn.phase = Phase::Response;
        txn.res = Some(reply_parts(&reply));
        let body = Full::new(reply.body)
            .map_err(|e: Infallible| -> BoxError { match e {} })
            .boxed();
        respond(txn, body, info, request_line, guards).await
    })
}

/// Runs `http-after-response`, counts, and wraps the body so the access log
/// is written when the response ends. (A block rather than an async
/// function, which would keep its arguments twice in its future.)
#[allow(clippy::manual_async_fn)]
fn respond(
    mut txn: Txn,
    body: Body,
    mut info: LogInfo,
    request_line: String,
    guards: Option<Vec<SessionGuard>>,
) -> impl Future<Output = Response<Body>> + Send + 'static {
    async move {
        let fe = txn.frontend.clone();
        let _ = rules::run(
            &fe.config.http_after_response,
            Facility::HttpAfterRes,
            &mut txn,
        )
        .await;
        if let Some(be) = txn.backend.clone()
            && !Arc::ptr_eq(&be, &fe)
        {
            let _ = rules::run(
                &be.config.http_after_response,
                Facility::HttpAfterRes,
                &mut txn,
            )
            .await;
        }
        let mut parts = match txn.res.take() {
            Some(p) => p,
            None => Response::new(()).into_parts().0,
        };
        if fe.config.options.httpclose {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let status = parts.status.as_u16();
        info.status = Some(status);
        fe.counters.count_status(status);
        if let Some(be) = &txn.backend
            && !Arc::ptr_eq(be, &fe)
        {
            be.counters.count_status(status);
        }
        let bytes = WireBytes::new(&parts, &body.size_hint(), &info);
        let log = if logs(&fe) {
            Some(LogCtx::new(&txn, request_line, info))
        } else {
            None
        };
        let tracked = Tracked {
            bytes,
            inner: body,
            log,
            guards,
            fe_counters: fe.counters.clone(),
            done: false,
        };
        Response::from_parts(parts, tracked.boxed())
    }
}

fn close_response(txn: Txn, mut info: LogInfo, request_line: String) -> Response<Body> {
    // hyper has no way to close without a response; answer an empty
    // response with Connection: close.
    info.term = *b"PR--";
    info.status = Some(0);
    if txn.frontend.config.options.httplog || txn.frontend.config.options.log {
        emit(&LogCtx::new(&txn, request_line, info).http_line());
    }
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Runs an HTTP service (`use-service`): the service runs in its own task;
/// the response starts when it calls `start_response`.
async fn run_service(
    mut txn: Txn,
    svc: ExtRef,
    body: Option<Incoming>,
    mut info: LogInfo,
    request_line: String,
) -> Response<Body> {
    info.backend = Some(txn.frontend.name.clone());
    info.server = Some(format!("<{}>", svc.full));
    let Some(parts) = txn.req.clone() else {
        return finish_reply(txn, error_reply(500), info, request_line, None).await;
    };
    let (mut applet, head_rx) = HttpApplet::new(&parts, body, txn.req_body.clone());
    let Some(body_rx) = applet.take_body_receiver() else {
        return finish_reply(txn, error_reply(500), info, request_line, None).await;
    };
    // The frontend's response rules run on the service's response head, as
    // in HAProxy, over a copy of the transaction (the service owns it); the
    // copy is made only when there are such rules.
    let fe = txn.frontend.clone();
    let mut view = (!fe.config.http_response.is_empty()
        || !fe.config.http_after_response.is_empty())
    .then(|| txn.snapshot());
    let task = tokio::spawn(async move {
        let r = svc.ext.http_service(&svc.name, &mut txn, &mut applet).await;
        if let Err(e) = &r {
            tracing::warn!("service '{}' failed: {e}", svc.full);
        }
        let started = applet.started();
        applet.finish();
        (txn, r, started)
    });
    match head_rx.await {
        Ok(head) => {
            // The task keeps running and streams the body; the log line is
            // written from its Txn when it ends.
            let mut b = Response::builder()
                .status(StatusCode::from_u16(head.status).unwrap_or(StatusCode::OK));
            if let Some(h) = b.headers_mut() {
                for (n, v) in &head.headers {
                    if let Ok(n) = HeaderName::from_bytes(n.as_bytes()) {
                        h.append(n, header_value(v));
                    }
                }
            }
            let parts = match b.body(()) {
                Ok(r) => r.into_parts().0,
                Err(_) => Response::new(()).into_parts().0,
            };
            let parts = match view.take() {
                None => parts,
                Some(mut view) => {
                    view.phase = Phase::Response;
                    view.res = Some(parts);
                    if let Flow::Reply(r) =
                        rules::run(&fe.config.http_response, Facility::HttpRes, &mut view).await
                    {
                        // A rule answers instead of the service.
                        task.abort();
                        info.term = if r.local { *b"LH--" } else { *b"PH--" };
                        return finish_reply(view, r, info, request_line, None).await;
                    }
                    let _ = rules::run(
                        &fe.config.http_after_response,
                        Facility::HttpAfterRes,
                        &mut view,
                    )
                    .await;
                    view.res
                        .take()
                        .unwrap_or_else(|| Response::new(()).into_parts().0)
                }
            };
            let body: Body = ChannelBody { rx: body_rx }.boxed();
            respond_service(parts, body, info, request_line, task).await
        }
        Err(_) => {
            // The service ended without starting a response: HAProxy
            // answers 500.
            match task.await {
                Ok((txn, _, _)) => {
                    info.term = *b"SD--";
                    finish_reply(txn, error_reply(500), info, request_line, None).await
                }
                Err(e) => {
                    tracing::error!("service task failed: {e}");
                    let mut r = Response::new(empty());
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }
            }
        }
    }
}

type ServiceTask = tokio::task::JoinHandle<(Txn, Result<(), crate::ext::ExtError>, bool)>;

async fn respond_service(
    parts: http::response::Parts,
    body: Body,
    info: LogInfo,
    request_line: String,
    task: ServiceTask,
) -> Response<Body> {
    let status = parts.status.as_u16();
    let tracked = ServiceTracked {
        bytes: WireBytes::new(&parts, &body.size_hint(), &info),
        inner: body,
        info: Some((info, request_line)),
        task: Some(task),
        status,
    };
    Response::from_parts(parts, tracked.boxed())
}

/// A body fed by a service through a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The `connection` header hyper's HTTP/1 server adds to a response that
/// has none: `close` when the client asked to close.
fn added_connection_header(req: &http::request::Parts) -> Option<&'static str> {
    let asks = |token: &str| {
        req.headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match req.version {
        Version::HTTP_11 if asks("close") => Some("close"),
        Version::HTTP_10 if asks("keep-alive") => Some("keep-alive"),
        _ => None,
    }
}

/// The bytes a response puts on the wire to the client, counted as
/// HAProxy's `%B` counts them: the head as HTTP/1.1 writes it (with the
/// `date`, `connection` and framing headers the server adds), then the
/// body with its chunked framing. HTTP/2 responses are counted the same
/// way: an estimate of their size, not of their frames.
struct WireBytes {
    total: u64,
    chunked: bool,
}

impl WireBytes {
    fn new(parts: &http::response::Parts, hint: &SizeHint, info: &LogInfo) -> WireBytes {
        // "HTTP/1.1 200 OK\r\n", then "name: value\r\n" each, then "\r\n".
        let reason = parts.status.canonical_reason().unwrap_or("<none>");
        let mut total = "HTTP/1.1 200 ".len() + reason.len() + "\r\n\r\n".len();
        for (n, v) in &parts.headers {
            total += n.as_str().len() + 2 + v.len() + 2;
        }
        if let Some(v) = info.conn_header
            && !parts.headers.contains_key(header::CONNECTION)
        {
            total += "connection: \r\n".len() + v.len();
        }
        if !parts.headers.contains_key(header::DATE) {
            total += "date: Mon, 07 Dec 2026 00:00:00 GMT\r\n".len();
        }
        let bodyless = parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let mut chunked = false;
        if !bodyless && !parts.headers.contains_key(header::CONTENT_LENGTH) {
            match hint.exact() {
                Some(n) => total += "content-length: \r\n".len() + digits(n),
                None if info.client_http10 => {}
                None => {
                    total += "transfer-encoding: chunked\r\n".len();
                    chunked = true;
                }
            }
        }
        WireBytes {
            total: total as u64,
            chunked,
        }
    }

    /// A body chunk of `n` bytes.
    fn data(&mut self, n: usize) {
        self.total += n as u64;
        if self.chunked && n > 0 {
            // "{n:x}\r\n" before the chunk, "\r\n" after it.
            self.total += (n.ilog2() / 4 + 1) as u64 + 4;
        }
    }

    /// The body ended: a chunked body's last chunk, "0\r\n\r\n".
    fn end(&mut self) {
        if std::mem::take(&mut self.chunked) {
            self.total += 5;
        }
    }
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Wraps a response body: counts bytes, holds the session counters until
/// the end, and writes the access log line when the body ends.
struct Tracked {
    inner: Body,
    bytes: WireBytes,
    log: Option<LogCtx>,
    guards: Option<Vec<SessionGuard>>,
    fe_counters: Arc<super::state::Counters>,
    done: bool,
}

impl Tracked {
    fn finish(&mut self, aborted: bool) {
        if self.done {
            return;
        }
        self.done = true;
        if !aborted {
            self.bytes.end();
        }
        self.fe_counters
            .bout
            .fetch_add(self.bytes.total, Ordering::Relaxed);
        if let Some(mut l) = self.log.take() {
            l.info.bytes_out = self.bytes.total;
            if aborted && l.info.term == *b"----" {
                l.info.term = *b"CD--";
            }
            emit(&l.http_line());
        }
        self.guards = None;
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes.data(d.len());
                }
                if self.inner.is_end_stream() {
                    self.finish(false);
                }
            }
            Poll::Ready(None) => self.finish(false),
            Poll::Ready(Some(Err(_))) => self.finish(true),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// Like [`Tracked`] for service responses: the log line is written once the
/// service task has finished.
struct ServiceTracked {
    inner: Body,
    bytes: WireBytes,
    info: Option<(LogInfo, String)>,
    task: Option<ServiceTask>,
    status: u16,
}

impl ServiceTracked {
    fn finish(&mut self, aborted: bool) {
        let (Some((mut info, line)), Some(task)) = (self.info.take(), self.task.take()) else {
            return;
        };
        if !aborted {
            self.bytes.end();
        }
        info.bytes_out = self.bytes.total;
        info.status = Some(self.status);
        tokio::spawn(async move {
            if let Ok((txn, _, _)) = task.await {
                txn.frontend.counters.count_status(info.status.unwrap_or(0));
                if txn.frontend.config.options.httplog || txn.frontend.config.options.log {
                    emit(&LogCtx::new(&txn, line, info).http_line());
                }
            }
        });
    }
}

impl HttpBody for ServiceTracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes.data(d.len());
                }
            }
            Poll::Ready(None) => self.finish(false),
            Poll::Ready(Some(Err(_))) => self.finish(true),
            Poll::Pending => {}
        }
        r
    }
}

impl Drop for ServiceTracked {
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// Whether the frontend writes access logs.
fn logs(fe: &ProxyRt) -> bool {
    fe.config.options.httplog || fe.config.options.log
}

/// Whether a frontend serves HTTP.
pub fn is_http(p: &ProxyRt) -> bool {
    p.config.mode == Mode::Http
}
