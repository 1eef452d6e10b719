//! ACLs: criteria, matching methods and conditions.
//!
//! This module owns the `acl NAME CRITERION [FLAGS] [PATTERNS]` syntax
//! (derived criteria such as `path_beg`, the `-i -m -f -n -M -u --` flags,
//! pattern files), the matching methods, HAProxy's predefined ACLs and
//! `if|unless` conditions with `!`, `||`/`or`, implicit AND and anonymous
//! `{ ... }` ACLs.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use regex::Regex;

use crate::proxy::txn::Txn;
use crate::sample::expr::{Expr, split_items};
use crate::sample::fetch::{self, parse_int};
use crate::sample::map::{DIR_DELIMS, DOM_DELIMS, IntRange, IpNet, match_word};
use crate::sample::{ParseCtx, Sample, SampleType};

/// How a sample is compared with the patterns (`-m METHOD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchMethod {
    /// The sample exists.
    Found,
    /// The sample is true (non-zero).
    Bool,
    /// Integer value, ranges and operators.
    Int,
    /// Address within networks.
    Ip,
    /// Exact bytes, patterns in hexadecimal.
    Bin,
    /// Exact string.
    Str,
    /// The string begins with a pattern.
    Beg,
    /// The string ends with a pattern.
    End,
    /// The string contains a pattern.
    Sub,
    /// A regular expression matches the string.
    Reg,
    /// Length of the string.
    Len,
    /// A pattern is a dot-delimited part of the string (domain).
    Dom,
    /// A pattern is a slash-delimited part of the string (directory).
    Dir,
}

impl MatchMethod {
    /// Parses a `-m` argument or a derived suffix.
    pub fn parse(s: &str) -> Option<MatchMethod> {
        use MatchMethod::*;
        Some(match s {
            "found" => Found,
            "bool" => Bool,
            "int" => Int,
            "ip" => Ip,
            "bin" => Bin,
            "str" => Str,
            "beg" => Beg,
            "end" => End,
            "sub" => Sub,
            "reg" => Reg,
            "len" => Len,
            "dom" => Dom,
            "dir" => Dir,
            _ => return None,
        })
    }
}

/// Suffixes of derived criteria (`path_beg` is `path -m beg`).
const DERIVED: &[&str] = &[
    "beg", "end", "sub", "reg", "len", "dom", "dir", "found", "ip", "bin", "str",
];

/// The patterns of one ACL expression, parsed for its method.
#[derive(Debug, Clone)]
enum Patterns {
    None,
    Ints(Vec<IntRange>),
    Ips(Vec<IpNet>),
    Bins(Vec<Vec<u8>>),
    Exact(HashSet<String>),
    Strs(Vec<String>),
    Regs(Vec<Regex>),
}

/// One declaration: a criterion, a method and patterns.
#[derive(Debug, Clone)]
pub struct AclExpr {
    expr: Expr,
    method: MatchMethod,
    ci: bool,
    patterns: Patterns,
}

impl AclExpr {
    /// Parses `CRITERION [FLAGS] [PATTERNS...]`.
    pub fn parse(words: &[String], ctx: &ParseCtx<'_>) -> Result<AclExpr, String> {
        let crit = words.first().ok_or(
            "missing ACL criterion, expected a fetch such as 'path_beg' or 'req.hdr(host)'",
        )?;
        let (expr, derived) = parse_criterion(crit, ctx)?;

        let mut ci = false;
        let mut method: Option<MatchMethod> = None;
        let mut files: Vec<String> = Vec::new();
        let mut map_files = false;
        let mut i = 1;
        while i < words.len() {
            let w = words[i].as_str();
            if w == "--" {
                i += 1;
                break;
            }
            if !w.starts_with('-') || w.len() == 1 || parse_int(w).is_some() {
                break;
            }
            let mut value = || -> Result<&String, String> {
                i += 1;
                words
                    .get(i)
                    .ok_or_else(|| format!("ACL flag '{w}' expects an argument"))
            };
            match w {
                "-i" => ci = true,
                "-n" => {}
                "-M" => map_files = true,
                "-u" => {
                    value()?;
                }
                "-f" => files.push(value()?.clone()),
                "-m" => {
                    let m = value()?;
                    method = Some(MatchMethod::parse(m).ok_or_else(|| {
                        format!(
                            "unknown matching method '{m}' after '-m', expected found, bool, int, ip, bin, str, beg, end, sub, reg, len, dom or dir"
                        )
                    })?);
                }
                _ => {
                    return Err(format!(
                        "unknown ACL flag '{w}', expected -i, -f FILE, -m METHOD, -n, -M, -u ID or '--' before patterns"
                    ));
                }
            }
            i += 1;
        }

        let mut pats: Vec<String> = words[i..].to_vec();
        for f in &files {
            pats.extend(read_pattern_file(f, ctx.base_dir, map_files)?);
        }

        let method = match method.or(derived) {
            Some(m) => m,
            None => default_method(expr.out_type(), &pats),
        };
        let patterns = parse_patterns(method, ci, &pats)?;
        Ok(AclExpr {
            expr,
            method,
            ci,
            patterns,
        })
    }

