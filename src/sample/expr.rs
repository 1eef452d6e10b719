//! Sample expressions: a fetch followed by converters
//! (`req.hdr(host),lower,map(hosts.map)`).
//!
//! This module owns the expression syntax (names, parenthesised arguments
//! with quotes and backslash escapes, `,` between converters), name
//! resolution (built-ins first, then extensions for dotted names) and
//! evaluation.

use super::conv::{self, ConvDef};
use super::fetch::{self, Arg, ArgEnv, FetchDef};
use super::{ParseCtx, Sample, SampleType};
use crate::ext::{ExtRef, ResolveError};
use crate::proxy::txn::Txn;

/// The fetch that starts an expression.
#[derive(Debug, Clone)]
enum FetchCall {
    Builtin {
        def: &'static FetchDef,
        args: Vec<Arg>,
    },
    Ext {
        r: ExtRef,
        args: Vec<Sample>,
    },
}

/// One converter of an expression.
#[derive(Debug, Clone)]
enum ConvCall {
    Builtin {
        def: &'static ConvDef,
        args: Vec<Arg>,
    },
    Ext {
        r: ExtRef,
        args: Vec<Sample>,
    },
}

/// A parsed sample expression.
#[derive(Debug, Clone)]
pub struct Expr {
    text: String,
    fetch: FetchCall,
    convs: Vec<ConvCall>,
}

/// One `name(args)` item of an expression, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub name: String,
    pub args: Vec<String>,
}

/// Namespaces of HAProxy's own dotted fetch names: an unknown name there
/// is an unknown fetch, not an unknown extension.
const BUILTIN_NAMESPACES: &[&str] = &[
    "req", "res", "txn", "sess", "proc", "capture", "ssl", "http", "bc", "fc", "be", "fe", "srv",
    "sc", "so", "src", "dst", "quic", "var", "hdr", "url", "path", "base", "cook", "status",
];

impl Expr {
    /// Parses a bare expression (no `%[` `]`).
    pub fn parse(text: &str, ctx: &ParseCtx<'_>) -> Result<Expr, String> {
        let items = split_items(text)?;
        let mut it = items.into_iter();
        let first = it.next().ok_or_else(|| {
            format!("empty sample expression '{text}', expected a fetch such as 'req.hdr(host)'")
        })?;
        let fetch = resolve_fetch(&first, ctx)?;
        let convs = it
            .map(|item| resolve_conv(&item, ctx))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Expr {
            text: text.trim().to_string(),
            fetch,
            convs,
        })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Replaces the text shown for the expression (derived ACL criteria).
    pub(crate) fn with_text(mut self, text: &str) -> Expr {
        self.text = text.to_string();
        self
    }

    /// The name of the fetch.
    pub fn fetch_name(&self) -> &str {
        match &self.fetch {
            FetchCall::Builtin { def, .. } => def.name,
            FetchCall::Ext { r, .. } => &r.full,
        }
    }

    /// The output type of the fetch alone (`Any` for extensions).
    pub fn fetch_type(&self) -> SampleType {
        match &self.fetch {
            FetchCall::Builtin { def, .. } => def.out,
            FetchCall::Ext { .. } => SampleType::Any,
        }
    }

    /// Whether converters follow the fetch.
    pub fn has_converters(&self) -> bool {
        !self.convs.is_empty()
    }

    /// The output type of the whole expression (best effort: `Any` where
    /// an extension or a pass-through converter hides it).
    pub fn out_type(&self) -> SampleType {
        let mut t = self.fetch_type();
        for c in &self.convs {
            t = match c {
                ConvCall::Builtin { def, .. } if def.out == SampleType::Any => t,
                ConvCall::Builtin { def, .. } => def.out,
                ConvCall::Ext { .. } => SampleType::Any,
            };
        }
        t
    }

    /// Whether the fetch can return several values and no occurrence was
    /// given (ACLs then test every value).
    pub fn is_multi(&self) -> bool {
        match &self.fetch {
            FetchCall::Builtin { def, args } => {
                def.multi.is_some() && args.get(1).and_then(Arg::as_int).is_none_or(|o| o == 0)
            }
            FetchCall::Ext { .. } => false,
        }
    }

