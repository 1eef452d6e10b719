//! Log-format strings: literal text with `%[expr]` and `%X` log variables,
//! as used in header values, redirect targets and `lf-string` bodies.
//!
//! This module owns the log-format syntax (`%%`, `%[expr]`, `%{+Q}...`,
//! `%ci`-style variables) and its evaluation against a transaction.

use std::fmt::Write as _;
use std::time::SystemTime;

use chrono::{DateTime, Local, Utc};

use super::expr::{Expr, has_close};
use super::{ParseCtx, Sample};
use crate::proxy::state::Counters;
use crate::proxy::txn::Txn;

/// Per-item options (`%{+Q}`): quote, hexadecimal, escape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flags {
    quote: bool,
    hex: bool,
    escape: bool,
}

/// HAProxy's log variables that this proxy evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogVar {
    ClientIp,
    ClientPort,
    FrontendIp,
    FrontendPort,
    FrontendTransport,
    Frontend,
    Backend,
    Server,
    Status,
    Method,
    Uri,
    Path,
    Query,
    Version,
    RequestLine,
    UniqueId,
    Timestamp,
    Millis,
    DateLocal,
    DateGmt,
    DateLocalTz,
    Elapsed,
    Pid,
    Hostname,
    RequestCounter,
    BackendSrcIp,
    BackendSrcPort,
    ServerIp,
    ServerPort,
    FrontendConns,
    BackendConns,
    ServerConns,
    /// A valid HAProxy variable this proxy does not track: printed as `-`.
    Unavailable,
}

impl LogVar {
    fn parse(name: &str) -> Option<LogVar> {
        use LogVar::*;
        Some(match name {
            "ci" => ClientIp,
            "cp" => ClientPort,
            "fi" => FrontendIp,
            "fp" => FrontendPort,
            "ft" => FrontendTransport,
            "f" => Frontend,
            "b" => Backend,
            "s" => Server,
            "ST" => Status,
            "HM" => Method,
            "HU" => Uri,
            "HP" => Path,
            "HQ" => Query,
            "HV" => Version,
            "r" => RequestLine,
            "ID" => UniqueId,
            "Ts" => Timestamp,
            "ms" => Millis,
            "t" => DateLocal,
            "T" => DateGmt,
            "Tl" => DateLocalTz,
            "Ta" | "Tt" => Elapsed,
            "pid" => Pid,
            "H" => Hostname,
            "rt" => RequestCounter,
            "bi" => BackendSrcIp,
            "bp" => BackendSrcPort,
            "si" => ServerIp,
            "sp" => ServerPort,
            "fc" => FrontendConns,
            "bc" => BackendConns,
            "sc" => ServerConns,
            "B" | "U" | "Tq" | "Th" | "Ti" | "TR" | "Tw" | "Tc" | "Tr" | "Td" | "tr" | "trg"
            | "trl" | "tsc" | "ts" | "CC" | "CS" | "hr" | "hrl" | "hs" | "hsl" | "sq" | "bq"
            | "lc" | "rc" | "ac" | "sslc" | "sslv" | "o" | "HPO" | "HUP" | "HUPO" | "rp" => {
                Unavailable
            }
            _ => return None,
        })
    }
}

/// One piece of a log-format string.
#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Expr { expr: Box<Expr>, flags: Flags },
    Var { var: LogVar, flags: Flags },
}

/// A parsed log-format string.
#[derive(Debug, Clone)]
pub struct LogFormat {
    text: String,
    parts: Vec<Part>,
}