    /// The criterion.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The matching method in use.
    pub fn method(&self) -> MatchMethod {
        self.method
    }

    /// Whether any value of the criterion matches a pattern.
    pub fn eval(&self, txn: &mut Txn) -> bool {
        if self.expr.is_multi() {
            self.expr.eval_all(txn).iter().any(|s| self.matches(s))
        } else {
            self.expr.eval(txn).is_some_and(|s| self.matches(&s))
        }
    }

    fn matches(&self, s: &Sample) -> bool {
        let text = || {
            let t = s.to_str();
            if self.ci {
                t.to_ascii_lowercase()
            } else {
                t.into_owned()
            }
        };
        match (&self.method, &self.patterns) {
            (MatchMethod::Found, _) => true,
            (MatchMethod::Bool, _) => s.to_bool(),
            (MatchMethod::Len, Patterns::Ints(r)) => {
                let len = match s {
                    Sample::Bin(b) => b.len(),
                    other => other.to_str().len(),
                } as i64;
                r.iter().any(|r| r.contains(len))
            }
            (_, Patterns::Ints(r)) => s.to_int().is_some_and(|v| r.iter().any(|r| r.contains(v))),
            (_, Patterns::Ips(nets)) => s
                .to_ip()
                .is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
            (_, Patterns::Bins(b)) => {
                let data = s.to_bytes();
                b.contains(&data)
            }
            (_, Patterns::Exact(set)) => set.contains(&text()),
            (_, Patterns::Regs(res)) => {
                let t = s.to_str();
                res.iter().any(|r| r.is_match(&t))
            }
            (m, Patterns::Strs(list)) => {
                let t = text();
                list.iter().any(|p| match m {
                    MatchMethod::Beg => t.starts_with(p.as_str()),
                    MatchMethod::End => t.ends_with(p.as_str()),
                    MatchMethod::Sub => t.contains(p.as_str()),
                    MatchMethod::Dom => match_word(&t, p, DOM_DELIMS, false),
                    MatchMethod::Dir => match_word(&t, p, DIR_DELIMS, false),
                    _ => t == *p,
                })
            }
            (_, Patterns::None) => false,
        }
    }
}

/// Parses the criterion, resolving derived names (`hdr_beg(host)` is
/// `hdr(host)` with `-m beg`).
fn parse_criterion(crit: &str, ctx: &ParseCtx<'_>) -> Result<(Expr, Option<MatchMethod>), String> {
    let name_end = crit.find(['(', ',']).unwrap_or(crit.len());
    let name = &crit[..name_end];
    if fetch::lookup(name).is_none()
        && let Some((base, suffix)) = name.rsplit_once('_')
        && DERIVED.contains(&suffix)
        && fetch::lookup(base).is_some()
    {
        let rewritten = format!("{base}{}", &crit[name_end..]);
        let expr = Expr::parse(&rewritten, ctx)?.with_text(crit);
        return Ok((expr, MatchMethod::parse(suffix)));
    }
    // Make sure the text is a single expression before resolving names.
    split_items(crit)?;
    Ok((Expr::parse(crit, ctx)?, None))
}

