//! The built-in sample fetches, as data.
//!
//! This module owns [`FETCHES`], the table of every built-in fetch with its
//! argument kinds and output type, and the argument machinery shared with
//! converters ([`Arg`], [`ArgKind`], [`parse_args`]). Arguments are parsed
//! and checked when the configuration is read; fetches read the
//! transaction and never change it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use http::{HeaderMap, Version};
use rand::Rng;
use regex::Regex;

use super::map::{MapFile, MapStore};
use super::{ParseCtx, Sample, SampleType, VarName};
use crate::proxy::state::{ProxyRt, ServerState, unix_now};
use crate::proxy::txn::{Phase, Txn, full_header_values, split_header_values};

/// A parsed, checked argument of a fetch or converter.
#[derive(Clone, Debug)]
pub enum Arg {
    /// Text.
    Str(String),
    /// An integer.
    Int(i64),
    /// A variable name.
    Var(VarName),
    /// A compiled regular expression.
    Regex(Arc<Regex>),
    /// A loaded map file.
    Map(Arc<MapFile>),
    /// An address or a mask.
    Ip(IpAddr),
    /// An optional argument left empty or out.
    None,
}

impl Arg {
    /// The string of a `Str` argument.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Arg::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The value of an `Int` argument.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Arg::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// What an argument must be; how its text is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// Any text.
    Str,
    /// A decimal integer.
    Int,
    /// A variable name (`txn.foo`).
    Var,
    /// An integer literal or a variable name (arithmetic converters).
    IntOrVar,
    /// A regular expression.
    Regex,
    /// A map file, loaded at parse time (relative to the configuration).
    Map,
}

/// Where arguments are parsed: the configuration (paths relative to it)
/// or a run-time call by name.
#[derive(Clone, Copy)]
pub enum ArgEnv<'a> {
    /// Parsing the configuration: maps load relative to its folder.
    Parse(&'a ParseCtx<'a>),
    /// A run-time call: maps are looked up among the loaded ones.
    Run(&'a MapStore),
}

impl ArgEnv<'_> {
    fn map(&self, name: &str) -> Result<Arc<MapFile>, String> {
        match self {
            ArgEnv::Parse(ctx) => {
                let p = Path::new(name);
                let full = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    ctx.base_dir.join(p)
                };
                ctx.maps.load_as(name, &full)
            }
            ArgEnv::Run(store) => match store.get(name) {
                Some(m) => Ok(m),
                None => store.load(Path::new(name)),
            },
        }
    }
}

/// Parses the raw text arguments of `what` (`fetch`/`converter`) `name`
/// against `kinds`, of which the first `min` are mandatory, then runs the
/// definition's own `check`.
#[allow(clippy::too_many_arguments)]
pub fn parse_args(
    what: &str,
    name: &str,
    usage: &str,
    kinds: &[ArgKind],
    min: usize,
    check: Option<CheckFn>,
    raw: &[String],
    env: ArgEnv<'_>,
) -> Result<Vec<Arg>, String> {
    let mut args = parse_raw_args(what, name, usage, kinds, min, raw, env)?;
    if let Some(check) = check {
        check(&mut args).map_err(|e| format!("{what} '{name}': {e}; usage: {usage}"))?;
    }
    Ok(args)
}

fn parse_raw_args(
    what: &str,
    name: &str,
    usage: &str,
    kinds: &[ArgKind],
    min: usize,
    raw: &[String],
    env: ArgEnv<'_>,
) -> Result<Vec<Arg>, String> {
    if raw.len() < min || raw.len() > kinds.len() {
        let expect = if kinds.is_empty() {
            "no arguments".to_string()
        } else if min == kinds.len() {
            format!("{min} argument(s)")
        } else {
            format!("{min} to {} argument(s)", kinds.len())
        };
        return Err(format!(
            "{what} '{name}' expects {expect}, got {}; usage: {usage}",
            raw.len()
        ));
    }
    let mut out = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        let Some(text) = raw.get(i) else {
            out.push(Arg::None);
            continue;
        };
        if text.is_empty() && i >= min && *kind != ArgKind::Str {
            out.push(Arg::None);
            continue;
        }
        let bad = |why: &str| {
            format!(
                "{what} '{name}': argument {} '{text}' {why}; usage: {usage}",
                i + 1
            )
        };
        let arg = match kind {
            ArgKind::Str => Arg::Str(text.clone()),
            ArgKind::Int => Arg::Int(parse_int(text).ok_or_else(|| bad("is not an integer"))?),
            ArgKind::Var => Arg::Var(
                text.parse::<VarName>()
                    .map_err(|e| bad(&format!("is not a variable: {e}")))?,
            ),
            ArgKind::IntOrVar => match parse_int(text) {
                Some(v) => Arg::Int(v),
                None => Arg::Var(
                    text.parse::<VarName>()
                        .map_err(|e| bad(&format!("is neither an integer nor a variable: {e}")))?,
                ),
            },
            ArgKind::Regex => Arg::Regex(Arc::new(
                Regex::new(text).map_err(|e| bad(&format!("is not a valid regex: {e}")))?,
            )),
            ArgKind::Map => Arg::Map(env.map(text)?),
        };
        out.push(arg);
    }
    Ok(out)
}

/// Parses a decimal integer with an optional sign.
pub fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim();
    t.strip_prefix('+').unwrap_or(t).parse::<i64>().ok()
}

/// The text of argument `i` when it is a string.
pub(crate) fn arg_str(args: &[Arg], i: usize) -> Option<&str> {
    args.get(i).and_then(Arg::as_str)
}

/// The value of argument `i` when it is an integer.
pub(crate) fn arg_int(args: &[Arg], i: usize) -> Option<i64> {
    args.get(i).and_then(Arg::as_int)
}

/// A fetch function.
pub type FetchFn = fn(&mut Txn, &[Arg]) -> Option<Sample>;
/// A fetch returning every occurrence (ACLs test them all).
pub type MultiFn = fn(&mut Txn, &[Arg]) -> Vec<Sample>;
/// A check run on parsed arguments; may rewrite them.
pub type CheckFn = fn(&mut [Arg]) -> Result<(), String>;

/// A built-in fetch.
#[derive(Debug)]
pub struct FetchDef {
    /// The name as written in configurations (`req.hdr`).
    pub name: &'static str,
    /// How it is written, for error messages (`req.hdr(NAME[,OCC])`).
    pub usage: &'static str,
    /// Kinds of the arguments, in order.
    pub args: &'static [ArgKind],
    /// Number of mandatory arguments.
    pub min_args: usize,
    /// The type of the samples it returns.
    pub out: SampleType,
    /// The fetch itself.
    pub func: FetchFn,
    /// All occurrences, for fetches that can return several values.
    pub multi: Option<MultiFn>,
    /// Extra checks of the parsed arguments.
    pub check: Option<CheckFn>,
}