impl LogFormat {
    /// Parses a log-format string.
    pub fn parse(text: &str, ctx: &ParseCtx<'_>) -> Result<LogFormat, String> {
        let chars: Vec<char> = text.chars().collect();
        let n = chars.len();
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < n {
            let c = chars[i];
            if c != '%' {
                lit.push(c);
                i += 1;
                continue;
            }
            match chars.get(i + 1) {
                None => {
                    return Err(format!(
                        "'%' at the end of '{text}', expected a variable, '%[expr]' or '%%' for a literal '%'"
                    ));
                }
                Some('%') => {
                    lit.push('%');
                    i += 2;
                    continue;
                }
                Some(_) => {}
            }
            let mut j = i + 1;
            let mut flags = Flags::default();
            if chars[j] == '{' {
                let close = chars[j..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or_else(|| format!("missing '}}' after '%{{' in '{text}'"))?;
                let inner: String = chars[j + 1..j + close].iter().collect();
                flags = parse_flags(&inner)?;
                j += close + 1;
            }
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            match chars.get(j) {
                Some('[') => {
                    let end = find_close(&chars, j + 1)
                        .ok_or_else(|| format!("missing ']' to close '%[' in '{text}'"))?;
                    let inner: String = chars[j + 1..end].iter().collect();
                    if inner.trim().is_empty() {
                        return Err(format!(
                            "empty expression '%[]' in '{text}', expected a fetch inside"
                        ));
                    }
                    let expr = Expr::parse(inner.trim(), ctx)?;
                    parts.push(Part::Expr {
                        expr: Box::new(expr),
                        flags,
                    });
                    i = end + 1;
                }
                Some(c) if c.is_ascii_alphabetic() => {
                    let start = j;
                    while j < n && chars[j].is_ascii_alphabetic() {
                        j += 1;
                    }
                    let name: String = chars[start..j].iter().collect();
                    let var = LogVar::parse(&name).ok_or_else(|| {
                        format!("unknown log-format variable '%{name}' in '{text}' (write '%%' for a literal '%')")
                    })?;
                    parts.push(Part::Var { var, flags });
                    i = j;
                }
                Some(c) => {
                    return Err(format!(
                        "unexpected character '{c}' after '%' in '{text}', expected a variable name, '[' or '%' (write '%%' for a literal '%')"
                    ));
                }
                None => return Err(format!("missing variable after '%{{...}}' in '{text}'")),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(LogFormat {
            text: text.to_string(),
            parts,
        })
    }

    /// A format that is only `text`.
    pub fn literal(text: &str) -> LogFormat {
        LogFormat {
            text: text.to_string(),
            parts: if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::Lit(text.to_string())]
            },
        }
    }

    /// The format as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the format has no expressions nor variables.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// The text, when the format is literal (`%%` already turned to `%`).
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Evaluates the format; a missing sample gives empty text.
    pub fn eval(&self, txn: &mut Txn) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Expr { expr, flags } => {
                    let v = expr.eval(txn);
                    emit(&mut out, v.as_ref(), None, *flags);
                }
                Part::Var { var, flags } => {
                    let (s, int) = eval_var(*var, txn);
                    emit(&mut out, None, Some((&s, int)), *flags);
                }
            }
        }
        out
    }
}

fn parse_flags(inner: &str) -> Result<Flags, String> {
    let mut f = Flags::default();
    for item in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (on, name) = match item.split_at_checked(1) {
            Some(("+", n)) => (true, n),
            Some(("-", n)) => (false, n),
            _ => {
                return Err(format!(
                    "invalid log-format option '{item}', expected +Q, +X or +E"
                ));
            }
        };
        match name {
            "Q" => f.quote = on,
            "X" => f.hex = on,
            "E" => f.escape = on,
            "XS" | "M" | "bin" | "json" | "cbor" => {}
            _ => {
                return Err(format!(
                    "unknown log-format option '{item}', expected +Q, +X or +E"
                ));
            }
        }
    }
    Ok(f)
}

/// Position of the `]` closing a `%[` whose content starts at `start`.
fn find_close(chars: &[char], start: usize) -> Option<usize> {
    let mut paren = 0usize;
    let mut square = 0usize;
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                i += 2;
                continue;
            }
            '"' | '\'' if paren > 0 && has_close(chars, i + 1, c) => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if c == '"' && chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '(' => paren += 1,
            ')' => paren = paren.saturating_sub(1),
            '[' if paren == 0 => square += 1,
            ']' if paren == 0 => {
                if square == 0 {
                    return Some(i);
                }
                square -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Appends a value with its options.
fn emit(out: &mut String, sample: Option<&Sample>, var: Option<(&str, Option<i64>)>, f: Flags) {
    let (text, int) = match (sample, var) {
        (Some(s), _) => (
            s.to_str().into_owned(),
            s.to_int().filter(|_| matches!(s, Sample::Int(_))),
        ),
        (None, Some((s, i))) => (s.to_string(), i),
        (None, None) => (String::new(), None),
    };
    let text = match int {
        Some(i) if f.hex => format!("{i:X}"),
        _ => text,
    };
    if f.quote {
        out.push('"');
    }
    if f.escape {
        for c in text.chars() {
            match c {
                '"' | '\\' | ']' => {
                    out.push('\\');
                    out.push(c);
                }
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    let _ = write!(out, "\\x{:02X}", c as u32);
                }
                c => out.push(c),
            }
        }
    } else {
        out.push_str(&text);
    }
    if f.quote {
        out.push('"');
    }
}