/// The method used without `-m`, from the criterion's type.
fn default_method(t: SampleType, pats: &[String]) -> MatchMethod {
    match t {
        SampleType::Bool => MatchMethod::Bool,
        SampleType::Int => MatchMethod::Int,
        SampleType::Ipv4 | SampleType::Ipv6 | SampleType::Addr => MatchMethod::Ip,
        SampleType::Bin => MatchMethod::Bin,
        SampleType::Str | SampleType::Meth => MatchMethod::Str,
        SampleType::Any => {
            if pats.is_empty() {
                MatchMethod::Bool
            } else if pats
                .iter()
                .all(|p| is_int_op(p) || IntRange::parse(p).is_some())
            {
                MatchMethod::Int
            } else {
                MatchMethod::Str
            }
        }
    }
}

fn is_int_op(s: &str) -> bool {
    matches!(s, "eq" | "ge" | "gt" | "le" | "lt")
}

/// Integer patterns: `N`, `N:M`, `:M`, `N:`, and operators `eq ge gt le lt`
/// that apply to the values following them.
fn parse_int_patterns(pats: &[String]) -> Result<Vec<IntRange>, String> {
    let mut out = Vec::new();
    let mut op: Option<&str> = None;
    let mut pending = false;
    for p in pats {
        if is_int_op(p) {
            op = Some(p.as_str());
            pending = true;
            continue;
        }
        pending = false;
        let bad = || {
            format!(
                "invalid integer pattern '{p}', expected N, N:M, :M, N: or an operator (eq, ge, gt, le, lt) and N"
            )
        };
        let r = match op {
            None | Some("eq") if p.contains(':') => IntRange::parse(p).ok_or_else(bad)?,
            None => IntRange::parse(p).ok_or_else(bad)?,
            Some(o) => {
                let v = parse_int(p).ok_or_else(bad)?;
                match o {
                    "ge" => IntRange {
                        min: Some(v),
                        max: None,
                    },
                    "gt" => IntRange {
                        min: Some(v.saturating_add(1)),
                        max: None,
                    },
                    "le" => IntRange {
                        min: None,
                        max: Some(v),
                    },
                    "lt" => IntRange {
                        min: None,
                        max: Some(v.saturating_sub(1)),
                    },
                    _ => IntRange {
                        min: Some(v),
                        max: Some(v),
                    },
                }
            }
        };
        out.push(r);
    }
    if pending {
        return Err(format!(
            "operator '{}' expects a number after it",
            op.unwrap_or("")
        ));
    }
    Ok(out)
}