    /// Evaluates the expression; `None` is "no sample".
    pub fn eval(&self, txn: &mut Txn) -> Option<Sample> {
        let s = match &self.fetch {
            FetchCall::Builtin { def, args } => (def.func)(txn, args)?,
            FetchCall::Ext { r, args } => match r.ext.fetch(&r.name, txn, args) {
                Ok(s) => s?,
                Err(e) => {
                    tracing::warn!(extension = %r.full, point = "fetch", reason = %e, "extension fetch failed; no sample");
                    return None;
                }
            },
        };
        self.convert(txn, s)
    }

    /// Evaluates every occurrence the fetch returns (ACL matching), each
    /// through the converters.
    pub fn eval_all(&self, txn: &mut Txn) -> Vec<Sample> {
        match &self.fetch {
            FetchCall::Builtin {
                def: FetchDef { multi: Some(m), .. },
                args,
            } => m(txn, args)
                .into_iter()
                .filter_map(|s| self.convert(txn, s))
                .collect(),
            _ => self.eval(txn).into_iter().collect(),
        }
    }

    fn convert(&self, txn: &mut Txn, mut s: Sample) -> Option<Sample> {
        for c in &self.convs {
            s = match c {
                ConvCall::Builtin { def, args } => def.apply(txn, s, args)?,
                ConvCall::Ext { r, args } => match r.ext.convert(&r.name, txn, s, args) {
                    Ok(v) => v?,
                    Err(e) => {
                        tracing::warn!(extension = %r.full, point = "converter", reason = %e, "extension converter failed; no sample");
                        return None;
                    }
                },
            };
        }
        Some(s)
    }
}

fn resolve_error(e: ResolveError, name: &str, kind: &str) -> String {
    let ns = name.split('.').next().unwrap_or("");
    match e {
        ResolveError::UnknownExtension(_)
            if kind == "fetch" && BUILTIN_NAMESPACES.contains(&ns) =>
        {
            format!("unknown fetch method '{name}'")
        }
        other => other.to_string(),
    }
}

fn resolve_fetch(item: &Item, ctx: &ParseCtx<'_>) -> Result<FetchCall, String> {
    if let Some(def) = fetch::lookup(&item.name) {
        let args = def.parse_args(&item.args, ArgEnv::Parse(ctx))?;
        return Ok(FetchCall::Builtin { def, args });
    }
    if item.name.contains('.') {
        let r = ctx
            .ext
            .fetch(&item.name)
            .map_err(|e| resolve_error(e, &item.name, "fetch"))?;
        return Ok(FetchCall::Ext {
            r,
            args: item.args.iter().map(|a| Sample::Str(a.clone())).collect(),
        });
    }
    Err(format!("unknown fetch method '{}'", item.name))
}

fn resolve_conv(item: &Item, ctx: &ParseCtx<'_>) -> Result<ConvCall, String> {
    if let Some(def) = conv::lookup(&item.name) {
        let args = def.parse_args(&item.args, ArgEnv::Parse(ctx))?;
        return Ok(ConvCall::Builtin { def, args });
    }
    if item.name.contains('.') {
        let r = ctx
            .ext
            .converter(&item.name)
            .map_err(|e| resolve_error(e, &item.name, "converter"))?;
        return Ok(ConvCall::Ext {
            r,
            args: item.args.iter().map(|a| Sample::Str(a.clone())).collect(),
        });
    }
    Err(format!("unknown converter '{}'", item.name))
}

/// Whether an unescaped `q` occurs in `chars` from `from` on (a quote with
/// no closing one is taken literally).
pub(crate) fn has_close(chars: &[char], from: usize, q: char) -> bool {
    let mut i = from;
    while i < chars.len() {
        if q == '"' && chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i] == q {
            return true;
        }
        i += 1;
    }
    false
}

