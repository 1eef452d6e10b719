//! The rule engine: runs `http-request`, `http-response`, `tcp-request` and
//! `tcp-response` rule lists against a transaction, calling extension
//! actions through the seam.

use bytes::Bytes;
use http::{HeaderName, Method, Uri};
use tracing::Instrument;

use super::txn::{Reply, Txn, header_value};
use crate::config::model::{Action, OnError, Redirect, RedirectKind, ReturnSpec, Rule};
use crate::ext::{ExtRef, Facility, Verdict};

/// What the transaction does after a rule list.
#[derive(Debug)]
pub enum Flow {
    /// Go on (all rules ran, or one stopped the list).
    Next,
    /// Answer with this response and end the transaction.
    Reply(Reply),
    /// Hand the transaction to a service.
    Service(ExtRef),
    /// Close the connection without a response.
    Close,
}

/// Runs the rules in order until one ends the list.
pub async fn run(rules: &[Rule], facility: Facility, txn: &mut Txn) -> Flow {
    for rule in rules {
        if let Some(cond) = &rule.cond
            && !cond.eval(txn)
        {
            continue;
        }
        match apply(rule, facility, txn).await {
            Step::Next => {}
            Step::StopList => return Flow::Next,
            Step::End(flow) => return flow,
        }
    }
    Flow::Next
}

enum Step {
    Next,
    StopList,
    End(Flow),
}

fn is_response(f: Facility) -> bool {
    matches!(
        f,
        Facility::HttpRes | Facility::HttpAfterRes | Facility::TcpRes
    )
}

async fn apply(rule: &Rule, facility: Facility, txn: &mut Txn) -> Step {
    let res = is_response(facility);
    match &rule.action {
        Action::SetHeader { name, value } => {
            let v = header_value(&value.eval(txn));
            if let Some(h) = headers_mut(txn, res)
                && let Ok(n) = HeaderName::from_bytes(name.as_bytes())
            {
                h.insert(n, v);
            }
        }
        Action::AddHeader { name, value } => {
            let v = header_value(&value.eval(txn));
            if let Some(h) = headers_mut(txn, res)
                && let Ok(n) = HeaderName::from_bytes(name.as_bytes())
            {
                h.append(n, v);
            }
        }
        Action::DelHeader { name } => {
            if let Some(h) = headers_mut(txn, res) {
                h.remove(name.as_str());
            }
        }
        Action::ReplaceHeader {
            name,
            regex,
            replace,
        }
        | Action::ReplaceValue {
            name,
            regex,
            replace,
        } => {
            let by_value = matches!(rule.action, Action::ReplaceValue { .. });
            let repl = replace.eval(txn);
            if let Some(h) = headers_mut(txn, res) {
                replace_header(h, name, regex, &repl, by_value);
            }
        }
        Action::SetPath(f) => {
            let path = f.eval(txn);
            set_uri_part(txn, |old| {
                let q = old.query().map(|q| format!("?{q}")).unwrap_or_default();
                format!("{path}{q}")
            });
        }
        Action::SetQuery(f) => {
            let q = f.eval(txn);
            set_uri_part(txn, |old| {
                if q.is_empty() {
                    old.path().to_string()
                } else {
                    format!("{}?{}", old.path(), q.trim_start_matches('?'))
                }
            });
        }
        Action::SetUri(f) => {
            let u = f.eval(txn);
            set_uri_part(txn, |_| u);
        }
        Action::SetMethod(f) => {
            let m = f.eval(txn);
            if let (Ok(m), Some(req)) = (Method::from_bytes(m.as_bytes()), txn.req.as_mut()) {
                req.method = m;
            }
        }
        Action::SetStatus { code, .. } => {
            if let (Some(r), Ok(s)) = (txn.res.as_mut(), http::StatusCode::from_u16(*code)) {
                r.status = s;
            }
        }
        Action::SetVar { var, expr } => {
            if let Some(v) = expr.eval(txn) {
                txn.set_var(var, v);
            }
        }
        Action::SetVarFmt { var, fmt } => {
            let v = fmt.eval(txn);
            txn.set_var(var, crate::sample::Sample::Str(v));
        }
        Action::UnsetVar(var) => txn.unset_var(var),
        Action::Redirect(r) => return Step::End(Flow::Reply(redirect(r, txn))),
        Action::Deny { status } => {
            txn.frontend
                .counters
                .dreq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Step::End(Flow::Reply(error_reply(*status)));
        }
        Action::Return(spec) => return Step::End(Flow::Reply(return_reply(spec, txn))),
        Action::UseService(r) => return Step::End(Flow::Service(r.clone())),
        Action::Allow => return Step::StopList,
        Action::Reject => return Step::End(Flow::Close),
        Action::SetLogLevel(_) => {}
        Action::Ext { r, facility, args } => {
            let span =
                tracing::debug_span!("ext_action", ext = %r.full, facility = facility.name());
            let verdict = r
                .ext
                .action(&r.name, *facility, txn, args)
                .instrument(span)
                .await;
            let verdict = match verdict {
                Ok(v) => v,
                Err(e) => {
                    // HAProxy's policy: a failing action is logged and the
                    // rules go on, unless the extension's `on-error` says
                    // otherwise.
                    let policy = r.ext.on_error();
                    tracing::warn!(
                        "{}: action '{}' failed: {e}; {}",
                        rule.loc,
                        r.full,
                        match policy {
                            OnError::Continue => "rules go on",
                            OnError::Deny => "denied",
                            OnError::Status500 => "answered 500",
                        }
                    );
                    match policy {
                        OnError::Continue => Verdict::Continue,
                        OnError::Deny => Verdict::Deny,
                        OnError::Status500 => Verdict::Error,
                    }
                }
            };
            if let Some(reply) = txn.reply.take() {
                return Step::End(Flow::Reply(reply));
            }
            if txn.done {
                return Step::End(Flow::Close);
            }
            return match verdict {
                Verdict::Continue => Step::Next,
                Verdict::Stop => Step::StopList,
                // As HAProxy: DONE ends the rules and the transaction goes
                // on; ABORT closes a TCP stream, and an HTTP request gets
                // a 503.
                Verdict::Done => Step::StopList,
                Verdict::Abort if *facility == Facility::HttpReq => {
                    Step::End(Flow::Reply(error_reply(503)))
                }
                Verdict::Abort => Step::End(Flow::Close),
                Verdict::Deny => Step::End(Flow::Reply(error_reply(if res { 502 } else { 403 }))),
                Verdict::Error => Step::End(Flow::Reply(error_reply(500))),
                Verdict::Invalid => Step::End(Flow::Reply(error_reply(400))),
            };
        }
    }
    Step::Next
}