fn parse_patterns(method: MatchMethod, ci: bool, pats: &[String]) -> Result<Patterns, String> {
    let lower = |p: &String| {
        if ci {
            p.to_ascii_lowercase()
        } else {
            p.clone()
        }
    };
    Ok(match method {
        MatchMethod::Found | MatchMethod::Bool => {
            if let Some(p) = pats.first() {
                let m = if method == MatchMethod::Found { "found" } else { "bool" };
                return Err(format!("matching method '{m}' takes no pattern, got '{p}'"));
            }
            Patterns::None
        }
        MatchMethod::Int | MatchMethod::Len => Patterns::Ints(parse_int_patterns(pats)?),
        MatchMethod::Ip => Patterns::Ips(
            pats.iter()
                .map(|p| {
                    IpNet::parse(p).ok_or_else(|| {
                        format!("invalid IP address or network '{p}', expected ADDR, ADDR/LEN or ADDR/MASK")
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        MatchMethod::Bin => Patterns::Bins(
            pats.iter()
                .map(|p| {
                    crate::sample::conv::unhex(p)
                        .ok_or_else(|| format!("invalid binary pattern '{p}', expected hexadecimal digits"))
                })
                .collect::<Result<_, _>>()?,
        ),
        MatchMethod::Str => Patterns::Exact(pats.iter().map(lower).collect()),
        MatchMethod::Beg | MatchMethod::End | MatchMethod::Sub | MatchMethod::Dom | MatchMethod::Dir => {
            Patterns::Strs(pats.iter().map(lower).collect())
        }
        MatchMethod::Reg => Patterns::Regs(
            pats.iter()
                .map(|p| {
                    let src = if ci { format!("(?i){p}") } else { p.clone() };
                    Regex::new(&src).map_err(|e| format!("invalid regex '{p}': {e}"))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Patterns of a `-f` file: one per line, `#` comments and blank lines
/// ignored; with `-M` only the first word (the key) of each line.
fn read_pattern_file(file: &str, base: &Path, keys_only: bool) -> Result<Vec<String>, String> {
    let p = Path::new(file);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let text = std::fs::read_to_string(&full)
        .map_err(|e| format!("cannot open pattern file '{}': {e}", full.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            if keys_only {
                l.split_whitespace().next().unwrap_or(l).to_string()
            } else {
                l.to_string()
            }
        })
        .collect())
}

/// A named ACL: its declarations, OR'ed.
#[derive(Debug, Clone)]
pub struct Acl {
    /// The ACL's name (`{ ... }` for an anonymous one).
    pub name: String,
    exprs: Vec<Arc<AclExpr>>,
}

impl Acl {
    /// Whether any declaration matches.
    pub fn eval(&self, txn: &mut Txn) -> bool {
        self.exprs.iter().any(|e| e.eval(txn))
    }

    /// The declarations.
    pub fn exprs(&self) -> &[Arc<AclExpr>] {
        &self.exprs
    }
}

/// HAProxy's predefined ACLs, as `CRITERION PATTERNS...` words.
const PREDEFINED: &[(&str, &[&str])] = &[
    ("TRUE", &["always_true"]),
    ("FALSE", &["always_false"]),
    ("HTTP", &["req.proto_http"]),
    ("HTTP_1.0", &["req.ver", "1.0"]),
    ("HTTP_1.1", &["req.ver", "1.1"]),
    ("HTTP_2.0", &["req.ver", "2.0"]),
    ("HTTP_3.0", &["req.ver", "3.0"]),
    ("HTTP_CONTENT", &["hdr_val(content-length)", "gt", "0"]),
    ("HTTP_URL_ABS", &["url_reg", "^[^/:]*://"]),
    ("HTTP_URL_SLASH", &["url_beg", "/"]),
    ("HTTP_URL_STAR", &["url", "*"]),
    ("LOCALHOST", &["src", "127.0.0.1/8", "::1"]),
    ("METH_CONNECT", &["method", "CONNECT"]),
    ("METH_DELETE", &["method", "DELETE"]),
    ("METH_GET", &["method", "GET", "HEAD"]),
    ("METH_HEAD", &["method", "HEAD"]),
    ("METH_OPTIONS", &["method", "OPTIONS"]),
    ("METH_POST", &["method", "POST"]),
    ("METH_PUT", &["method", "PUT"]),
    ("METH_TRACE", &["method", "TRACE"]),
    ("REQ_CONTENT", &["req.len", "gt", "0"]),
    ("WAIT_END", &["wait_end"]),
];

/// A predefined ACL by name.
pub fn predefined(name: &str, ctx: &ParseCtx<'_>) -> Option<Result<Acl, String>> {
    let (_, words) = PREDEFINED.iter().find(|(n, _)| *n == name)?;
    let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    Some(AclExpr::parse(&words, ctx).map(|e| Acl {
        name: name.to_string(),
        exprs: vec![Arc::new(e)],
    }))
}

/// The named ACLs of a proxy.
#[derive(Debug, Clone, Default)]
pub struct AclTable {
    acls: HashMap<String, Acl>,
}

impl AclTable {
    /// Adds the words following `acl` (`NAME CRITERION [FLAGS] [PATTERNS]`).
    /// Declarations with the same name are OR'ed.
    pub fn add(&mut self, words: &[String], ctx: &ParseCtx<'_>) -> Result<(), String> {
        let name = words
            .first()
            .ok_or("missing ACL name, expected 'acl NAME CRITERION [FLAGS] [PATTERN...]'")?;
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(format!(
                "invalid character '{bad}' in ACL name '{name}', expected letters, digits, '-', '_', '.' or ':'"
            ));
        }
        if words.len() < 2 {
            return Err(format!(
                "ACL '{name}' has no criterion, expected 'acl {name} CRITERION [FLAGS] [PATTERN...]'"
            ));
        }
        let e = AclExpr::parse(&words[1..], ctx)?;
        self.acls
            .entry(name.clone())
            .or_insert_with(|| Acl {
                name: name.clone(),
                exprs: Vec::new(),
            })
            .exprs
            .push(Arc::new(e));
        Ok(())
    }

    /// A declared ACL by name.
    pub fn get(&self, name: &str) -> Option<&Acl> {
        self.acls.get(name)
    }

    /// Number of declared names.
    pub fn len(&self) -> usize {
        self.acls.len()
    }

    /// Whether no ACL is declared.
    pub fn is_empty(&self) -> bool {
        self.acls.is_empty()
    }

    /// Declared names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.acls.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// One term of a condition: an ACL, possibly negated.
#[derive(Debug, Clone)]
struct Term {
    neg: bool,
    acl: Arc<Acl>,
}

/// A condition: `if|unless TERMS`.
#[derive(Debug, Clone)]
pub struct Cond {
    unless: bool,
    /// OR of AND-groups.
    groups: Vec<Vec<Term>>,
}

impl Cond {
    /// Parses words starting with `if` or `unless`.
    pub fn parse(words: &[String], acls: &AclTable, ctx: &ParseCtx<'_>) -> Result<Cond, String> {
        let unless = match words.first().map(String::as_str) {
            Some("if") => false,
            Some("unless") => true,
            Some(other) => {
                return Err(format!(
                    "unexpected '{other}', expected 'if' or 'unless' before a condition"
                ));
            }
            None => {
                return Err(
                    "missing condition, expected 'if' or 'unless' followed by ACL names".into(),
                );
            }
        };
        let kw = &words[0];
        let mut groups: Vec<Vec<Term>> = vec![Vec::new()];
        let mut neg = false;
        let mut i = 1;
        while i < words.len() {
            let w = words[i].as_str();
            if w == "||" || w == "or" {
                if neg {
                    return Err(format!("'!' before '{w}', expected an ACL after '!'"));
                }
                if groups.last().is_none_or(Vec::is_empty) {
                    return Err(format!(
                        "'{w}' without a condition before it in '{kw}' condition"
                    ));
                }
                groups.push(Vec::new());
                i += 1;
                continue;
            }
            let bangs = w.chars().take_while(|&c| c == '!').count();
            let rest = &w[bangs..];
            if bangs % 2 == 1 {
                neg = !neg;
            }
            if rest.is_empty() {
                i += 1;
                continue;
            }
            let acl = if rest == "{" {
                let close = words[i + 1..]
                    .iter()
                    .position(|x| x == "}")
                    .map(|p| p + i + 1)
                    .ok_or("missing '}' to close the anonymous ACL started with '{'")?;
                let inner = &words[i + 1..close];
                if inner.is_empty() {
                    return Err(
                        "empty anonymous ACL '{ }', expected '{ CRITERION [FLAGS] [PATTERN...] }'"
                            .into(),
                    );
                }
                let e = AclExpr::parse(inner, ctx)?;
                i = close + 1;
                Arc::new(Acl {
                    name: format!("{{ {} }}", inner.join(" ")),
                    exprs: vec![Arc::new(e)],
                })
            } else if rest == "}" {
                return Err("unexpected '}' without a matching '{'".into());
            } else {
                i += 1;
                match acls.get(rest) {
                    Some(a) => Arc::new(a.clone()),
                    None => match predefined(rest, ctx) {
                        Some(a) => Arc::new(a?),
                        None => {
                            return Err(format!(
                                "no such ACL : '{rest}', expected the name of an ACL declared before, a predefined ACL (TRUE, FALSE, HTTP, METH_GET, LOCALHOST...) or '{{ CRITERION PATTERNS }}'"
                            ));
                        }
                    },
                }
            };
            if let Some(g) = groups.last_mut() {
                g.push(Term { neg, acl });
            }
            neg = false;
        }
        if neg {
            return Err("'!' at the end of the condition, expected an ACL after it".into());
        }
        if groups.last().is_none_or(Vec::is_empty) {
            return Err(if groups.len() == 1 {
                format!(
                    "missing condition after '{kw}', expected ACL names or '{{ CRITERION PATTERNS }}'"
                )
            } else {
                "'||' at the end of the condition, expected an ACL after it".into()
            });
        }
        Ok(Cond { unless, groups })
    }

    /// Evaluates the condition (short-circuit, left to right).
    pub fn eval(&self, txn: &mut Txn) -> bool {
        let hit = self
            .groups
            .iter()
            .any(|g| g.iter().all(|t| t.acl.eval(txn) != t.neg));
        hit != self.unless
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::testutil::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// Evaluates `acl x WORDS` against a transaction.
    fn acl(t: &mut Txn, words: &str) -> bool {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        AclExpr::parse(&w(words), &ctx)
            .unwrap_or_else(|e| panic!("{words}: {e}"))
            .eval(t)
    }

    fn acl_err(words: &str) -> String {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        AclExpr::parse(&w(words), &ctx).unwrap_err()
    }

    #[test]
    fn string_methods() {
        let mut t = txn_get(
            "/img/a.png?x=1",
            &[
                ("x-a", "FOO"),
                ("host", "www.Example.com"),
                ("user-agent", "googlebot/2"),
            ],
        );
        let t = &mut t;
        assert!(acl(t, "hdr(x-a) -i foo"));
        assert!(!acl(t, "hdr(x-a) foo"));
        assert!(acl(t, "hdr(x-a) FOO bar"));
        assert!(acl(t, "path -m beg /img"));
        assert!(acl(t, "path_beg /nope /img"));
        assert!(acl(t, "path_end .png"));
        assert!(acl(t, "path -m end .png"));
        assert!(acl(t, "hdr_sub(user-agent) bot"));
        assert!(acl(t, "path_sub a.p"));
        assert!(acl(t, "path_reg ^/img/[a-z]+\\.png$"));
        assert!(acl(t, "path -m reg -i ^/IMG"));
        assert!(!acl(t, "path -m reg ^/IMG"));
        assert!(acl(t, "hdr(host) -m dom -i example"));
        assert!(acl(t, "hdr_dom(host) -i www.example.com"));
        assert!(!acl(t, "hdr_dom(host) ample"));
        assert!(acl(t, "path_dir img"));
        assert!(!acl(t, "path_dir im"));
        assert!(acl(t, "path -m len 10"));
        assert!(acl(t, "path_len gt 5"));
        assert!(acl(t, "url_beg /img/a.png?x"));
        assert!(acl(t, "base_beg www.Example.com/img"));
        assert!(acl(t, "urlp(x) 1"));
        assert!(acl(t, "req.hdr(host),lower -m end .com"));
        assert!(acl(t, "path -m str -- /img/a.png"));
    }

    #[test]
    fn found_bool_int_ip_bin_methods() {
        let mut t = txn_get(
            "/",
            &[
                ("x-f", ""),
                ("x-i", "11"),
                ("x-m", "1, 20"),
                ("content-length", "3"),
            ],
        );
        let t = &mut t;
        assert!(acl(t, "req.hdr(x-f) -m found"));
        assert!(!acl(t, "req.hdr(x-nope) -m found"));
        assert!(acl(t, "hdr_found(x-f)"));
        assert!(acl(t, "req.hdr(x-i) -m int gt 10"));
        assert!(!acl(t, "req.hdr(x-i) -m int gt 11"));
        assert!(acl(t, "req.hdr(x-i) -m int ge 11"));
        assert!(acl(t, "req.hdr(x-i) -m int lt 12"));
        assert!(acl(t, "req.hdr(x-i) -m int le 11"));
        assert!(acl(t, "req.hdr(x-i) -m int eq 11"));
        assert!(acl(t, "req.hdr(x-i) -m int 10:12"));
        assert!(acl(t, "req.hdr(x-i) -m int 1 11"));
        assert!(!acl(t, "req.hdr(x-i) -m int :10"));
        assert!(acl(t, "hdr_val(x-i) 11:"));
        // Every occurrence is tested in ACLs.
        assert!(acl(t, "req.hdr(x-m) -m int 20"));
        assert!(acl(t, "req.hdr(x-m) -m str 1"));
        assert!(!acl(t, "req.hdr(x-m,1) -m str 20"));
        assert!(acl(t, "hdr_cnt(x-m) 2"));
        assert!(acl(t, "always_true"));
        assert!(!acl(t, "always_false"));
        assert!(!acl(t, "ssl_fc"));
        assert!(acl(t, "int(5) -m bool"));
        assert!(!acl(t, "int(0) -m bool"));
        assert!(acl(t, "src 10.0.0.0/8"));
        assert!(acl(t, "src 192.168.0.1 10.0.0.1"));
        assert!(!acl(t, "src 127.0.0.0/8"));
        assert!(acl(t, "src 10.0.0.0/255.0.0.0"));
        assert!(acl(t, "src ::ffff:10.0.0.1"));
        assert!(acl(t, "dst 127.0.0.1"));
        assert!(acl(t, "src_port 40000"));
        assert!(acl(t, "dst_port 8000:9000"));
        assert!(!acl(t, "hdr_ip(x-nope) 1.2.3.4"));
        assert!(acl(t, "bin(414243) 414243"));
        assert!(acl(t, "str(ABC) -m bin 414243"));
        assert!(acl(t, "method GET"));
        assert!(!acl(t, "method POST"));
        assert!(acl(t, "method -i get"));
        assert!(acl(t, "nbsrv(be) ge 2"));
        // Pattern-less string ACLs never match.
        assert!(!acl(t, "path"));
        set_response(t, 503, &[]);
        assert!(acl(t, "status 500:599"));
        assert!(!acl(t, "res.hdr(x) -m found"));
    }

    #[test]
    fn extension_and_variable_criteria() {
        let mut t = txn_get("/", &[]);
        let t = &mut t;
        // t.answer is untyped: integer patterns give integer matching.
        assert!(acl(t, "t.answer gt 20"));
        assert!(acl(t, "t.answer 42"));
        assert!(acl(t, "t.answer -m str 42"));
        assert!(!acl(t, "t.broken -m found"));
        t.set_var(&"txn.v".parse().unwrap(), Sample::str("abc"));
        assert!(acl(t, "var(txn.v) abc"));
        assert!(acl(t, "var(txn.v) -m beg ab"));
        assert!(acl(t, "var(txn.v)"));
        assert!(!acl(t, "var(txn.none)"));
    }

    #[test]
    fn pattern_files() {
        let parts = ctx_parts();
        std::fs::write(
            parts.dir.join("blocked.lst"),
            "# blocked\n/one\n\n  /two  \n",
        )
        .unwrap();
        std::fs::write(parts.dir.join("nets.map"), "10.0.0.0/8 lan\n").unwrap();
        let ctx = parts.ctx();
        let e = AclExpr::parse(&w("path -f blocked.lst"), &ctx).unwrap();
        assert!(e.eval(&mut txn_get("/two", &[])));
        assert!(!e.eval(&mut txn_get("/three", &[])));
        let e = AclExpr::parse(&w("path_beg -f blocked.lst /three"), &ctx).unwrap();
        assert!(e.eval(&mut txn_get("/three/x", &[])));
        assert!(e.eval(&mut txn_get("/one/x", &[])));
        let e = AclExpr::parse(&w("src -M -f nets.map"), &ctx).unwrap();
        assert!(e.eval(&mut txn_get("/", &[])));
        let err = AclExpr::parse(&w("path -f missing.lst"), &ctx).unwrap_err();
        assert!(err.starts_with("cannot open pattern file '"), "{err}");
    }

    #[test]
    fn parse_errors() {
        assert!(acl_err("path_reg (unclosed").contains("invalid regex '(unclosed'"));
        assert!(acl_err("path -m nonsense x").contains("unknown matching method 'nonsense'"));
        assert!(acl_err("path -x foo").contains("unknown ACL flag '-x'"));
        assert!(acl_err("path -m").contains("ACL flag '-m' expects an argument"));
        assert!(acl_err("src 1.2.3.400").contains("invalid IP address or network '1.2.3.400'"));
        assert!(acl_err("src_port gt").contains("operator 'gt' expects a number"));
        assert!(acl_err("src_port abc").contains("invalid integer pattern 'abc'"));
        assert!(acl_err("path -m found /x").contains("takes no pattern"));
        assert!(acl_err("str(x) -m bin zz").contains("invalid binary pattern"));
        assert_eq!(acl_err("nosuch x"), "unknown fetch method 'nosuch'");
        assert_eq!(acl_err("lua.x x"), "unknown extension 'lua.x'");
        assert!(acl_err("hdr_beg x").contains("fetch 'hdr' expects"));
    }

    #[test]
    fn table_and_conditions() {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        let mut acls = AclTable::default();
        acls.add(&w("is_api path_beg /api"), &ctx).unwrap();
        acls.add(&w("is_api path_beg /v2"), &ctx).unwrap();
        acls.add(&w("is_png path_end .png"), &ctx).unwrap();
        acls.add(&w("from_lan src 10.0.0.0/8"), &ctx).unwrap();
        assert_eq!(acls.names(), vec!["from_lan", "is_api", "is_png"]);
        assert!(
            acls.add(&w("bad$name path /"), &ctx)
                .unwrap_err()
                .contains("invalid character '$'")
        );
        assert!(
            acls.add(&w("lonely"), &ctx)
                .unwrap_err()
                .contains("has no criterion")
        );
        let c = |s: &str| Cond::parse(&w(s), &acls, &ctx).unwrap_or_else(|e| panic!("{s}: {e}"));
        let ev = |s: &str, path: &str| c(s).eval(&mut txn_get(path, &[]));
        // Declarations with one name are OR'ed.
        assert!(ev("if is_api", "/api/x"));
        assert!(ev("if is_api", "/v2/x"));
        assert!(!ev("if is_api", "/x"));
        assert!(ev("unless is_api", "/x"));
        assert!(ev("if !is_api", "/x"));
        assert!(ev("if ! is_api", "/x"));
        assert!(!ev("if !!is_api", "/x"));
        // Implicit AND, OR between groups.
        assert!(ev("if is_api from_lan", "/api"));
        assert!(!ev("if is_api !from_lan", "/api"));
        assert!(ev("if is_png || is_api", "/a.png"));
        assert!(ev("if is_png or is_api", "/api"));
        assert!(!ev("if is_png || is_api !from_lan", "/api"));
        assert!(ev("if is_png is_api || from_lan", "/zzz"));
        // Anonymous ACLs.
        assert!(ev("if { path /x }", "/x"));
        assert!(ev("if !{ path /x }", "/y"));
        assert!(ev("if ! { path /x } is_png", "/y.png"));
        assert!(ev("if { path_beg /a /b } || { path /c }", "/c"));
        assert!(!ev("if { path_beg /a /b } || { path /c }", "/d"));
        // Predefined ACLs.
        assert!(ev("if TRUE", "/"));
        assert!(!ev("if FALSE", "/"));
        assert!(ev("if HTTP METH_GET HTTP_1.1 HTTP_URL_SLASH WAIT_END", "/"));
        assert!(!ev(
            "if METH_POST || HTTP_2.0 || LOCALHOST || HTTP_CONTENT || REQ_CONTENT || HTTP_URL_ABS",
            "/"
        ));
        assert!(ev("if HTTP_URL_ABS", "http://h/x"));
        let mut post = txn_req("POST", "/", &[("content-length", "3")]);
        assert!(c("if METH_POST HTTP_CONTENT").eval(&mut post));
        // Errors.
        let e = |s: &str| Cond::parse(&w(s), &acls, &ctx).unwrap_err();
        assert!(e("if nope").starts_with("no such ACL : 'nope'"));
        assert!(e("if").contains("missing condition after 'if'"));
        assert!(e("when x").contains("expected 'if' or 'unless'"));
        assert!(e("if || is_api").contains("without a condition before it"));
        assert!(e("if is_api ||").contains("at the end of the condition"));
        assert!(e("if is_api !").contains("'!' at the end"));
        assert!(e("if { path /x").contains("missing '}'"));
        assert!(e("if { }").contains("empty anonymous ACL"));
        assert!(e("if }").contains("unexpected '}'"));
        assert!(e("if { path_reg ( }").contains("invalid regex"));
    }
}