/// Parses a parenthesised argument list starting after `(`; returns the
/// arguments and the position after `)`.
fn parse_arg_list(
    chars: &[char],
    mut i: usize,
    text: &str,
) -> Result<(Vec<String>, usize), String> {
    let n = chars.len();
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut seen = false;
    let mut depth = 0usize;
    while i < n {
        let c = chars[i];
        match c {
            '\\' => {
                match chars.get(i + 1) {
                    Some(&d) if matches!(d, '\\' | '\'' | '"' | ',' | '(' | ')' | ' ') => {
                        cur.push(d)
                    }
                    Some(&d) => {
                        cur.push('\\');
                        cur.push(d);
                    }
                    None => cur.push('\\'),
                }
                seen = true;
                i += 2;
            }
            '"' | '\'' if has_close(chars, i + 1, c) => {
                i += 1;
                while i < n && chars[i] != c {
                    if c == '"' && chars[i] == '\\' && matches!(chars.get(i + 1), Some('"' | '\\'))
                    {
                        cur.push(chars[i + 1]);
                        i += 2;
                        continue;
                    }
                    cur.push(chars[i]);
                    i += 1;
                }
                seen = true;
                i += 1;
            }
            '(' => {
                depth += 1;
                cur.push(c);
                seen = true;
                i += 1;
            }
            ')' if depth > 0 => {
                depth -= 1;
                cur.push(c);
                i += 1;
            }
            ')' => {
                if seen || !args.is_empty() {
                    args.push(cur);
                }
                return Ok((args, i + 1));
            }
            ',' if depth == 0 => {
                args.push(std::mem::take(&mut cur));
                seen = true;
                i += 1;
            }
            _ => {
                cur.push(c);
                seen = true;
                i += 1;
            }
        }
    }
    Err(format!("missing ')' to close the arguments in '{text}'"))
}