fn headers_mut(txn: &mut Txn, res: bool) -> Option<&mut http::HeaderMap> {
    if res {
        txn.res_headers_mut()
    } else {
        txn.req_headers_mut()
    }
}

pub(crate) fn replace_header(
    h: &mut http::HeaderMap,
    name: &str,
    re: &regex::Regex,
    repl: &str,
    by_value: bool,
) {
    let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
        return;
    };
    let values: Vec<String> = h
        .get_all(&n)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
        .collect();
    if values.is_empty() {
        return;
    }
    h.remove(&n);
    let repl = haproxy_backrefs(repl);
    for v in values {
        let new = if by_value {
            v.split(',')
                .map(|part| full_replace(re, part.trim(), &repl))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            full_replace(re, &v, &repl)
        };
        h.append(&n, header_value(&new));
    }
}

/// HAProxy replaces the whole value when the regex matches it; the
/// replacement uses `\1` back-references.
fn full_replace(re: &regex::Regex, v: &str, repl: &str) -> String {
    if re.is_match(v) {
        re.replace(v, repl).to_string()
    } else {
        v.to_string()
    }
}

/// Turns HAProxy's `\1` back-references into the regex crate's `${1}`.
fn haproxy_backrefs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let d = chars.next().unwrap_or('0');
                out.push_str(&format!("${{{d}}}"));
            }
            '$' => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