fn date_local(t: SystemTime) -> String {
    let dt: DateTime<Local> = t.into();
    dt.format("%d/%b/%Y:%H:%M:%S%.3f").to_string()
}

/// The value of a log variable, and its integer form when it is one.
fn eval_var(var: LogVar, txn: &Txn) -> (String, Option<i64>) {
    use LogVar::*;
    let int = |v: i64| (v.to_string(), Some(v));
    let req = txn.req.as_ref();
    match var {
        ClientIp => (txn.sess.src.ip().to_string(), None),
        ClientPort => int(i64::from(txn.sess.src.port())),
        FrontendIp => (txn.sess.dst.ip().to_string(), None),
        FrontendPort => int(i64::from(txn.sess.dst.port())),
        FrontendTransport => {
            let tls = if txn.sess.tls { "~" } else { "" };
            (format!("{}{tls}", txn.frontend.name), None)
        }
        Frontend => (txn.frontend.name.clone(), None),
        Backend => (
            txn.backend.as_ref().unwrap_or(&txn.frontend).name.clone(),
            None,
        ),
        Server => (
            txn.server
                .as_ref()
                .map_or_else(|| "<NOSRV>".to_string(), |s| s.name.clone()),
            None,
        ),
        Status => match txn.res_status() {
            Some(s) => int(i64::from(s.as_u16())),
            None => (String::new(), None),
        },
        Method => (req.map(|r| r.method.to_string()).unwrap_or_default(), None),
        Uri => (super::fetch::request_url(txn).unwrap_or_default(), None),
        Path => (
            req.map(|r| r.uri.path().to_string()).unwrap_or_default(),
            None,
        ),
        Query => (
            req.and_then(|r| r.uri.query())
                .map(|q| format!("?{q}"))
                .unwrap_or_default(),
            None,
        ),
        Version => (
            req.map(|r| format!("{:?}", r.version)).unwrap_or_default(),
            None,
        ),
        RequestLine => (
            req.map(|r| {
                format!(
                    "{} {} {:?}",
                    r.method,
                    super::fetch::request_url(txn).unwrap_or_default(),
                    r.version
                )
            })
            .unwrap_or_default(),
            None,
        ),
        UniqueId | RequestCounter => int(txn.id as i64),
        Timestamp => int(super::conv::epoch_secs(txn.started_at)),
        Millis => {
            let ms = txn
                .started_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_millis())
                .unwrap_or(0);
            (format!("{ms:03}"), Some(i64::from(ms)))
        }
        DateLocal => (date_local(txn.started_at), None),
        DateGmt => {
            let dt: DateTime<Utc> = txn.started_at.into();
            (dt.format("%d/%b/%Y:%H:%M:%S +0000").to_string(), None)
        }
        DateLocalTz => {
            let dt: DateTime<Local> = txn.started_at.into();
            (dt.format("%d/%b/%Y:%H:%M:%S %z").to_string(), None)
        }
        Elapsed => int(txn.started.elapsed().as_millis() as i64),
        Pid => int(i64::from(std::process::id())),
        Hostname => (super::fetch::hostname(), None),
        BackendSrcIp | BackendSrcPort | Unavailable => ("-".to_string(), None),
        ServerIp => (
            txn.server
                .as_ref()
                .map_or_else(|| "-".to_string(), |s| s.addr.ip().to_string()),
            None,
        ),
        ServerPort => match &txn.server {
            Some(s) => int(i64::from(s.addr.port())),
            None => ("-".to_string(), None),
        },
        FrontendConns => int(Counters::get(&txn.frontend.counters.scur) as i64),
        BackendConns => match &txn.backend {
            Some(b) => int(Counters::get(&b.counters.scur) as i64),
            None => int(0),
        },
        ServerConns => match &txn.server {
            Some(s) => int(Counters::get(&s.counters.scur) as i64),
            None => int(0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::testutil::*;

    #[test]
    fn literals_and_percent() {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        let f = LogFormat::parse("50%% off", &ctx).unwrap();
        assert!(f.is_literal());
        assert_eq!(f.as_literal(), Some("50% off"));
        assert_eq!(f.text(), "50%% off");
        let l = LogFormat::literal("raw %[x]");
        assert_eq!(l.as_literal(), Some("raw %[x]"));
        let mut t = txn_get("/", &[]);
        assert_eq!(l.eval(&mut t), "raw %[x]");
        assert_eq!(LogFormat::parse("", &ctx).unwrap().as_literal(), Some(""));
    }

    #[test]
    fn expressions_and_variables() {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        let mut t = txn_get("/p/q?a=1", &[("host", "h.example"), ("x-n", "there")]);
        let f =
            LogFormat::parse("hi %[req.hdr(x-n)] at %[path,regsub(^/(p),\\1_)]!", &ctx).unwrap();
        assert!(!f.is_literal());
        assert_eq!(f.as_literal(), None);
        assert_eq!(f.eval(&mut t), "hi there at p_/q!");
        let f = LogFormat::parse(
            "%ci:%cp %fi:%fp %f %ft %b %s [%ST] %HM %HU %HP %HQ %HV %rt",
            &ctx,
        )
        .unwrap();
        assert_eq!(
            f.eval(&mut t),
            "10.0.0.1:40000 127.0.0.1:8080 fe fe fe <NOSRV> [] GET /p/q?a=1 /p/q ?a=1 HTTP/1.1 7"
        );
        set_response(&mut t, 201, &[]);
        t.backend = t.world.backend("be").cloned();
        t.server = t.backend.as_ref().and_then(|b| b.server("s2").cloned());
        let f = LogFormat::parse("%b/%s %ST %si:%sp %{+Q}r %{+X}ST %bi", &ctx).unwrap();
        assert_eq!(
            f.eval(&mut t),
            "be/s2 201 127.0.0.1:9001 \"GET /p/q?a=1 HTTP/1.1\" C9 -"
        );
        let f = LogFormat::parse("%{+Q}[req.hdr(x-n)] %[var(txn.none)]|", &ctx).unwrap();
        assert_eq!(f.eval(&mut t), "\"there\" |");
        let f = LogFormat::parse("%{+E}[str(a\"b)]", &ctx).unwrap();
        assert_eq!(f.eval(&mut t), "a\\\"b");
        let f = LogFormat::parse("%Ts %pid %H %t %T %Tl %ms %Ta %B", &ctx).unwrap();
        let out = f.eval(&mut t);
        assert_eq!(out.split(' ').count(), 11, "{out}");
        assert!(out.ends_with(" -"));
        // Brackets inside parentheses do not end the expression.
        let f = LogFormat::parse("%[path,regsub([/],_,g)]", &ctx).unwrap();
        assert_eq!(f.eval(&mut t), "_p_q");
        let f = LogFormat::parse("%[path,regsub(\"]\",_,g)]x", &ctx).unwrap();
        assert_eq!(f.eval(&mut t), "/p/qx");
    }

    #[test]
    fn errors() {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        let err = |t: &str| LogFormat::parse(t, &ctx).unwrap_err();
        assert_eq!(err("%[nosuchfetch]"), "unknown fetch method 'nosuchfetch'");
        assert_eq!(
            err("x %[path,nosuchconv]"),
            "unknown converter 'nosuchconv'"
        );
        assert_eq!(err("%[lua.x]"), "unknown extension 'lua.x'");
        assert!(err("%[path").contains("missing ']'"));
        assert!(err("%[]").contains("empty expression"));
        assert!(err("%zz").contains("unknown log-format variable '%zz'"));
        assert!(err("50%").contains("'%' at the end"));
        assert!(err("a%20b").contains("unexpected character '2'"));
        assert!(err("%{+Z}ci").contains("unknown log-format option '+Z'"));
        assert!(err("%{+Q").contains("missing '}'"));
    }
}