impl FetchDef {
    const fn new(
        name: &'static str,
        usage: &'static str,
        args: &'static [ArgKind],
        min_args: usize,
        out: SampleType,
        func: FetchFn,
    ) -> FetchDef {
        FetchDef {
            name,
            usage,
            args,
            min_args,
            out,
            func,
            multi: None,
            check: None,
        }
    }
    const fn multi(mut self, m: MultiFn) -> FetchDef {
        self.multi = Some(m);
        self
    }
    const fn check(mut self, c: CheckFn) -> FetchDef {
        self.check = Some(c);
        self
    }

    /// Parses and checks arguments given as text.
    pub fn parse_args(&self, raw: &[String], env: ArgEnv<'_>) -> Result<Vec<Arg>, String> {
        let (name, usage) = (self.name, self.usage);
        parse_args(
            "fetch",
            name,
            usage,
            self.args,
            self.min_args,
            self.check,
            raw,
            env,
        )
    }
}

use ArgKind as K;
use SampleType as T;

const NO: &[ArgKind] = &[];
const S1: &[ArgKind] = &[K::Str];
const I1: &[ArgKind] = &[K::Int];
const HDR: &[ArgKind] = &[K::Str, K::Int];

/// Every built-in fetch.
pub static FETCHES: &[FetchDef] = &[
    // Connection.
    FetchDef::new("src", "src", NO, 0, T::Addr, f_src),
    FetchDef::new("src_port", "src_port", NO, 0, T::Int, f_src_port),
    FetchDef::new("dst", "dst", NO, 0, T::Addr, f_dst),
    FetchDef::new("dst_port", "dst_port", NO, 0, T::Int, f_dst_port),
    FetchDef::new("ssl_fc", "ssl_fc", NO, 0, T::Bool, f_ssl_fc),
    // Proxies and servers.
    FetchDef::new("fe_name", "fe_name", NO, 0, T::Str, f_fe_name),
    FetchDef::new("fe_id", "fe_id", NO, 0, T::Int, f_fe_id),
    FetchDef::new("be_name", "be_name", NO, 0, T::Str, f_be_name),
    FetchDef::new("be_id", "be_id", NO, 0, T::Int, f_be_id),
    FetchDef::new("srv_name", "srv_name", NO, 0, T::Str, f_srv_name),
    FetchDef::new("srv_id", "srv_id", NO, 0, T::Int, f_srv_id),
    FetchDef::new("nbsrv", "nbsrv([BACKEND])", S1, 0, T::Int, f_nbsrv),
    FetchDef::new("be_conn", "be_conn([BACKEND])", S1, 0, T::Int, f_be_conn),
    FetchDef::new("fe_conn", "fe_conn([FRONTEND])", S1, 0, T::Int, f_fe_conn),
    FetchDef::new(
        "srv_conn",
        "srv_conn([BACKEND/]SERVER)",
        S1,
        1,
        T::Int,
        f_srv_conn,
    ),
    FetchDef::new(
        "srv_is_up",
        "srv_is_up([BACKEND/]SERVER)",
        S1,
        1,
        T::Bool,
        f_srv_is_up,
    ),
    // HTTP request line.
    FetchDef::new("method", "method", NO, 0, T::Meth, f_method),
    FetchDef::new("path", "path", NO, 0, T::Str, f_path),
    FetchDef::new("pathq", "pathq", NO, 0, T::Str, f_pathq),
    FetchDef::new("query", "query", NO, 0, T::Str, f_query),
    FetchDef::new("url", "url", NO, 0, T::Str, f_url),
    FetchDef::new("base", "base", NO, 0, T::Str, f_base),
    FetchDef::new("req.ver", "req.ver", NO, 0, T::Str, f_req_ver),
    FetchDef::new("req_ver", "req_ver", NO, 0, T::Str, f_req_ver),
    FetchDef::new(
        "req.proto_http",
        "req.proto_http",
        NO,
        0,
        T::Bool,
        f_proto_http,
    ),
    FetchDef::new(
        "url_param",
        "url_param([NAME[,DELIM[,i]]])",
        &[K::Str, K::Str, K::Str],
        0,
        T::Str,
        f_url_param,
    ),
    FetchDef::new(
        "urlp",
        "urlp([NAME[,DELIM[,i]]])",
        &[K::Str, K::Str, K::Str],
        0,
        T::Str,
        f_url_param,
    ),
    FetchDef::new(
        "urlp_val",
        "urlp_val([NAME[,DELIM[,i]]])",
        &[K::Str, K::Str, K::Str],
        0,
        T::Int,
        f_urlp_val,
    ),
    // Request headers.
    FetchDef::new("req.hdr", "req.hdr(NAME[,OCC])", HDR, 1, T::Str, f_req_hdr).multi(m_req_hdr),
    FetchDef::new(
        "req.fhdr",
        "req.fhdr(NAME[,OCC])",
        HDR,
        1,
        T::Str,
        f_req_fhdr,
    )
    .multi(m_req_fhdr),
    FetchDef::new(
        "req.hdr_cnt",
        "req.hdr_cnt([NAME])",
        S1,
        0,
        T::Int,
        f_req_hdr_cnt,
    ),
    FetchDef::new(
        "req.fhdr_cnt",
        "req.fhdr_cnt([NAME])",
        S1,
        0,
        T::Int,
        f_req_fhdr_cnt,
    ),
    FetchDef::new(
        "req.hdr_val",
        "req.hdr_val(NAME[,OCC])",
        HDR,
        1,
        T::Int,
        f_req_hdr_val,
    )
    .multi(m_req_hdr_val),
    FetchDef::new("req.hdrs", "req.hdrs", NO, 0, T::Str, f_req_hdrs),
    FetchDef::new(
        "req.hdr_names",
        "req.hdr_names([DELIM])",
        S1,
        0,
        T::Str,
        f_req_hdr_names,
    ),
    FetchDef::new("req.cook", "req.cook(NAME)", S1, 1, T::Str, f_req_cook).multi(m_req_cook),
    FetchDef::new(
        "req.cook_cnt",
        "req.cook_cnt([NAME])",
        S1,
        0,
        T::Int,
        f_req_cook_cnt,
    ),
    FetchDef::new(
        "req.cook_val",
        "req.cook_val(NAME)",
        S1,
        1,
        T::Int,
        f_req_cook_val,
    ),
    FetchDef::new("cook", "cook(NAME)", S1, 1, T::Str, f_req_cook).multi(m_req_cook),
    FetchDef::new(
        "cook_cnt",
        "cook_cnt([NAME])",
        S1,
        0,
        T::Int,
        f_req_cook_cnt,
    ),
    FetchDef::new("cook_val", "cook_val(NAME)", S1, 1, T::Int, f_req_cook_val),
    // Headers of the message being processed.
    FetchDef::new("hdr", "hdr(NAME[,OCC])", HDR, 1, T::Str, f_hdr).multi(m_hdr),
    FetchDef::new("fhdr", "fhdr(NAME[,OCC])", HDR, 1, T::Str, f_fhdr).multi(m_fhdr),
    FetchDef::new("hdr_cnt", "hdr_cnt([NAME])", S1, 0, T::Int, f_hdr_cnt),
    FetchDef::new("fhdr_cnt", "fhdr_cnt([NAME])", S1, 0, T::Int, f_fhdr_cnt),
    FetchDef::new("hdr_val", "hdr_val(NAME[,OCC])", HDR, 1, T::Int, f_hdr_val).multi(m_hdr_val),
    // Request body and payload.
    FetchDef::new("req.body", "req.body", NO, 0, T::Bin, f_req_body),
    FetchDef::new(
        "req.body_len",
        "req.body_len",
        NO,
        0,
        T::Int,
        f_req_body_len,
    ),
    FetchDef::new(
        "req.body_size",
        "req.body_size",
        NO,
        0,
        T::Int,
        f_req_body_size,
    ),
    FetchDef::new(
        "req.body_param",
        "req.body_param([NAME[,i]])",
        &[K::Str, K::Str],
        0,
        T::Str,
        f_body_param,
    ),
    FetchDef::new("req.len", "req.len", NO, 0, T::Int, f_req_len),
    FetchDef::new("req_len", "req_len", NO, 0, T::Int, f_req_len),
    FetchDef::new(
        "req.payload",
        "req.payload(OFFSET,LENGTH)",
        &[K::Int, K::Int],
        2,
        T::Bin,
        f_req_payload,
    )
    .check(check_payload),
    // Response.
    FetchDef::new("status", "status", NO, 0, T::Int, f_status),
    FetchDef::new("txn.status", "txn.status", NO, 0, T::Int, f_status),
    FetchDef::new("res.ver", "res.ver", NO, 0, T::Str, f_res_ver),
    FetchDef::new("res.hdr", "res.hdr(NAME[,OCC])", HDR, 1, T::Str, f_res_hdr).multi(m_res_hdr),
    FetchDef::new("shdr", "shdr(NAME[,OCC])", HDR, 1, T::Str, f_res_hdr).multi(m_res_hdr),
    FetchDef::new(
        "res.fhdr",
        "res.fhdr(NAME[,OCC])",
        HDR,
        1,
        T::Str,
        f_res_fhdr,
    )
    .multi(m_res_fhdr),
    FetchDef::new(
        "res.hdr_cnt",
        "res.hdr_cnt([NAME])",
        S1,
        0,
        T::Int,
        f_res_hdr_cnt,
    ),
    FetchDef::new(
        "res.fhdr_cnt",
        "res.fhdr_cnt([NAME])",
        S1,
        0,
        T::Int,
        f_res_fhdr_cnt,
    ),
    FetchDef::new(
        "res.hdr_val",
        "res.hdr_val(NAME[,OCC])",
        HDR,
        1,
        T::Int,
        f_res_hdr_val,
    )
    .multi(m_res_hdr_val),
    FetchDef::new("res.cook", "res.cook(NAME)", S1, 1, T::Str, f_res_cook).multi(m_res_cook),
    FetchDef::new("scook", "scook(NAME)", S1, 1, T::Str, f_res_cook).multi(m_res_cook),
    FetchDef::new(
        "res.cook_cnt",
        "res.cook_cnt([NAME])",
        S1,
        0,
        T::Int,
        f_res_cook_cnt,
    ),
    // Constants, variables and the environment.
    FetchDef::new(
        "var",
        "var(NAME[,DEFAULT])",
        &[K::Var, K::Str],
        1,
        T::Any,
        f_var,
    ),
    FetchDef::new("str", "str(STRING)", S1, 1, T::Str, f_str),
    FetchDef::new("int", "int(INTEGER)", I1, 1, T::Int, f_int),
    FetchDef::new("bool", "bool(true|false|1|0)", S1, 1, T::Bool, f_bool).check(check_bool),
    FetchDef::new("ipv4", "ipv4(ADDRESS)", S1, 1, T::Ipv4, f_ipv4).check(check_ipv4),
    FetchDef::new("ipv6", "ipv6(ADDRESS)", S1, 1, T::Ipv6, f_ipv6).check(check_ipv6),
    FetchDef::new("meth", "meth(METHOD)", S1, 1, T::Meth, f_meth),
    FetchDef::new("bin", "bin(HEX)", S1, 1, T::Bin, f_bin).check(check_hex),
    FetchDef::new("always_true", "always_true", NO, 0, T::Bool, f_true),
    FetchDef::new("always_false", "always_false", NO, 0, T::Bool, f_false),
    FetchDef::new("wait_end", "wait_end", NO, 0, T::Bool, f_true),
    FetchDef::new("stopping", "stopping", NO, 0, T::Bool, f_false),
    FetchDef::new("rand", "rand([RANGE])", I1, 0, T::Int, f_rand).check(check_rand),
    FetchDef::new(
        "date",
        "date([OFFSET[,s|ms|us]])",
        &[K::Int, K::Str],
        0,
        T::Int,
        f_date,
    )
    .check(check_date),
    FetchDef::new("uuid", "uuid([4|7])", I1, 0, T::Str, f_uuid).check(check_uuid),
    FetchDef::new("env", "env(NAME)", S1, 1, T::Str, f_env),
    FetchDef::new("hostname", "hostname", NO, 0, T::Str, f_hostname),
    FetchDef::new("pid", "pid", NO, 0, T::Int, f_pid),
];