pub(crate) fn set_uri_part(txn: &mut Txn, f: impl FnOnce(&Uri) -> String) {
    let Some(req) = txn.req.as_mut() else {
        return;
    };
    let new = f(&req.uri);
    match new.parse::<Uri>() {
        Ok(u) => {
            // Keep scheme and authority of an absolute URI.
            if u.scheme().is_none() && req.uri.scheme().is_some() {
                let mut parts = req.uri.clone().into_parts();
                parts.path_and_query = u.path_and_query().cloned();
                if let Ok(u2) = Uri::from_parts(parts) {
                    req.uri = u2;
                    return;
                }
            }
            req.uri = u;
        }
        Err(e) => tracing::warn!("cannot set URI to '{new}': {e}"),
    }
}

fn redirect(r: &Redirect, txn: &mut Txn) -> Reply {
    let target = r.target.eval(txn);
    let (path, query) = txn
        .req
        .as_ref()
        .map(|q| (q.uri.path().to_string(), q.uri.query().map(str::to_string)))
        .unwrap_or_default();
    let keep_query = |s: String| match (&query, r.drop_query) {
        (Some(q), false) => format!("{s}?{q}"),
        _ => s,
    };
    let location = match r.kind {
        RedirectKind::Location => target,
        RedirectKind::Prefix => {
            let prefix = target.trim_end_matches('/');
            keep_query(format!("{prefix}{path}"))
        }
        RedirectKind::Scheme => {
            let host = txn
                .req
                .as_ref()
                .and_then(|q| {
                    q.headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                        .or_else(|| q.uri.authority().map(|a| a.to_string()))
                })
                .unwrap_or_default();
            keep_query(format!("{target}://{host}{path}"))
        }
    };
    Reply {
        status: r.code,
        reason: None,
        headers: vec![
            ("location".into(), location),
            ("content-length".into(), "0".into()),
            ("cache-control".into(), "no-cache".into()),
        ],
        body: Bytes::new(),
        local: true,
    }
}

fn return_reply(spec: &ReturnSpec, txn: &mut Txn) -> Reply {
    let body = spec
        .body
        .as_ref()
        .map(|b| Bytes::from(b.eval(txn)))
        .unwrap_or_default();
    let mut headers = Vec::new();
    if let Some(ct) = &spec.content_type {
        headers.push(("content-type".to_string(), ct.clone()));
    }
    for (n, v) in &spec.headers {
        headers.push((n.clone(), v.eval(txn)));
    }
    Reply {
        status: spec.status,
        reason: None,
        headers,
        body,
        local: true,
    }
}

/// HAProxy's built-in error responses.
pub fn error_reply(status: u16) -> Reply {
    let (title, text) = match status {
        400 => ("Bad request", "Your browser sent an invalid request."),
        401 => (
            "Unauthorized",
            "You need a valid user and password to access this content.",
        ),
        403 => ("Forbidden", "Request forbidden by administrative rules."),
        404 => ("Not Found", "The resource could not be found."),
        405 => (
            "Method Not Allowed",
            "A request was made of a resource using a request method not supported by that resource.",
        ),
        408 => (
            "Request Time-out",
            "Your browser didn't send a complete request in time.",
        ),
        410 => (
            "Gone",
            "The resource is no longer available and will not be available again.",
        ),
        413 => (
            "Payload Too Large",
            "The request entity exceeds the maximum allowed.",
        ),
        425 => ("Too Early", "Your browser sent early data."),
        429 => (
            "Too Many Requests",
            "You have sent too many requests in a given amount of time.",
        ),
        431 => (
            "Request Header Fields Too Large",
            "The request header fields are too large.",
        ),
        500 => (
            "Internal Server Error",
            "An internal server error occurred.",
        ),
        501 => (
            "Not Implemented",
            "The server does not support the functionality required to fulfill the request.",
        ),
        502 => (
            "Bad Gateway",
            "The server returned an invalid or incomplete response.",
        ),
        503 => (
            "Service Unavailable",
            "No server is available to handle this request.",
        ),
        504 => ("Gateway Time-out", "The server didn't respond in time."),
        _ => ("Error", "An error occurred."),
    };
    let body = format!("<html><body><h1>{status} {title}</h1>\n{text}\n</body></html>\n");
    Reply {
        status,
        reason: None,
        headers: vec![
            ("content-type".into(), "text/html".into()),
            ("cache-control".into(), "no-cache".into()),
        ],
        body: Bytes::from(body),
        local: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backrefs() {
        assert_eq!(haproxy_backrefs(r"\1-x$"), "${1}-x$$");
    }
}