/// Splits an expression into `name(args)` items separated by commas.
pub(crate) fn split_items(text: &str) -> Result<Vec<Item>, String> {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let mut i = 0;
    let mut items = Vec::new();
    loop {
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < n && !matches!(chars[i], '(' | ',' | ')') && !chars[i].is_whitespace() {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        if name.is_empty() {
            return Err(if items.is_empty() {
                format!(
                    "missing fetch method in '{text}', expected a fetch such as 'req.hdr(host)'"
                )
            } else {
                format!("missing converter name after ',' in '{text}'")
            });
        }
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        let mut args = Vec::new();
        if i < n && chars[i] == '(' {
            let (a, next) = parse_arg_list(&chars, i + 1, text)?;
            args = a;
            i = next;
            while i < n && chars[i].is_whitespace() {
                i += 1;
            }
        }
        items.push(Item { name, args });
        if i >= n {
            return Ok(items);
        }
        if chars[i] == ',' {
            i += 1;
            continue;
        }
        return Err(format!(
            "unexpected '{}' after '{}' in '{text}', expected ',' before a converter",
            chars[i],
            items.last().map(|it| it.name.as_str()).unwrap_or("")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::testutil::*;

    fn items(t: &str) -> Vec<(String, Vec<String>)> {
        split_items(t)
            .unwrap()
            .into_iter()
            .map(|i| (i.name, i.args))
            .collect()
    }
    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_items_and_arguments() {
        assert_eq!(items("path"), vec![("path".into(), vec![])]);
        assert_eq!(items("uuid()"), vec![("uuid".into(), vec![])]);
        assert_eq!(
            items("req.hdr(host,1),lower, map(a.map,x)"),
            vec![
                ("req.hdr".into(), v(&["host", "1"])),
                ("lower".into(), vec![]),
                ("map".into(), v(&["a.map", "x"]))
            ]
        );
        assert_eq!(items("x(,a,)")[0].1, v(&["", "a", ""]));
        assert_eq!(items("x(\"\")")[0].1, v(&[""]));
        assert_eq!(items(r#"regsub("a,b",x)"#)[0].1, v(&["a,b", "x"]));
        assert_eq!(items("regsub('a\\,b',x)")[0].1, v(&["a\\,b", "x"]));
        assert_eq!(items(r"regsub(\.,_,g)")[0].1, v(&[r"\.", "_", "g"]));
        assert_eq!(items(r"regsub(a\,b,c)")[0].1, v(&["a,b", "c"]));
        assert_eq!(
            items(r#"regsub("(foo|bar)([0-9]+)?","\2\1",i)"#)[0].1,
            v(&["(foo|bar)([0-9]+)?", r"\2\1", "i"])
        );
        assert_eq!(items("regsub(^(a|b)$,x)")[0].1, v(&["^(a|b)$", "x"]));
        assert_eq!(items("str(a\"b),json")[0].1, v(&["a\"b"]));
        assert!(split_items("").is_err());
        assert!(
            split_items("path,")
                .unwrap_err()
                .contains("missing converter name")
        );
        assert!(
            split_items("req.hdr(host")
                .unwrap_err()
                .contains("missing ')'")
        );
        assert!(
            split_items("path lower")
                .unwrap_err()
                .contains("unexpected 'l'")
        );
    }

    #[test]
    fn parses_and_evaluates() {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        let mut t = txn_get("/x/y", &[("host", "Test.Local"), ("x-r", "a, b")]);
        let e = Expr::parse("req.hdr(host),lower", &ctx).unwrap();
        assert_eq!(e.text(), "req.hdr(host),lower");
        assert_eq!(e.out_type(), SampleType::Str);
        assert_eq!(e.eval(&mut t), Some(Sample::str("test.local")));
        let e = Expr::parse("int(7),mul(6),sub(2),div(4)", &ctx).unwrap();
        assert_eq!(e.eval(&mut t), Some(Sample::Int(10)));
        assert_eq!(e.out_type(), SampleType::Int);
        let e = Expr::parse("str(a.b.c),regsub(\\.,_,g)", &ctx).unwrap();
        assert_eq!(e.eval(&mut t), Some(Sample::str("a_b_c")));
        let e = Expr::parse("str(a\"b),json", &ctx).unwrap();
        assert_eq!(e.eval(&mut t), Some(Sample::str("a\\\"b")));
        let e = Expr::parse("src,ipmask(8)", &ctx).unwrap();
        assert_eq!(
            e.eval(&mut t),
            Some(Sample::Ipv4("10.0.0.0".parse().unwrap()))
        );
        // A missing sample anywhere gives none.
        let e = Expr::parse("req.hdr(nope),lower", &ctx).unwrap();
        assert_eq!(e.eval(&mut t), None);
        let e = Expr::parse("str(abc),add(1)", &ctx).unwrap();
        assert_eq!(e.eval(&mut t), None);
        // Multi-valued fetches.
        let e = Expr::parse("req.hdr(x-r),upper", &ctx).unwrap();
        assert!(e.is_multi());
        assert_eq!(e.eval_all(&mut t), vec![Sample::str("A"), Sample::str("B")]);
        assert_eq!(e.eval(&mut t), Some(Sample::str("B")));
        let e = Expr::parse("req.hdr(x-r,1)", &ctx).unwrap();
        assert!(!e.is_multi());
        assert_eq!(e.eval_all(&mut t), vec![Sample::str("a")]);
    }

    #[test]
    fn resolves_extensions() {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        let mut t = txn_get("/fetch", &[]);
        let e = Expr::parse("t.answer", &ctx).unwrap();
        assert_eq!(e.out_type(), SampleType::Any);
        assert_eq!(e.fetch_name(), "t.answer");
        assert_eq!(e.eval(&mut t), Some(Sample::Int(42)));
        let e = Expr::parse("t.answer(8)", &ctx).unwrap();
        assert_eq!(e.eval(&mut t), Some(Sample::Int(50)));
        let e = Expr::parse("path,t.rev,upper", &ctx).unwrap();
        assert_eq!(e.eval(&mut t), Some(Sample::str("HCTEF/")));
        let e = Expr::parse("t.broken", &ctx).unwrap();
        assert_eq!(e.eval(&mut t), None);
    }

    #[test]
    fn reports_errors() {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        let err = |t: &str| Expr::parse(t, &ctx).unwrap_err();
        assert_eq!(err("nosuchfetch"), "unknown fetch method 'nosuchfetch'");
        assert_eq!(err("path,nosuchconv"), "unknown converter 'nosuchconv'");
        assert_eq!(err("lua.x"), "unknown extension 'lua.x'");
        assert_eq!(err("path,lua.x"), "unknown extension 'lua.x'");
        assert_eq!(err("t.nofetch"), "extension 't' has no fetch 'nofetch'");
        assert_eq!(
            err("path,t.noconv"),
            "extension 't' has no converter 'noconv'"
        );
        assert_eq!(err("req.nope"), "unknown fetch method 'req.nope'");
        assert!(err("req.hdr").contains("fetch 'req.hdr' expects 1 to 2 argument(s)"));
        assert!(err("path,regsub(\"(\",x)").contains("invalid regex"));
        assert!(err("path,map(none.map)").starts_with("cannot open map file"));
    }
}