static INDEX: LazyLock<HashMap<&'static str, &'static FetchDef>> =
    LazyLock::new(|| FETCHES.iter().map(|f| (f.name, f)).collect());

/// A built-in fetch by name.
pub fn lookup(name: &str) -> Option<&'static FetchDef> {
    INDEX.get(name).copied()
}

/// Runs a built-in fetch with sample arguments (extensions calling fetches
/// by name). `None` for an unknown name, bad arguments or no sample.
pub fn call_by_name(name: &str, txn: &mut Txn, args: &[Sample]) -> Option<Sample> {
    let def = lookup(name)?;
    let raw: Vec<String> = args.iter().map(|s| s.to_str().into_owned()).collect();
    let world = Arc::clone(&txn.world);
    let parsed = def.parse_args(&raw, ArgEnv::Run(&world.maps)).ok()?;
    (def.func)(txn, &parsed)
}

// ---------------------------------------------------------------- checks

fn check_payload(args: &mut [Arg]) -> Result<(), String> {
    if arg_int(args, 0).is_some_and(|v| v < 0) || arg_int(args, 1).is_some_and(|v| v < 0) {
        return Err("offset and length must not be negative".into());
    }
    Ok(())
}

fn check_bool(args: &mut [Arg]) -> Result<(), String> {
    let v = match arg_str(args, 0).map(str::to_ascii_lowercase).as_deref() {
        Some("true" | "1") => 1,
        Some("false" | "0") => 0,
        _ => return Err("expects true, false, 1 or 0".into()),
    };
    args[0] = Arg::Int(v);
    Ok(())
}

fn check_ipv4(args: &mut [Arg]) -> Result<(), String> {
    let ip: std::net::Ipv4Addr = arg_str(args, 0)
        .and_then(|s| s.trim().parse().ok())
        .ok_or("expects an IPv4 address")?;
    args[0] = Arg::Ip(IpAddr::V4(ip));
    Ok(())
}

fn check_ipv6(args: &mut [Arg]) -> Result<(), String> {
    let ip: std::net::Ipv6Addr = arg_str(args, 0)
        .and_then(|s| s.trim().parse().ok())
        .ok_or("expects an IPv6 address")?;
    args[0] = Arg::Ip(IpAddr::V6(ip));
    Ok(())
}

fn check_hex(args: &mut [Arg]) -> Result<(), String> {
    let s = arg_str(args, 0).unwrap_or("");
    if !s.len().is_multiple_of(2) || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err("expects an even number of hexadecimal digits".into());
    }
    Ok(())
}

fn check_rand(args: &mut [Arg]) -> Result<(), String> {
    if arg_int(args, 0).is_some_and(|v| v <= 0 || v > 1 << 32) {
        return Err("range must be between 1 and 4294967296".into());
    }
    Ok(())
}

fn check_date(args: &mut [Arg]) -> Result<(), String> {
    match arg_str(args, 1) {
        None | Some("" | "s" | "ms" | "us") => Ok(()),
        Some(u) => Err(format!("unknown unit '{u}', expected s, ms or us")),
    }
}

fn check_uuid(args: &mut [Arg]) -> Result<(), String> {
    match arg_int(args, 0) {
        None | Some(4 | 7) => Ok(()),
        Some(v) => Err(format!("unsupported UUID version {v}, expected 4 or 7")),
    }
}

// ---------------------------------------------------------------- helpers

fn req_headers(txn: &Txn) -> Option<&HeaderMap> {
    txn.req.as_ref().map(|r| &r.headers)
}

fn res_headers(txn: &Txn) -> Option<&HeaderMap> {
    txn.res.as_ref().map(|r| &r.headers)
}

/// The headers `hdr` reads: the response in the response phase.
fn cur_headers(txn: &Txn) -> Option<&HeaderMap> {
    if txn.phase == Phase::Response {
        res_headers(txn)
    } else {
        req_headers(txn)
    }
}

/// HAProxy's occurrence: positive from the first (1), negative from the
/// last (-1); 0 or none means the last one.
fn pick<T>(mut vals: Vec<T>, occ: Option<i64>) -> Option<T> {
    let occ = occ.filter(|&o| o != 0).unwrap_or(-1);
    let idx = if occ > 0 {
        usize::try_from(occ - 1).ok()?
    } else {
        let back = usize::try_from(occ.unsigned_abs()).ok()?;
        vals.len().checked_sub(back)?
    };
    if idx < vals.len() {
        Some(vals.swap_remove(idx))
    } else {
        None
    }
}

/// All values, or only the given occurrence when one is set.
fn pick_all<T>(vals: Vec<T>, occ: Option<i64>) -> Vec<T> {
    match occ.filter(|&o| o != 0) {
        Some(o) => pick(vals, Some(o)).into_iter().collect(),
        None => vals,
    }
}

fn hdr_vals(h: Option<&HeaderMap>, args: &[Arg], full: bool) -> Vec<String> {
    match (h, arg_str(args, 0)) {
        (Some(h), Some(name)) if full => full_header_values(h, name),
        (Some(h), Some(name)) => split_header_values(h, name),
        _ => Vec::new(),
    }
}

fn hdr_one(h: Option<&HeaderMap>, args: &[Arg], full: bool) -> Option<Sample> {
    pick(hdr_vals(h, args, full), arg_int(args, 1)).map(Sample::Str)
}

fn hdr_many(h: Option<&HeaderMap>, args: &[Arg], full: bool) -> Vec<Sample> {
    pick_all(hdr_vals(h, args, full), arg_int(args, 1))
        .into_iter()
        .map(Sample::Str)
        .collect()
}

fn hdr_count(h: Option<&HeaderMap>, args: &[Arg], full: bool) -> Option<Sample> {
    let h = h?;
    let n = match arg_str(args, 0).filter(|s| !s.is_empty()) {
        Some(name) if full => h.get_all(name).iter().count(),
        Some(name) => split_header_values(h, name).len(),
        None if full => h.len(),
        None => h
            .keys()
            .map(|k| split_header_values(h, k.as_str()).len())
            .sum(),
    };
    Some(Sample::Int(n as i64))
}

fn to_int_sample(s: Sample) -> Option<Sample> {
    s.to_int().map(Sample::Int)
}

/// Cookies of `Cookie` header lines, as (name, value).
fn req_cookies(h: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(h) = h else { return Vec::new() };
    let mut out = Vec::new();
    for v in h.get_all(http::header::COOKIE) {
        for part in String::from_utf8_lossy(v.as_bytes()).split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (n, v) = part.split_once('=').unwrap_or((part, ""));
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Cookies set by `Set-Cookie` lines, as (name, value).
fn res_cookies(h: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(h) = h else { return Vec::new() };
    h.get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| {
            let s = String::from_utf8_lossy(v.as_bytes()).to_string();
            let first = s.split(';').next()?.trim().to_string();
            let (n, v) = first.split_once('=')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn cookie_vals(all: Vec<(String, String)>, name: Option<&str>) -> Vec<String> {
    all.into_iter()
        .filter(|(n, _)| name.is_none_or(|w| w.is_empty() || n == w))
        .map(|(_, v)| v)
        .collect()
}

/// Parameters of a query string or a form body, split on any of `delims`.
fn find_param(text: &str, name: Option<&str>, delims: &str, ci: bool) -> Option<String> {
    text.split(|c: char| delims.contains(c))
        .filter(|p| !p.is_empty())
        .find_map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            let hit = match name.filter(|w| !w.is_empty()) {
                None => true,
                Some(w) if ci => n.eq_ignore_ascii_case(w),
                Some(w) => n == w,
            };
            hit.then(|| v.to_string())
        })
}

fn param_args(args: &[Arg]) -> (Option<&str>, String, bool) {
    let name = arg_str(args, 0);
    let delims = arg_str(args, 1)
        .filter(|d| !d.is_empty())
        .unwrap_or("&")
        .to_string();
    let ci = arg_str(args, 2) == Some("i");
    (name, delims, ci)
}

/// An HTTP version as `req.ver` gives it ("1.1"); also what extensions
/// are told (the Lua layer adds HAProxy's `HTTP/` where its API has it).
pub fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "1.1",
    }
}

/// The proxy named by an optional argument, or the current backend
/// (the frontend before one is chosen, as HAProxy does).
fn backend_arg<'a>(txn: &'a Txn, args: &[Arg]) -> Option<&'a Arc<ProxyRt>> {
    match arg_str(args, 0).filter(|s| !s.is_empty()) {
        Some(name) => txn.world.backend(name),
        None => Some(txn.backend.as_ref().unwrap_or(&txn.frontend)),
    }
}

fn server_arg(txn: &Txn, args: &[Arg]) -> Option<Arc<crate::proxy::state::ServerRt>> {
    let spec = arg_str(args, 0)?;
    let (be, srv) = match spec.split_once('/') {
        Some((b, s)) => (txn.world.backend(b)?, s),
        None => (txn.backend.as_ref().unwrap_or(&txn.frontend), spec),
    };
    be.server(srv).cloned()
}

/// The request target as received: origin form, or absolute form.
pub(crate) fn request_url(txn: &Txn) -> Option<String> {
    let req = txn.req.as_ref()?;
    if req.version == Version::HTTP_2 || req.version == Version::HTTP_3 {
        return Some(
            req.uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| req.uri.path().to_string()),
        );
    }
    Some(req.uri.to_string())
}

/// The machine's host name.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

// ---------------------------------------------------------------- fetches

fn f_src(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::ip(txn.sess.src.ip()))
}
fn f_src_port(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Int(i64::from(txn.sess.src.port())))
}
fn f_dst(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::ip(txn.sess.dst.ip()))
}
fn f_dst_port(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Int(i64::from(txn.sess.dst.port())))
}
fn f_ssl_fc(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Bool(txn.sess.tls))
}
fn f_fe_name(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Str(txn.frontend.name.clone()))
}
fn f_fe_id(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Int(i64::from(txn.frontend.uuid)))
}
fn f_be_name(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Str(
        txn.backend.as_ref().unwrap_or(&txn.frontend).name.clone(),
    ))
}
fn f_be_id(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Int(i64::from(
        txn.backend.as_ref().unwrap_or(&txn.frontend).uuid,
    )))
}
fn f_srv_name(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.server.as_ref().map(|s| Sample::Str(s.name.clone()))
}
fn f_srv_id(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.server.as_ref().map(|s| Sample::Int(i64::from(s.puid)))
}
fn f_nbsrv(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    backend_arg(txn, args).map(|b| Sample::Int(b.nbsrv() as i64))
}
fn f_be_conn(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    backend_arg(txn, args)
        .map(|b| Sample::Int(crate::proxy::state::Counters::get(&b.counters.scur) as i64))
}
fn f_fe_conn(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    let fe = match arg_str(args, 0).filter(|s| !s.is_empty()) {
        Some(name) => txn.world.proxy(name).filter(|p| p.is_frontend())?,
        None => &txn.frontend,
    };
    Some(Sample::Int(
        crate::proxy::state::Counters::get(&fe.counters.scur) as i64,
    ))
}
fn f_srv_conn(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    server_arg(txn, args)
        .map(|s| Sample::Int(crate::proxy::state::Counters::get(&s.counters.scur) as i64))
}
fn f_srv_is_up(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    server_arg(txn, args)
        .map(|s| Sample::Bool(matches!(s.state(), ServerState::Up | ServerState::NoCheck)))
}
fn f_method(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.req
        .as_ref()
        .map(|r| Sample::Method(r.method.as_str().to_string()))
}
fn f_path(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.req
        .as_ref()
        .map(|r| Sample::Str(r.uri.path().to_string()))
}
fn f_pathq(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    let r = txn.req.as_ref()?;
    Some(Sample::Str(
        r.uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| r.uri.path().to_string()),
    ))
}
fn f_query(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.req
        .as_ref()?
        .uri
        .query()
        .map(|q| Sample::Str(q.to_string()))
}
fn f_url(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    request_url(txn).map(Sample::Str)
}
fn f_base(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    let r = txn.req.as_ref()?;
    let host = full_header_values(&r.headers, "host")
        .into_iter()
        .next()
        .or_else(|| r.uri.authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default();
    Some(Sample::Str(format!("{host}{}", r.uri.path())))
}
fn f_req_ver(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.req
        .as_ref()
        .map(|r| Sample::str(version_str(r.version)))
}
fn f_proto_http(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Bool(txn.req.is_some()))
}
fn f_url_param(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    let q = txn.req.as_ref()?.uri.query()?;
    let (name, delims, ci) = param_args(args);
    find_param(q, name, &delims, ci).map(Sample::Str)
}
fn f_urlp_val(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    f_url_param(txn, args).and_then(to_int_sample)
}
fn f_req_hdr(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_one(req_headers(txn), args, false)
}
fn m_req_hdr(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    hdr_many(req_headers(txn), args, false)
}
fn f_req_fhdr(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_one(req_headers(txn), args, true)
}
fn m_req_fhdr(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    hdr_many(req_headers(txn), args, true)
}
fn f_req_hdr_cnt(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_count(req_headers(txn), args, false)
}
fn f_req_fhdr_cnt(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_count(req_headers(txn), args, true)
}
fn f_req_hdr_val(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    f_req_hdr(txn, args).and_then(to_int_sample)
}
fn m_req_hdr_val(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    m_req_hdr(txn, args)
        .into_iter()
        .filter_map(to_int_sample)
        .collect()
}
fn f_req_hdrs(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    let h = req_headers(txn)?;
    let mut out = String::new();
    for (k, v) in h {
        out.push_str(k.as_str());
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Some(Sample::Str(out))
}
fn f_req_hdr_names(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    let h = req_headers(txn)?;
    let delim = arg_str(args, 0).filter(|d| !d.is_empty()).unwrap_or(",");
    let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
    Some(Sample::Str(names.join(delim)))
}
fn f_req_cook(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    pick(
        cookie_vals(req_cookies(req_headers(txn)), arg_str(args, 0)),
        None,
    )
    .map(Sample::Str)
}
fn m_req_cook(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    cookie_vals(req_cookies(req_headers(txn)), arg_str(args, 0))
        .into_iter()
        .map(Sample::Str)
        .collect()
}
fn f_req_cook_cnt(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    req_headers(txn)?;
    Some(Sample::Int(
        cookie_vals(req_cookies(req_headers(txn)), arg_str(args, 0)).len() as i64,
    ))
}
fn f_req_cook_val(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    f_req_cook(txn, args).and_then(to_int_sample)
}
fn f_hdr(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_one(cur_headers(txn), args, false)
}
fn m_hdr(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    hdr_many(cur_headers(txn), args, false)
}
fn f_fhdr(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_one(cur_headers(txn), args, true)
}
fn m_fhdr(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    hdr_many(cur_headers(txn), args, true)
}
fn f_hdr_cnt(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_count(cur_headers(txn), args, false)
}
fn f_fhdr_cnt(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_count(cur_headers(txn), args, true)
}
fn f_hdr_val(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    f_hdr(txn, args).and_then(to_int_sample)
}
fn m_hdr_val(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    m_hdr(txn, args)
        .into_iter()
        .filter_map(to_int_sample)
        .collect()
}
fn f_req_body(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.req_body.as_ref().map(|b| Sample::Bin(b.to_vec()))
}
fn f_req_body_len(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.req_body.as_ref().map(|b| Sample::Int(b.len() as i64))
}
fn f_req_body_size(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    if let Some(b) = &txn.req_body {
        return Some(Sample::Int(b.len() as i64));
    }
    let h = req_headers(txn)?;
    let v = h.get(http::header::CONTENT_LENGTH)?.to_str().ok()?;
    v.trim().parse::<i64>().ok().map(Sample::Int)
}
fn f_body_param(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    let body = txn.req_body.as_ref()?;
    let text = String::from_utf8_lossy(body);
    let ci = arg_str(args, 1) == Some("i");
    find_param(&text, arg_str(args, 0), "&", ci).map(Sample::Str)
}
fn f_req_len(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Int(txn.payload.len() as i64))
}
fn f_req_payload(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    let off = usize::try_from(arg_int(args, 0)?).ok()?;
    let len = usize::try_from(arg_int(args, 1)?).ok()?;
    let data = &txn.payload;
    if len == 0 {
        return data.get(off..).map(|b| Sample::Bin(b.to_vec()));
    }
    data.get(off..off.checked_add(len)?)
        .map(|b| Sample::Bin(b.to_vec()))
}
fn f_status(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.res_status().map(|s| Sample::Int(i64::from(s.as_u16())))
}
fn f_res_ver(txn: &mut Txn, _: &[Arg]) -> Option<Sample> {
    txn.res
        .as_ref()
        .map(|r| Sample::str(version_str(r.version)))
}
fn f_res_hdr(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_one(res_headers(txn), args, false)
}
fn m_res_hdr(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    hdr_many(res_headers(txn), args, false)
}
fn f_res_fhdr(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_one(res_headers(txn), args, true)
}
fn m_res_fhdr(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    hdr_many(res_headers(txn), args, true)
}
fn f_res_hdr_cnt(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_count(res_headers(txn), args, false)
}
fn f_res_fhdr_cnt(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    hdr_count(res_headers(txn), args, true)
}
fn f_res_hdr_val(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    f_res_hdr(txn, args).and_then(to_int_sample)
}
fn m_res_hdr_val(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    m_res_hdr(txn, args)
        .into_iter()
        .filter_map(to_int_sample)
        .collect()
}
fn f_res_cook(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    pick(
        cookie_vals(res_cookies(res_headers(txn)), arg_str(args, 0)),
        None,
    )
    .map(Sample::Str)
}
fn m_res_cook(txn: &mut Txn, args: &[Arg]) -> Vec<Sample> {
    cookie_vals(res_cookies(res_headers(txn)), arg_str(args, 0))
        .into_iter()
        .map(Sample::Str)
        .collect()
}
fn f_res_cook_cnt(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    res_headers(txn)?;
    Some(Sample::Int(
        cookie_vals(res_cookies(res_headers(txn)), arg_str(args, 0)).len() as i64,
    ))
}
fn f_var(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    let Some(Arg::Var(v)) = args.first() else {
        return None;
    };
    txn.get_var(v).or_else(|| arg_str(args, 1).map(Sample::str))
}
fn f_str(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    arg_str(args, 0).map(Sample::str)
}
fn f_int(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    arg_int(args, 0).map(Sample::Int)
}
fn f_bool(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    arg_int(args, 0).map(|v| Sample::Bool(v != 0))
}
fn f_ipv4(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    match args.first() {
        Some(Arg::Ip(IpAddr::V4(a))) => Some(Sample::Ipv4(*a)),
        _ => None,
    }
}
fn f_ipv6(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    match args.first() {
        Some(Arg::Ip(IpAddr::V6(a))) => Some(Sample::Ipv6(*a)),
        _ => None,
    }
}
fn f_meth(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    arg_str(args, 0).map(|m| Sample::Method(m.to_string()))
}
fn f_bin(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    super::conv::unhex(arg_str(args, 0)?).map(Sample::Bin)
}
fn f_true(_: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Bool(true))
}
fn f_false(_: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Bool(false))
}
fn f_rand(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    let range = arg_int(args, 0).unwrap_or(1 << 32).max(1);
    Some(Sample::Int(rand::rng().random_range(0..range)))
}
fn f_date(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let off = arg_int(args, 0).unwrap_or(0);
    let v = match arg_str(args, 1) {
        Some("ms") => now.as_millis() as i64,
        Some("us") => now.as_micros() as i64,
        _ => unix_now() as i64,
    };
    Some(Sample::Int(v.saturating_add(off)))
}
fn f_uuid(_: &mut Txn, args: &[Arg]) -> Option<Sample> {
    let id = match arg_int(args, 0) {
        Some(7) => uuid::Uuid::now_v7(),
        _ => uuid::Uuid::new_v4(),
    };
    Some(Sample::Str(id.hyphenated().to_string()))
}
fn f_env(txn: &mut Txn, args: &[Arg]) -> Option<Sample> {
    txn.world.env(arg_str(args, 0)?).map(Sample::Str)
}
fn f_hostname(_: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Str(hostname()))
}
fn f_pid(_: &mut Txn, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Int(i64::from(std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::testutil::*;

    fn run(txn: &mut Txn, name: &str, args: &[&str]) -> Option<Sample> {
        let ctx_parts = ctx_parts();
        let ctx = ctx_parts.ctx();
        let def = lookup(name).unwrap_or_else(|| panic!("no fetch {name}"));
        let raw: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let parsed = def.parse_args(&raw, ArgEnv::Parse(&ctx)).unwrap();
        (def.func)(txn, &parsed)
    }

    #[test]
    fn table_is_consistent() {
        for f in FETCHES {
            assert!(f.min_args <= f.args.len(), "{}", f.name);
            assert!(
                std::ptr::eq(lookup(f.name).unwrap(), f),
                "duplicate {}",
                f.name
            );
        }
    }

    #[test]
    fn connection_and_proxy_fetches() {
        let mut t = txn_get("/x/y?q=1&b=2", &[]);
        assert_eq!(
            run(&mut t, "src", &[]),
            Some(Sample::Ipv4("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(run(&mut t, "src_port", &[]), Some(Sample::Int(40000)));
        assert_eq!(
            run(&mut t, "dst", &[]),
            Some(Sample::Ipv4("127.0.0.1".parse().unwrap()))
        );
        assert_eq!(run(&mut t, "dst_port", &[]), Some(Sample::Int(8080)));
        assert_eq!(run(&mut t, "fe_name", &[]), Some(Sample::str("fe")));
        assert_eq!(run(&mut t, "be_name", &[]), Some(Sample::str("fe")));
        assert_eq!(run(&mut t, "srv_name", &[]), None);
        assert_eq!(run(&mut t, "ssl_fc", &[]), Some(Sample::Bool(false)));
        assert_eq!(run(&mut t, "nbsrv", &["be"]), Some(Sample::Int(2)));
        assert_eq!(run(&mut t, "nbsrv", &["nope"]), None);
        assert_eq!(run(&mut t, "be_conn", &["be"]), Some(Sample::Int(0)));
        assert_eq!(run(&mut t, "srv_conn", &["be/s1"]), Some(Sample::Int(0)));
        assert_eq!(
            run(&mut t, "srv_is_up", &["be/s2"]),
            Some(Sample::Bool(true))
        );
        t.backend = t.world.backend("be").cloned();
        t.server = t.backend.as_ref().and_then(|b| b.server("s1").cloned());
        assert_eq!(run(&mut t, "be_name", &[]), Some(Sample::str("be")));
        assert_eq!(run(&mut t, "nbsrv", &[]), Some(Sample::Int(2)));
        assert_eq!(run(&mut t, "srv_name", &[]), Some(Sample::str("s1")));
        assert_eq!(run(&mut t, "srv_conn", &["s1"]), Some(Sample::Int(0)));
    }

    #[test]
    fn request_line_fetches() {
        let mut t = txn_get("/x/y?q=1&b=2", &[("host", "Example.com")]);
        assert_eq!(
            run(&mut t, "method", &[]),
            Some(Sample::Method("GET".into()))
        );
        assert_eq!(run(&mut t, "path", &[]), Some(Sample::str("/x/y")));
        assert_eq!(run(&mut t, "query", &[]), Some(Sample::str("q=1&b=2")));
        assert_eq!(run(&mut t, "url", &[]), Some(Sample::str("/x/y?q=1&b=2")));
        assert_eq!(run(&mut t, "pathq", &[]), Some(Sample::str("/x/y?q=1&b=2")));
        assert_eq!(
            run(&mut t, "base", &[]),
            Some(Sample::str("Example.com/x/y"))
        );
        assert_eq!(run(&mut t, "req.ver", &[]), Some(Sample::str("1.1")));
        assert_eq!(run(&mut t, "url_param", &["b"]), Some(Sample::str("2")));
        assert_eq!(run(&mut t, "urlp", &["B", "", "i"]), Some(Sample::str("2")));
        assert_eq!(run(&mut t, "urlp", &["zz"]), None);
        assert_eq!(run(&mut t, "urlp_val", &["q"]), Some(Sample::Int(1)));
        let mut t = txn_get("/nq", &[]);
        assert_eq!(run(&mut t, "query", &[]), None);
    }

    #[test]
    fn header_fetches_and_occurrences() {
        let mut t = txn_get(
            "/",
            &[
                ("x-r", "first, second"),
                ("x-r", "third"),
                ("cookie", "a=1; sid=abc"),
                ("cookie", "sid=def"),
            ],
        );
        assert_eq!(run(&mut t, "req.hdr", &["x-r"]), Some(Sample::str("third")));
        assert_eq!(
            run(&mut t, "req.hdr", &["X-R", "1"]),
            Some(Sample::str("first"))
        );
        assert_eq!(
            run(&mut t, "req.hdr", &["x-r", "2"]),
            Some(Sample::str("second"))
        );
        assert_eq!(
            run(&mut t, "req.hdr", &["x-r", "-2"]),
            Some(Sample::str("second"))
        );
        assert_eq!(run(&mut t, "req.hdr", &["x-r", "4"]), None);
        assert_eq!(run(&mut t, "req.hdr", &["x-r", "-4"]), None);
        assert_eq!(
            run(&mut t, "hdr", &["x-r", "0"]),
            Some(Sample::str("third"))
        );
        assert_eq!(
            run(&mut t, "req.fhdr", &["x-r", "1"]),
            Some(Sample::str("first, second"))
        );
        assert_eq!(run(&mut t, "req.hdr_cnt", &["x-r"]), Some(Sample::Int(3)));
        assert_eq!(run(&mut t, "req.fhdr_cnt", &["x-r"]), Some(Sample::Int(2)));
        assert_eq!(run(&mut t, "hdr_cnt", &["nope"]), Some(Sample::Int(0)));
        assert_eq!(run(&mut t, "req.cook", &["sid"]), Some(Sample::str("def")));
        assert_eq!(run(&mut t, "cook", &["a"]), Some(Sample::str("1")));
        assert_eq!(run(&mut t, "req.cook_cnt", &["sid"]), Some(Sample::Int(2)));
        assert_eq!(run(&mut t, "cook_val", &["a"]), Some(Sample::Int(1)));
        let def = lookup("req.hdr").unwrap();
        let args = vec![Arg::Str("x-r".into()), Arg::None];
        assert_eq!((def.multi.unwrap())(&mut t, &args).len(), 3);
        // hdr follows the phase.
        set_response(
            &mut t,
            404,
            &[("x-r", "resp"), ("set-cookie", "k=v; Path=/")],
        );
        assert_eq!(run(&mut t, "hdr", &["x-r"]), Some(Sample::str("third")));
        t.phase = Phase::Response;
        assert_eq!(run(&mut t, "hdr", &["x-r"]), Some(Sample::str("resp")));
        assert_eq!(run(&mut t, "res.hdr", &["x-r"]), Some(Sample::str("resp")));
        assert_eq!(run(&mut t, "req.hdr", &["x-r"]), Some(Sample::str("third")));
        assert_eq!(run(&mut t, "status", &[]), Some(Sample::Int(404)));
        assert_eq!(run(&mut t, "res.cook", &["k"]), Some(Sample::str("v")));
        assert_eq!(run(&mut t, "res.hdr_cnt", &[]), Some(Sample::Int(2)));
    }

    #[test]
    fn body_payload_and_constants() {
        let mut t = txn_get("/", &[("content-length", "7")]);
        assert_eq!(run(&mut t, "req.body", &[]), None);
        assert_eq!(run(&mut t, "req.body_size", &[]), Some(Sample::Int(7)));
        t.req_body = Some(bytes::Bytes::from_static(b"a=1&b=2"));
        assert_eq!(
            run(&mut t, "req.body", &[]),
            Some(Sample::Bin(b"a=1&b=2".to_vec()))
        );
        assert_eq!(run(&mut t, "req.body_len", &[]), Some(Sample::Int(7)));
        assert_eq!(
            run(&mut t, "req.body_param", &["b"]),
            Some(Sample::str("2"))
        );
        t.payload = bytes::Bytes::from_static(b"GET / HTTP/1.0");
        assert_eq!(run(&mut t, "req.len", &[]), Some(Sample::Int(14)));
        assert_eq!(
            run(&mut t, "req.payload", &["0", "3"]),
            Some(Sample::Bin(b"GET".to_vec()))
        );
        assert_eq!(
            run(&mut t, "req.payload", &["4", "0"]),
            Some(Sample::Bin(b"/ HTTP/1.0".to_vec()))
        );
        assert_eq!(run(&mut t, "req.payload", &["10", "10"]), None);
        assert_eq!(run(&mut t, "str", &["x"]), Some(Sample::str("x")));
        assert_eq!(run(&mut t, "int", &["-5"]), Some(Sample::Int(-5)));
        assert_eq!(run(&mut t, "bool", &["true"]), Some(Sample::Bool(true)));
        assert_eq!(run(&mut t, "bool", &["0"]), Some(Sample::Bool(false)));
        assert_eq!(
            run(&mut t, "ipv4", &["1.2.3.4"]),
            Some(Sample::Ipv4("1.2.3.4".parse().unwrap()))
        );
        assert_eq!(
            run(&mut t, "bin", &["4142"]),
            Some(Sample::Bin(b"AB".to_vec()))
        );
        assert_eq!(run(&mut t, "always_true", &[]), Some(Sample::Bool(true)));
        assert_eq!(run(&mut t, "always_false", &[]), Some(Sample::Bool(false)));
        assert!(
            matches!(run(&mut t, "rand", &["10"]), Some(Sample::Int(v)) if (0..10).contains(&v))
        );
        let Some(Sample::Int(d)) = run(&mut t, "date", &["10"]) else {
            panic!()
        };
        assert!((d - unix_now() as i64 - 10).abs() <= 1);
        let Some(Sample::Str(u)) = run(&mut t, "uuid", &[]) else {
            panic!()
        };
        assert_eq!((u.len(), &u[14..15]), (36, "4"));
        let Some(Sample::Str(u)) = run(&mut t, "uuid", &["7"]) else {
            panic!()
        };
        assert_eq!(&u[14..15], "7");
        assert_eq!(run(&mut t, "env", &["MOONBOX_SURELY_UNSET_VAR"]), None);
        assert!(matches!(run(&mut t, "hostname", &[]), Some(Sample::Str(h)) if !h.is_empty()));
    }

    #[test]
    fn variables() {
        let mut t = txn_get("/", &[]);
        assert_eq!(run(&mut t, "var", &["txn.x"]), None);
        assert_eq!(
            run(&mut t, "var", &["txn.x", "dflt"]),
            Some(Sample::str("dflt"))
        );
        t.set_var(&"txn.x".parse().unwrap(), Sample::Int(3));
        assert_eq!(run(&mut t, "var", &["txn.x"]), Some(Sample::Int(3)));
        t.set_var(&"sess.s".parse().unwrap(), Sample::str("v"));
        assert_eq!(
            call_by_name("var", &mut t, &[Sample::str("sess.s")]),
            Some(Sample::str("v"))
        );
    }

    #[test]
    fn argument_errors() {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        let e = |name: &str, args: &[&str]| {
            let raw: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            lookup(name)
                .unwrap()
                .parse_args(&raw, ArgEnv::Parse(&ctx))
                .unwrap_err()
        };
        assert!(e("req.hdr", &[]).starts_with("fetch 'req.hdr' expects 1 to 2 argument(s), got 0"));
        assert!(e("req.hdr", &["a", "x"]).contains("argument 2 'x' is not an integer"));
        assert!(e("var", &["nope"]).contains("is not a variable"));
        assert!(e("int", &["1", "2"]).contains("expects 1 argument(s), got 2"));
        assert!(e("src", &["1"]).contains("expects no arguments"));
        assert!(e("bool", &["maybe"]).contains("expects true, false, 1 or 0"));
        assert!(e("uuid", &["5"]).contains("unsupported UUID version 5"));
        assert!(e("date", &["1", "h"]).contains("unknown unit 'h'"));
        let mut t = txn_get("/", &[]);
        assert_eq!(call_by_name("nope", &mut t, &[]), None);
        assert_eq!(call_by_name("req.hdr", &mut t, &[]), None);
        assert_eq!(call_by_name("path", &mut t, &[]), Some(Sample::str("/")));
        assert_eq!(
            call_by_name("int", &mut t, &[Sample::Int(4)]),
            Some(Sample::Int(4))
        );
    }
}
