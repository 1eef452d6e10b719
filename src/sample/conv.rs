//! The built-in converters, as data.
//!
//! This module owns [`CONVERTERS`], the table of every built-in converter
//! with its input type, argument kinds and output type, and the input
//! casts HAProxy applies before a converter runs ([`cast`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use regex::Regex;
use sha1::Digest as _;

use super::fetch::{Arg, ArgEnv, ArgKind, CheckFn, arg_int, arg_str, parse_args};
use super::map::MapMatch;
use super::{Sample, SampleType, parse_leading_int};
use crate::proxy::txn::Txn;

/// A converter function: input (already cast to the declared type) and
/// checked arguments.
pub type ConvFn = fn(&mut Txn, Sample, &[Arg]) -> Option<Sample>;

/// A built-in converter.
#[derive(Debug)]
pub struct ConvDef {
    /// The name as written in configurations (`lower`).
    pub name: &'static str,
    /// How it is written, for error messages (`field(INDEX,DELIMS[,COUNT])`).
    pub usage: &'static str,
    /// Kinds of the arguments, in order.
    pub args: &'static [ArgKind],
    /// Number of mandatory arguments.
    pub min_args: usize,
    /// The type the input is cast to first.
    pub input: SampleType,
    /// The type of the samples it returns (`Any`: same as the input).
    pub out: SampleType,
    /// The converter itself.
    pub func: ConvFn,
    /// Extra checks of the parsed arguments.
    pub check: Option<CheckFn>,
}

impl ConvDef {
    const fn new(
        name: &'static str,
        usage: &'static str,
        args: &'static [ArgKind],
        min_args: usize,
        input: SampleType,
        out: SampleType,
        func: ConvFn,
    ) -> ConvDef {
        ConvDef {
            name,
            usage,
            args,
            min_args,
            input,
            out,
            func,
            check: None,
        }
    }
    const fn check(mut self, c: CheckFn) -> ConvDef {
        self.check = Some(c);
        self
    }

    /// Parses and checks arguments given as text.
    pub fn parse_args(&self, raw: &[String], env: ArgEnv<'_>) -> Result<Vec<Arg>, String> {
        let (name, usage) = (self.name, self.usage);
        parse_args(
            "converter",
            name,
            usage,
            self.args,
            self.min_args,
            self.check,
            raw,
            env,
        )
    }

    /// Casts the input to the converter's type and runs it.
    pub fn apply(&self, txn: &mut Txn, input: Sample, args: &[Arg]) -> Option<Sample> {
        let input = cast(input, self.input)?;
        (self.func)(txn, input, args)
    }
}

/// Casts a sample to a type as HAProxy does before a converter; `None`
/// where no cast exists.
pub fn cast(s: Sample, to: SampleType) -> Option<Sample> {
    if s.kind() == to {
        return Some(s);
    }
    Some(match to {
        SampleType::Any => s,
        SampleType::Str => match s {
            Sample::Str(x) | Sample::Method(x) => Sample::Str(x),
            Sample::Bin(b) => Sample::Str(String::from_utf8_lossy(&b).into_owned()),
            other => Sample::Str(other.to_str().into_owned()),
        },
        SampleType::Bin => match s {
            Sample::Str(x) | Sample::Method(x) => Sample::Bin(x.into_bytes()),
            other => Sample::Bin(other.to_bytes()),
        },
        SampleType::Int => Sample::Int(s.to_int()?),
        SampleType::Bool => Sample::Bool(s.to_bool()),
        SampleType::Addr => Sample::ip(s.to_ip()?),
        SampleType::Ipv4 => match Sample::ip(s.to_ip()?) {
            v4 @ Sample::Ipv4(_) => v4,
            _ => return None,
        },
        SampleType::Ipv6 => match s.to_ip()? {
            IpAddr::V4(a) => Sample::Ipv6(a.to_ipv6_mapped()),
            IpAddr::V6(a) => Sample::Ipv6(a),
        },
        SampleType::Meth => Sample::Method(s.to_str().into_owned()),
    })
}

use ArgKind as K;
use SampleType as T;

const NO: &[ArgKind] = &[];
const S1: &[ArgKind] = &[K::Str];
const I1: &[ArgKind] = &[K::Int];
const IV: &[ArgKind] = &[K::IntOrVar];
const MAPA: &[ArgKind] = &[K::Map, K::Str];
const TIME: &[ArgKind] = &[K::Str, K::Int];

/// Every built-in converter.
pub static CONVERTERS: &[ConvDef] = &[
    // Strings.
    ConvDef::new("lower", "lower", NO, 0, T::Str, T::Str, c_lower),
    ConvDef::new("upper", "upper", NO, 0, T::Str, T::Str, c_upper),
    ConvDef::new("length", "length", NO, 0, T::Str, T::Int, c_length),
    ConvDef::new(
        "field",
        "field(INDEX,DELIMS[,COUNT])",
        &[K::Int, K::Str, K::Int],
        2,
        T::Str,
        T::Str,
        c_field,
    )
    .check(check_field),
    ConvDef::new(
        "word",
        "word(INDEX,DELIMS[,COUNT])",
        &[K::Int, K::Str, K::Int],
        2,
        T::Str,
        T::Str,
        c_word,
    )
    .check(check_field),
    ConvDef::new(
        "regsub",
        "regsub(REGEX,SUBST[,FLAGS])",
        &[K::Str, K::Str, K::Str],
        2,
        T::Str,
        T::Str,
        c_regsub,
    )
    .check(check_regsub),
    ConvDef::new("ltrim", "ltrim(CHARS)", S1, 1, T::Str, T::Str, c_ltrim),
    ConvDef::new("rtrim", "rtrim(CHARS)", S1, 1, T::Str, T::Str, c_rtrim),
    ConvDef::new("cut_crlf", "cut_crlf", NO, 0, T::Str, T::Str, c_cut_crlf),
    ConvDef::new(
        "concat",
        "concat([START],[VAR],[END])",
        &[K::Str, K::Str, K::Str],
        0,
        T::Str,
        T::Str,
        c_concat,
    )
    .check(check_concat),
    ConvDef::new(
        "strcmp",
        "strcmp(VAR)",
        &[K::Var],
        1,
        T::Str,
        T::Int,
        c_strcmp,
    ),
    ConvDef::new(
        "json",
        "json([ascii|utf8|utf8s|utf8p|utf8ps])",
        S1,
        0,
        T::Bin,
        T::Str,
        c_json,
    )
    .check(check_json),
    ConvDef::new(
        "url_dec",
        "url_dec([IN_FORM])",
        I1,
        0,
        T::Str,
        T::Str,
        c_url_dec,
    ),
    ConvDef::new(
        "url_enc",
        "url_enc([query])",
        S1,
        0,
        T::Str,
        T::Str,
        c_url_enc,
    )
    .check(check_url_enc),
    // Binary and encodings.
    ConvDef::new("base64", "base64", NO, 0, T::Bin, T::Str, c_base64),
    ConvDef::new("b64dec", "b64dec", NO, 0, T::Str, T::Bin, c_b64dec),
    ConvDef::new("ub64enc", "ub64enc", NO, 0, T::Bin, T::Str, c_ub64enc),
    ConvDef::new("ub64dec", "ub64dec", NO, 0, T::Str, T::Bin, c_ub64dec),
    ConvDef::new("hex", "hex", NO, 0, T::Bin, T::Str, c_hex),
    ConvDef::new("unhex", "unhex", NO, 0, T::Str, T::Bin, c_unhex),
    ConvDef::new(
        "bytes",
        "bytes(OFFSET[,LENGTH])",
        &[K::Int, K::Int],
        1,
        T::Bin,
        T::Bin,
        c_bytes,
    )
    .check(check_bytes),
    // Hashes.
    ConvDef::new("sha1", "sha1", NO, 0, T::Bin, T::Bin, c_sha1),
    ConvDef::new(
        "sha2",
        "sha2([224|256|384|512])",
        I1,
        0,
        T::Bin,
        T::Bin,
        c_sha2,
    )
    .check(check_sha2),
    ConvDef::new(
        "crc32",
        "crc32([AVALANCHE])",
        I1,
        0,
        T::Bin,
        T::Int,
        c_crc32,
    ),
    ConvDef::new("xxh32", "xxh32([SEED])", I1, 0, T::Bin, T::Int, c_xxh32),
    ConvDef::new("xxh3", "xxh3([SEED])", I1, 0, T::Bin, T::Int, c_xxh3),
    ConvDef::new("djb2", "djb2([AVALANCHE])", I1, 0, T::Bin, T::Int, c_djb2),
    ConvDef::new("sdbm", "sdbm([AVALANCHE])", I1, 0, T::Bin, T::Int, c_sdbm),
    // Arithmetic and logic.
    ConvDef::new("add", "add(VALUE|VAR)", IV, 1, T::Int, T::Int, c_add),
    ConvDef::new("sub", "sub(VALUE|VAR)", IV, 1, T::Int, T::Int, c_sub),
    ConvDef::new("mul", "mul(VALUE|VAR)", IV, 1, T::Int, T::Int, c_mul),
    ConvDef::new("div", "div(VALUE|VAR)", IV, 1, T::Int, T::Int, c_div),
    ConvDef::new("mod", "mod(VALUE|VAR)", IV, 1, T::Int, T::Int, c_mod),
    ConvDef::new("and", "and(VALUE|VAR)", IV, 1, T::Int, T::Int, c_and),
    ConvDef::new("or", "or(VALUE|VAR)", IV, 1, T::Int, T::Int, c_or),
    ConvDef::new("xor", "xor(VALUE|VAR)", IV, 1, T::Int, T::Int, c_xor),
    ConvDef::new("neg", "neg", NO, 0, T::Int, T::Int, c_neg),
    ConvDef::new("cpl", "cpl", NO, 0, T::Int, T::Int, c_cpl),
    ConvDef::new("not", "not", NO, 0, T::Int, T::Bool, c_not),
    ConvDef::new("bool", "bool", NO, 0, T::Int, T::Bool, c_bool),
    ConvDef::new("odd", "odd", NO, 0, T::Int, T::Bool, c_odd),
    ConvDef::new("even", "even", NO, 0, T::Int, T::Bool, c_even),
    // Addresses and dates.
    ConvDef::new(
        "ipmask",
        "ipmask(MASK4[,MASK6])",
        &[K::Str, K::Str],
        1,
        T::Addr,
        T::Addr,
        c_ipmask,
    )
    .check(check_ipmask),
    ConvDef::new(
        "http_date",
        "http_date([OFFSET[,s|ms|us]])",
        &[K::Int, K::Str],
        0,
        T::Int,
        T::Str,
        c_http_date,
    )
    .check(check_unit),
    ConvDef::new(
        "ltime",
        "ltime(FORMAT[,OFFSET])",
        TIME,
        1,
        T::Int,
        T::Str,
        c_ltime,
    )
    .check(check_time),
    ConvDef::new(
        "utime",
        "utime(FORMAT[,OFFSET])",
        TIME,
        1,
        T::Int,
        T::Str,
        c_utime,
    )
    .check(check_time),
    // Variables and debugging.
    ConvDef::new(
        "set-var",
        "set-var(VAR)",
        &[K::Var],
        1,
        T::Any,
        T::Any,
        c_set_var,
    ),
    ConvDef::new(
        "unset-var",
        "unset-var(VAR)",
        &[K::Var],
        1,
        T::Any,
        T::Any,
        c_unset_var,
    ),
    ConvDef::new("debug", "debug([PREFIX])", S1, 0, T::Any, T::Any, c_debug),
    // Maps: map_<match>[_<output>].
    ConvDef::new(
        "map",
        "map(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Str,
        c_map::<0, 0>,
    ),
    ConvDef::new(
        "map_str",
        "map_str(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Str,
        c_map::<0, 0>,
    ),
    ConvDef::new(
        "map_beg",
        "map_beg(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Str,
        c_map::<1, 0>,
    ),
    ConvDef::new(
        "map_end",
        "map_end(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Str,
        c_map::<2, 0>,
    ),
    ConvDef::new(
        "map_sub",
        "map_sub(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Str,
        c_map::<3, 0>,
    ),
    ConvDef::new(
        "map_reg",
        "map_reg(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Str,
        c_map::<4, 0>,
    ),
    ConvDef::new(
        "map_dom",
        "map_dom(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Str,
        c_map::<5, 0>,
    ),
    ConvDef::new(
        "map_dir",
        "map_dir(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Str,
        c_map::<6, 0>,
    ),
    ConvDef::new(
        "map_int",
        "map_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Int,
        T::Str,
        c_map::<7, 0>,
    ),
    ConvDef::new(
        "map_ip",
        "map_ip(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Addr,
        T::Str,
        c_map::<8, 0>,
    ),
    ConvDef::new(
        "map_str_int",
        "map_str_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Int,
        c_map::<0, 1>,
    )
    .check(check_map_int),
    ConvDef::new(
        "map_beg_int",
        "map_beg_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Int,
        c_map::<1, 1>,
    )
    .check(check_map_int),
    ConvDef::new(
        "map_end_int",
        "map_end_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Int,
        c_map::<2, 1>,
    )
    .check(check_map_int),
    ConvDef::new(
        "map_sub_int",
        "map_sub_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Int,
        c_map::<3, 1>,
    )
    .check(check_map_int),
    ConvDef::new(
        "map_reg_int",
        "map_reg_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Int,
        c_map::<4, 1>,
    )
    .check(check_map_int),
    ConvDef::new(
        "map_dom_int",
        "map_dom_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Int,
        c_map::<5, 1>,
    )
    .check(check_map_int),
    ConvDef::new(
        "map_dir_int",
        "map_dir_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Int,
        c_map::<6, 1>,
    )
    .check(check_map_int),
    ConvDef::new(
        "map_int_int",
        "map_int_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Int,
        T::Int,
        c_map::<7, 1>,
    )
    .check(check_map_int),
    ConvDef::new(
        "map_ip_int",
        "map_ip_int(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Addr,
        T::Int,
        c_map::<8, 1>,
    )
    .check(check_map_int),
    ConvDef::new(
        "map_str_ip",
        "map_str_ip(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Addr,
        c_map::<0, 2>,
    )
    .check(check_map_ip),
    ConvDef::new(
        "map_beg_ip",
        "map_beg_ip(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Addr,
        c_map::<1, 2>,
    )
    .check(check_map_ip),
    ConvDef::new(
        "map_sub_ip",
        "map_sub_ip(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Addr,
        c_map::<3, 2>,
    )
    .check(check_map_ip),
    ConvDef::new(
        "map_reg_ip",
        "map_reg_ip(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Str,
        T::Addr,
        c_map::<4, 2>,
    )
    .check(check_map_ip),
    ConvDef::new(
        "map_int_ip",
        "map_int_ip(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Int,
        T::Addr,
        c_map::<7, 2>,
    )
    .check(check_map_ip),
    ConvDef::new(
        "map_ip_ip",
        "map_ip_ip(FILE[,DEFAULT])",
        MAPA,
        1,
        T::Addr,
        T::Addr,
        c_map::<8, 2>,
    )
    .check(check_map_ip),
];

static INDEX: LazyLock<HashMap<&'static str, &'static ConvDef>> =
    LazyLock::new(|| CONVERTERS.iter().map(|c| (c.name, c)).collect());

/// A built-in converter by name.
pub fn lookup(name: &str) -> Option<&'static ConvDef> {
    INDEX.get(name).copied()
}

/// Runs a built-in converter with sample arguments (extensions calling
/// converters by name). `None` for an unknown name, bad arguments or no
/// sample.
pub fn call_by_name(name: &str, txn: &mut Txn, input: Sample, args: &[Sample]) -> Option<Sample> {
    let def = lookup(name)?;
    let raw: Vec<String> = args.iter().map(|s| s.to_str().into_owned()).collect();
    let world = Arc::clone(&txn.world);
    let parsed = def.parse_args(&raw, ArgEnv::Run(&world.maps)).ok()?;
    def.apply(txn, input, &parsed)
}

// ---------------------------------------------------------------- helpers

fn text(s: &Sample) -> std::borrow::Cow<'_, str> {
    s.to_str()
}

fn bytes_of(s: Sample) -> Vec<u8> {
    match s {
        Sample::Bin(b) => b,
        other => other.to_bytes(),
    }
}

fn int_of(s: &Sample) -> Option<i64> {
    s.to_int()
}

/// Decodes hexadecimal text.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Bob Jenkins' 32-bit integer hash, HAProxy's "avalanche".
pub fn full_hash(mut a: u32) -> u32 {
    a = a.wrapping_add(0x7ed5_5d16).wrapping_add(a << 12);
    a = (a ^ 0xc761_c23c) ^ (a >> 19);
    a = a.wrapping_add(0x1656_67b1).wrapping_add(a << 5);
    a = a.wrapping_add(0xd3a2_646c) ^ (a << 9);
    a = a.wrapping_add(0xfd70_46c5).wrapping_add(a << 3);
    a = (a ^ 0xb55a_4f09) ^ (a >> 16);
    a
}

fn avalanche(h: u32, args: &[Arg]) -> Sample {
    let h = if arg_int(args, 0).unwrap_or(0) != 0 {
        full_hash(h)
    } else {
        h
    };
    Sample::Int(i64::from(h))
}

/// An integer argument or the integer value of a variable.
fn int_arg(txn: &Txn, args: &[Arg]) -> Option<i64> {
    match args.first()? {
        Arg::Int(v) => Some(*v),
        Arg::Var(v) => txn.get_var(v)?.to_int(),
        _ => None,
    }
}

// ---------------------------------------------------------------- checks

fn check_field(args: &mut [Arg]) -> Result<(), String> {
    if arg_int(args, 0) == Some(0) {
        return Err("index must not be 0 (fields count from 1, or from -1 at the end)".into());
    }
    if arg_str(args, 1).is_none_or(str::is_empty) {
        return Err("expects at least one delimiter character".into());
    }
    if arg_int(args, 2).is_some_and(|c| c < 0) {
        return Err("count must not be negative".into());
    }
    Ok(())
}

/// Translates HAProxy's substitution syntax (`\1` back-references) into
/// the regex crate's (`${1}`).
fn translate_subst(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    let _ = write!(out, "${{{d}}}");
                }
                Some('x') => {
                    let hex: String = chars.clone().take(2).collect();
                    match u8::from_str_radix(&hex, 16) {
                        Ok(v) if hex.len() == 2 => {
                            chars.next();
                            chars.next();
                            let ch = v as char;
                            if ch == '$' {
                                out.push_str("$$");
                            } else {
                                out.push(ch);
                            }
                        }
                        _ => out.push('x'),
                    }
                }
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            other => out.push(other),
        }
    }
    out
}

fn check_regsub(args: &mut [Arg]) -> Result<(), String> {
    let flags = arg_str(args, 2).unwrap_or("").to_string();
    if let Some(bad) = flags.chars().find(|c| !matches!(c, 'i' | 'g')) {
        return Err(format!(
            "unknown flag '{bad}', expected 'i' (ignore case) or 'g' (global)"
        ));
    }
    let pat = arg_str(args, 0).unwrap_or("");
    let src = if flags.contains('i') {
        format!("(?i){pat}")
    } else {
        pat.to_string()
    };
    let re = Regex::new(&src).map_err(|e| format!("invalid regex '{pat}': {e}"))?;
    let subst = translate_subst(arg_str(args, 1).unwrap_or(""));
    args[0] = Arg::Regex(Arc::new(re));
    args[1] = Arg::Str(subst);
    args[2] = Arg::Int(i64::from(flags.contains('g')));
    Ok(())
}

fn check_concat(args: &mut [Arg]) -> Result<(), String> {
    match arg_str(args, 1) {
        Some(v) if !v.is_empty() => {
            let var = v.parse().map_err(|e: String| format!("argument 2: {e}"))?;
            args[1] = Arg::Var(var);
        }
        _ => args[1] = Arg::None,
    }
    Ok(())
}

fn check_json(args: &mut [Arg]) -> Result<(), String> {
    let mode = match arg_str(args, 0).map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "ascii") => 0,
        Some("utf8") => 1,
        Some("utf8s") => 2,
        Some("utf8p") => 3,
        Some("utf8ps") => 4,
        Some(other) => {
            return Err(format!(
                "unknown input code '{other}', expected ascii, utf8, utf8s, utf8p or utf8ps"
            ));
        }
    };
    args[0] = Arg::Int(mode);
    Ok(())
}

fn check_url_enc(args: &mut [Arg]) -> Result<(), String> {
    match arg_str(args, 0) {
        None | Some("" | "query") => Ok(()),
        Some(o) => Err(format!("unknown encoding type '{o}', expected 'query'")),
    }
}

fn check_bytes(args: &mut [Arg]) -> Result<(), String> {
    if arg_int(args, 0).is_some_and(|v| v < 0) || arg_int(args, 1).is_some_and(|v| v < 0) {
        return Err("offset and length must not be negative".into());
    }
    Ok(())
}

fn check_sha2(args: &mut [Arg]) -> Result<(), String> {
    match arg_int(args, 0) {
        None | Some(224 | 256 | 384 | 512) => Ok(()),
        Some(b) => Err(format!(
            "unsupported number of bits {b}, expected 224, 256, 384 or 512"
        )),
    }
}

fn parse_mask(s: &str, v6: bool) -> Option<IpAddr> {
    if let Ok(len) = s.parse::<u8>() {
        let max = if v6 { 128 } else { 32 };
        if len > max {
            return None;
        }
        return Some(if v6 {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6(Ipv6Addr::from(m))
        } else {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4(Ipv4Addr::from(m))
        });
    }
    match s.parse::<IpAddr>().ok()? {
        ip @ IpAddr::V4(_) if !v6 => Some(ip),
        ip @ IpAddr::V6(_) if v6 => Some(ip),
        _ => None,
    }
}

fn check_ipmask(args: &mut [Arg]) -> Result<(), String> {
    let m4 = arg_str(args, 0).unwrap_or("");
    let m4 = parse_mask(m4, false).ok_or_else(|| {
        format!("invalid IPv4 mask '{m4}', expected a prefix length (0-32) or a dotted mask")
    })?;
    args[0] = Arg::Ip(m4);
    if let Some(m6) = arg_str(args, 1) {
        let m6 = parse_mask(m6, true).ok_or_else(|| {
            format!("invalid IPv6 mask '{m6}', expected a prefix length (0-128) or an IPv6 mask")
        })?;
        args[1] = Arg::Ip(m6);
    }
    Ok(())
}

fn check_unit(args: &mut [Arg]) -> Result<(), String> {
    match arg_str(args, 1) {
        None | Some("" | "s" | "ms" | "us") => Ok(()),
        Some(u) => Err(format!("unknown unit '{u}', expected s, ms or us")),
    }
}

fn check_time(args: &mut [Arg]) -> Result<(), String> {
    let f = arg_str(args, 0).unwrap_or("");
    if chrono::format::StrftimeItems::new(f).any(|i| matches!(i, chrono::format::Item::Error)) {
        return Err(format!("invalid time format '{f}'"));
    }
    Ok(())
}

fn check_map_int(args: &mut [Arg]) -> Result<(), String> {
    match arg_str(args, 1) {
        Some(d) if parse_leading_int(d).is_none() => {
            Err(format!("default value '{d}' is not an integer"))
        }
        _ => Ok(()),
    }
}

fn check_map_ip(args: &mut [Arg]) -> Result<(), String> {
    match arg_str(args, 1) {
        Some(d) if d.trim().parse::<IpAddr>().is_err() => {
            Err(format!("default value '{d}' is not an IP address"))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------- strings

fn c_lower(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Str(text(&s).to_ascii_lowercase()))
}
fn c_upper(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Str(text(&s).to_ascii_uppercase()))
}
fn c_length(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Int(text(&s).len() as i64))
}

/// Extracts fields (`skip_empty` false) or words (true) as `field`/`word` do.
fn extract(s: &str, index: i64, delims: &str, count: i64, skip_empty: bool) -> String {
    let parts: Vec<&str> = s
        .split(|c: char| delims.contains(c))
        .filter(|p| !skip_empty || !p.is_empty())
        .collect();
    let n = parts.len() as i64;
    let (start, end) = if index > 0 {
        let start = index - 1;
        let end = if count == 0 {
            n
        } else {
            start.saturating_add(count).min(n)
        };
        (start, end)
    } else {
        let last = n + index; // index -1 is the last part
        let start = if count == 0 { 0 } else { last - count + 1 };
        (start.max(0), last + 1)
    };
    if start >= n || end <= start || start < 0 {
        return String::new();
    }
    // Rejoin with the delimiters that were actually there.
    if end - start == 1 {
        return parts[start as usize].to_string();
    }
    let sep = delims.chars().next().map(String::from).unwrap_or_default();
    if skip_empty {
        return parts[start as usize..end as usize].join(&sep);
    }
    // For fields, keep the original text between the first and last field.
    let mut pos = 0usize;
    let mut offsets = Vec::with_capacity(parts.len());
    for p in &parts {
        let at = s[pos..].find(p).map_or(pos, |i| pos + i);
        offsets.push(at);
        pos = at + p.len();
        if pos < s.len() {
            pos += s[pos..].chars().next().map_or(1, char::len_utf8);
        }
    }
    let a = offsets[start as usize];
    let last = (end - 1) as usize;
    let b = offsets[last] + parts[last].len();
    s.get(a..b).unwrap_or_default().to_string()
}

fn c_field(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let out = extract(
        &text(&s),
        arg_int(args, 0)?,
        arg_str(args, 1)?,
        arg_int(args, 2).unwrap_or(1),
        false,
    );
    Some(Sample::Str(out))
}
fn c_word(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let out = extract(
        &text(&s),
        arg_int(args, 0)?,
        arg_str(args, 1)?,
        arg_int(args, 2).unwrap_or(1),
        true,
    );
    Some(Sample::Str(out))
}
fn c_regsub(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let Some(Arg::Regex(re)) = args.first() else {
        return None;
    };
    let subst = arg_str(args, 1)?;
    let t = text(&s);
    let out = if arg_int(args, 2) == Some(1) {
        re.replace_all(&t, subst)
    } else {
        re.replace(&t, subst)
    };
    Some(Sample::Str(out.into_owned()))
}
fn c_ltrim(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let chars = arg_str(args, 0)?;
    Some(Sample::Str(
        text(&s)
            .trim_start_matches(|c| chars.contains(c))
            .to_string(),
    ))
}
fn c_rtrim(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let chars = arg_str(args, 0)?;
    Some(Sample::Str(
        text(&s).trim_end_matches(|c| chars.contains(c)).to_string(),
    ))
}
fn c_cut_crlf(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    let t = text(&s);
    let end = t.find(['\r', '\n']).unwrap_or(t.len());
    Some(Sample::Str(t[..end].to_string()))
}
fn c_concat(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let mut out = text(&s).into_owned();
    out.push_str(arg_str(args, 0).unwrap_or(""));
    if let Some(Arg::Var(v)) = args.get(1)
        && let Some(val) = txn.get_var(v)
    {
        out.push_str(&val.to_str());
    }
    out.push_str(arg_str(args, 2).unwrap_or(""));
    Some(Sample::Str(out))
}
fn c_strcmp(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let Some(Arg::Var(v)) = args.first() else {
        return None;
    };
    let other = txn.get_var(v)?;
    let (a, b) = (s.to_bytes(), other.to_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .find(|(x, y)| x != y)
        .map(|(x, y)| i64::from(*x) - i64::from(*y))
        .unwrap_or(a.len() as i64 - b.len() as i64);
    Some(Sample::Int(diff))
}

fn json_escape_char(out: &mut String, c: u32) {
    match c {
        0x22 => out.push_str("\\\""),
        0x5c => out.push_str("\\\\"),
        0x2f => out.push_str("\\/"),
        0x08 => out.push_str("\\b"),
        0x0c => out.push_str("\\f"),
        0x0d => out.push_str("\\r"),
        0x0a => out.push_str("\\n"),
        0x09 => out.push_str("\\t"),
        0x20..=0x7e => out.push(c as u8 as char),
        _ => {
            let _ = write!(out, "\\u{c:04x}");
        }
    }
}

fn c_json(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let data = bytes_of(s);
    let mode = arg_int(args, 0).unwrap_or(0);
    let mut out = String::with_capacity(data.len());
    if mode == 0 {
        for b in &data {
            json_escape_char(&mut out, u32::from(*b));
        }
        return Some(Sample::Str(out));
    }
    for chunk in data.utf8_chunks() {
        for c in chunk.valid().chars() {
            json_escape_char(&mut out, c as u32);
        }
        let invalid = chunk.invalid();
        if !invalid.is_empty() {
            match mode {
                1 => return None,
                3 => invalid
                    .iter()
                    .for_each(|b| json_escape_char(&mut out, u32::from(*b))),
                _ => {} // utf8s, utf8ps: skip invalid sequences
            }
        }
    }
    Some(Sample::Str(out))
}

/// Decodes `%XX` escapes; `+` becomes a space in a query string (after a
/// `?`, or everywhere when `in_form`). `None` on a bad escape.
pub fn url_decode(s: &str, in_form: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut in_query = in_form;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
                continue;
            }
            b'?' => {
                in_query = true;
                out.push(b'?');
            }
            b'+' if in_query => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn c_url_dec(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    url_decode(&text(&s), arg_int(args, 0).unwrap_or(0) != 0).map(Sample::Str)
}

const URL_ENC: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn c_url_enc(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Str(
        percent_encoding::utf8_percent_encode(&text(&s), URL_ENC).to_string(),
    ))
}

// ---------------------------------------------------------------- binary

fn c_base64(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Str(
        base64::engine::general_purpose::STANDARD.encode(bytes_of(s)),
    ))
}
fn c_b64dec(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    let t = text(&s);
    let t = t.trim();
    let e = base64::engine::general_purpose::STANDARD;
    e.decode(t)
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(t.trim_end_matches('='))
        })
        .ok()
        .map(Sample::Bin)
}
fn c_ub64enc(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Str(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes_of(s)),
    ))
}
fn c_ub64dec(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    let t = text(&s);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t.trim().trim_end_matches('='))
        .ok()
        .map(Sample::Bin)
}
fn c_hex(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    let mut out = String::new();
    for b in bytes_of(s) {
        let _ = write!(out, "{b:02X}");
    }
    Some(Sample::Str(out))
}
fn c_unhex(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    unhex(text(&s).trim()).map(Sample::Bin)
}
fn c_bytes(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let data = bytes_of(s);
    let off = usize::try_from(arg_int(args, 0)?).ok()?;
    if off >= data.len() {
        return Some(Sample::Bin(Vec::new()));
    }
    let end = match arg_int(args, 1) {
        Some(l) => off.saturating_add(usize::try_from(l).ok()?).min(data.len()),
        None => data.len(),
    };
    Some(Sample::Bin(data[off..end].to_vec()))
}

// ---------------------------------------------------------------- hashes

fn c_sha1(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Bin(sha1::Sha1::digest(bytes_of(s)).to_vec()))
}
fn c_sha2(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let d = bytes_of(s);
    let out = match arg_int(args, 0).unwrap_or(256) {
        224 => sha2::Sha224::digest(&d).to_vec(),
        384 => sha2::Sha384::digest(&d).to_vec(),
        512 => sha2::Sha512::digest(&d).to_vec(),
        _ => sha2::Sha256::digest(&d).to_vec(),
    };
    Some(Sample::Bin(out))
}
fn c_crc32(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    Some(avalanche(crc32fast::hash(&bytes_of(s)), args))
}
fn c_xxh32(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let seed = arg_int(args, 0).unwrap_or(0) as u32;
    Some(Sample::Int(i64::from(xxhash_rust::xxh32::xxh32(
        &bytes_of(s),
        seed,
    ))))
}
fn c_xxh3(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let seed = arg_int(args, 0).unwrap_or(0) as u64;
    Some(Sample::Int(
        xxhash_rust::xxh3::xxh3_64_with_seed(&bytes_of(s), seed) as i64,
    ))
}
fn c_djb2(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let h = bytes_of(s).iter().fold(5381u32, |h, &c| {
        (h << 5).wrapping_add(h).wrapping_add(u32::from(c))
    });
    Some(avalanche(h, args))
}
fn c_sdbm(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let h = bytes_of(s).iter().fold(0u32, |h, &c| {
        u32::from(c)
            .wrapping_add(h << 6)
            .wrapping_add(h << 16)
            .wrapping_sub(h)
    });
    Some(avalanche(h, args))
}

// ---------------------------------------------------------------- arithmetic

fn arith(txn: &Txn, s: &Sample, args: &[Arg], op: fn(i64, i64) -> i64) -> Option<Sample> {
    let a = int_of(s)?;
    let b = int_arg(txn, args)?;
    Some(Sample::Int(op(a, b)))
}
fn c_add(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    arith(txn, &s, args, i64::saturating_add)
}
fn c_sub(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    arith(txn, &s, args, i64::saturating_sub)
}
fn c_mul(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    arith(txn, &s, args, i64::saturating_mul)
}
fn c_div(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    // HAProxy: division by zero gives the largest integer.
    arith(txn, &s, args, |a, b| {
        if b == 0 {
            i64::MAX
        } else {
            a.checked_div(b).unwrap_or(i64::MAX)
        }
    })
}
fn c_mod(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    arith(txn, &s, args, |a, b| a.checked_rem(b).unwrap_or(0))
}
fn c_and(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    arith(txn, &s, args, |a, b| a & b)
}
fn c_or(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    arith(txn, &s, args, |a, b| a | b)
}
fn c_xor(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    arith(txn, &s, args, |a, b| a ^ b)
}
fn c_neg(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Int(int_of(&s)?.saturating_neg()))
}
fn c_cpl(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Int(!int_of(&s)?))
}
fn c_not(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Bool(int_of(&s)? == 0))
}
fn c_bool(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Bool(int_of(&s)? != 0))
}
fn c_odd(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Bool(int_of(&s)? & 1 == 1))
}
fn c_even(_: &mut Txn, s: Sample, _: &[Arg]) -> Option<Sample> {
    Some(Sample::Bool(int_of(&s)? & 1 == 0))
}

// ---------------------------------------------------------------- addresses, dates

fn c_ipmask(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    match (s.to_ip()?, args.first(), args.get(1)) {
        (IpAddr::V4(a), Some(Arg::Ip(IpAddr::V4(m))), _) => {
            Some(Sample::Ipv4(Ipv4Addr::from(u32::from(a) & u32::from(*m))))
        }
        (IpAddr::V6(a), _, Some(Arg::Ip(IpAddr::V6(m)))) => {
            Some(Sample::Ipv6(Ipv6Addr::from(u128::from(a) & u128::from(*m))))
        }
        _ => None,
    }
}

fn c_http_date(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let v = int_of(&s)?.checked_add(arg_int(args, 0).unwrap_or(0))?;
    let v = u64::try_from(v).ok()?;
    let d = match arg_str(args, 1) {
        Some("ms") => Duration::from_millis(v),
        Some("us") => Duration::from_micros(v),
        _ => Duration::from_secs(v),
    };
    // IMF-fixdate has a four-digit year: refuse dates after 9999-12-31.
    if d.as_secs() > 253_402_300_799 {
        return None;
    }
    let t = UNIX_EPOCH.checked_add(d)?;
    Some(Sample::Str(httpdate::fmt_http_date(t)))
}

fn format_time<Tz: chrono::TimeZone>(dt: chrono::DateTime<Tz>, fmt: &str) -> Option<String>
where
    Tz::Offset: std::fmt::Display,
{
    let mut out = String::new();
    write!(out, "{}", dt.format(fmt)).ok()?;
    Some(out)
}

fn time_of(s: &Sample, args: &[Arg]) -> Option<chrono::DateTime<chrono::Utc>> {
    let secs = int_of(s)?.checked_add(arg_int(args, 1).unwrap_or(0))?;
    chrono::DateTime::from_timestamp(secs, 0)
}

fn c_ltime(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let dt = time_of(&s, args)?.with_timezone(&chrono::Local);
    format_time(dt, arg_str(args, 0)?).map(Sample::Str)
}
fn c_utime(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    format_time(time_of(&s, args)?, arg_str(args, 0)?).map(Sample::Str)
}

// ---------------------------------------------------------------- variables

fn c_set_var(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    if let Some(Arg::Var(v)) = args.first() {
        txn.set_var(v, s.clone());
    }
    Some(s)
}
fn c_unset_var(txn: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    if let Some(Arg::Var(v)) = args.first() {
        txn.unset_var(v);
    }
    Some(s)
}
fn c_debug(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    tracing::debug!(prefix = arg_str(args, 0).unwrap_or(""), kind = s.kind().name(), value = %s, "debug converter");
    Some(s)
}

// ---------------------------------------------------------------- maps

const fn map_match(m: u8) -> MapMatch {
    match m {
        0 => MapMatch::Str,
        1 => MapMatch::Beg,
        2 => MapMatch::End,
        3 => MapMatch::Sub,
        4 => MapMatch::Reg,
        5 => MapMatch::Dom,
        6 => MapMatch::Dir,
        7 => MapMatch::Int,
        _ => MapMatch::Ip,
    }
}

/// `map_<M>_<O>`: M is the match kind, O the output (0 str, 1 int, 2 ip).
fn c_map<const M: u8, const O: u8>(_: &mut Txn, s: Sample, args: &[Arg]) -> Option<Sample> {
    let Some(Arg::Map(m)) = args.first() else {
        return None;
    };
    let hit = match map_match(M) {
        MapMatch::Int => m.lookup_int(s.to_int()?),
        MapMatch::Ip => m.lookup_ip(s.to_ip()?),
        kind => m.lookup_str(kind, &s.to_str()),
    };
    let value = match hit {
        Some(v) => v,
        None => arg_str(args, 1)?.to_string(),
    };
    match O {
        0 => Some(Sample::Str(value)),
        1 => parse_leading_int(&value).map(Sample::Int),
        _ => value.trim().parse::<IpAddr>().ok().map(Sample::ip),
    }
}

/// Seconds since the epoch of a time, for tests and log formats.
pub(crate) fn epoch_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::testutil::*;

    fn conv(txn: &mut Txn, name: &str, input: Sample, args: &[&str]) -> Option<Sample> {
        let parts = ctx_parts();
        conv_in(&parts, txn, name, input, args)
    }

    fn conv_in(
        parts: &CtxParts,
        txn: &mut Txn,
        name: &str,
        input: Sample,
        args: &[&str],
    ) -> Option<Sample> {
        let ctx = parts.ctx();
        let def = lookup(name).unwrap_or_else(|| panic!("no converter {name}"));
        let raw: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let parsed = def
            .parse_args(&raw, ArgEnv::Parse(&ctx))
            .unwrap_or_else(|e| panic!("{e}"));
        def.apply(txn, input, &parsed)
    }

    fn err(name: &str, args: &[&str]) -> String {
        let parts = ctx_parts();
        let ctx = parts.ctx();
        let raw: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        lookup(name)
            .unwrap()
            .parse_args(&raw, ArgEnv::Parse(&ctx))
            .unwrap_err()
    }

    fn s(v: &str) -> Sample {
        Sample::str(v)
    }

    #[test]
    fn table_is_consistent() {
        for c in CONVERTERS {
            assert!(c.min_args <= c.args.len(), "{}", c.name);
            assert!(
                std::ptr::eq(lookup(c.name).unwrap(), c),
                "duplicate {}",
                c.name
            );
        }
    }

    #[test]
    fn casts() {
        assert_eq!(cast(Sample::Int(5), T::Str), Some(s("5")));
        assert_eq!(cast(s("12abc"), T::Int), Some(Sample::Int(12)));
        assert_eq!(cast(s("abc"), T::Int), None);
        assert_eq!(
            cast(s("1.2.3.4"), T::Addr),
            Some(Sample::Ipv4("1.2.3.4".parse().unwrap()))
        );
        assert_eq!(cast(s("x"), T::Bin), Some(Sample::Bin(b"x".to_vec())));
        assert_eq!(cast(Sample::Method("GET".into()), T::Str), Some(s("GET")));
        assert_eq!(cast(s("::1"), T::Ipv4), None);
    }

    #[test]
    fn string_converters() {
        let mut t = txn_get("/", &[]);
        let t = &mut t;
        assert_eq!(conv(t, "lower", s("AbC"), &[]), Some(s("abc")));
        assert_eq!(conv(t, "upper", s("AbC"), &[]), Some(s("ABC")));
        assert_eq!(conv(t, "length", s("hello"), &[]), Some(Sample::Int(5)));
        assert_eq!(
            conv(t, "length", Sample::Int(1234), &[]),
            Some(Sample::Int(4))
        );
        assert_eq!(conv(t, "field", s("a:b:c"), &["2", ":"]), Some(s("b")));
        assert_eq!(conv(t, "field", s("a:b:c"), &["-1", ":"]), Some(s("c")));
        assert_eq!(conv(t, "field", s("a::c"), &["2", ":"]), Some(s("")));
        assert_eq!(
            conv(t, "field", s("a:b:c:d"), &["2", ":", "2"]),
            Some(s("b:c"))
        );
        assert_eq!(
            conv(t, "field", s("a:b;c:d"), &["2", ":;", "0"]),
            Some(s("b;c:d"))
        );
        assert_eq!(
            conv(t, "field", s("a:b:c:d"), &["-2", ":", "2"]),
            Some(s("b:c"))
        );
        assert_eq!(conv(t, "field", s("a:b"), &["5", ":"]), Some(s("")));
        assert_eq!(conv(t, "word", s("/a//b/c"), &["2", "/"]), Some(s("b")));
        assert_eq!(conv(t, "word", s("a/b/c"), &["3", "/"]), Some(s("c")));
        assert_eq!(conv(t, "word", s("a/b/c"), &["-1", "/"]), Some(s("c")));
        assert_eq!(
            conv(t, "word", s("/a//b/c"), &["1", "/", "2"]),
            Some(s("a/b"))
        );
        assert_eq!(
            conv(t, "regsub", s("a.b.c"), &["\\.", "_", "g"]),
            Some(s("a_b_c"))
        );
        assert_eq!(
            conv(t, "regsub", s("a.b.c"), &["\\.", "_"]),
            Some(s("a_b.c"))
        );
        assert_eq!(
            conv(t, "regsub", s("ABC"), &["b", "x", "i"]),
            Some(s("AxC"))
        );
        assert_eq!(
            conv(t, "regsub", s("foo12"), &["(foo|bar)([0-9]+)", "\\2\\1$"]),
            Some(s("12foo$"))
        );
        assert_eq!(conv(t, "ltrim", s("xxaxx"), &["x"]), Some(s("axx")));
        assert_eq!(conv(t, "rtrim", s("xxaxx"), &["x"]), Some(s("xxa")));
        assert_eq!(conv(t, "cut_crlf", s("ab\r\ncd"), &[]), Some(s("ab")));
        t.set_var(&"txn.v".parse().unwrap(), s("MID"));
        assert_eq!(
            conv(t, "concat", s("a"), &["<", "txn.v", ">"]),
            Some(s("a<MID>"))
        );
        assert_eq!(
            conv(t, "concat", s("a"), &["", "txn.none", "!"]),
            Some(s("a!"))
        );
        assert_eq!(
            conv(t, "strcmp", s("MID"), &["txn.v"]),
            Some(Sample::Int(0))
        );
        assert!(matches!(conv(t, "strcmp", s("LOW"), &["txn.v"]), Some(Sample::Int(v)) if v < 0));
        assert!(
            matches!(conv(t, "strcmp", s("MIDDLE"), &["txn.v"]), Some(Sample::Int(v)) if v > 0)
        );
        assert_eq!(conv(t, "strcmp", s("x"), &["txn.none"]), None);
        assert_eq!(
            conv(t, "json", s("a\"b\\c/d\n\u{1}é"), &[]),
            Some(s("a\\\"b\\\\c\\/d\\n\\u0001\\u00c3\\u00a9"))
        );
        assert_eq!(
            conv(t, "json", s("é€"), &["utf8"]),
            Some(s("\\u00e9\\u20ac"))
        );
        assert_eq!(
            conv(t, "json", Sample::Bin(vec![b'a', 0xff]), &["utf8"]),
            None
        );
        assert_eq!(
            conv(t, "json", Sample::Bin(vec![b'a', 0xff]), &["utf8s"]),
            Some(s("a"))
        );
        assert_eq!(
            conv(t, "json", Sample::Bin(vec![b'a', 0xff]), &["utf8p"]),
            Some(s("a\\u00ff"))
        );
        assert_eq!(
            conv(t, "url_dec", s("a%20b+c?d+e"), &[]),
            Some(s("a b+c?d e"))
        );
        assert_eq!(conv(t, "url_dec", s("a+b"), &["1"]), Some(s("a b")));
        assert_eq!(conv(t, "url_dec", s("a%2"), &[]), None);
        assert_eq!(
            conv(t, "url_enc", s("a b/é"), &[]),
            Some(s("a%20b%2F%C3%A9"))
        );
    }

    #[test]
    fn binary_and_hash_converters() {
        let mut t = txn_get("/", &[]);
        let t = &mut t;
        assert_eq!(conv(t, "base64", s("hello"), &[]), Some(s("aGVsbG8=")));
        assert_eq!(
            conv(t, "b64dec", s("aGVsbG8="), &[]),
            Some(Sample::Bin(b"hello".to_vec()))
        );
        assert_eq!(
            conv(t, "b64dec", s("aGVsbG8"), &[]),
            Some(Sample::Bin(b"hello".to_vec()))
        );
        assert_eq!(conv(t, "b64dec", s("!!"), &[]), None);
        assert_eq!(
            conv(t, "ub64enc", Sample::Bin(vec![0xfb, 0xff]), &[]),
            Some(s("-_8"))
        );
        assert_eq!(
            conv(t, "ub64dec", s("-_8"), &[]),
            Some(Sample::Bin(vec![0xfb, 0xff]))
        );
        assert_eq!(conv(t, "hex", s("AB"), &[]), Some(s("4142")));
        assert_eq!(
            conv(t, "unhex", s("4142"), &[]),
            Some(Sample::Bin(b"AB".to_vec()))
        );
        assert_eq!(
            conv(t, "bytes", s("hello"), &["1", "3"]),
            Some(Sample::Bin(b"ell".to_vec()))
        );
        assert_eq!(
            conv(t, "bytes", s("hello"), &["3"]),
            Some(Sample::Bin(b"lo".to_vec()))
        );
        assert_eq!(
            conv(t, "bytes", s("hello"), &["2", "99"]),
            Some(Sample::Bin(b"llo".to_vec()))
        );
        assert_eq!(
            conv(t, "bytes", s("hello"), &["9"]),
            Some(Sample::Bin(vec![]))
        );
        let hex = |t: &mut Txn, v: Option<Sample>| conv(t, "hex", v.unwrap(), &[]);
        let v = conv(t, "sha1", s("abc"), &[]);
        assert_eq!(
            hex(t, v),
            Some(s("A9993E364706816ABA3E25717850C26C9CD0D89D"))
        );
        let v = conv(t, "sha2", s("abc"), &[]);
        assert_eq!(
            hex(t, v),
            Some(s(
                "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
            ))
        );
        assert!(
            matches!(conv(t, "sha2", s("abc"), &["512"]), Some(Sample::Bin(b)) if b.len() == 64)
        );
        assert!(
            matches!(conv(t, "sha2", s("abc"), &["224"]), Some(Sample::Bin(b)) if b.len() == 28)
        );
        assert_eq!(
            conv(t, "crc32", s("abc"), &[]),
            Some(Sample::Int(891568578))
        );
        assert_eq!(
            conv(t, "crc32", s("abc"), &["1"]),
            Some(Sample::Int(i64::from(full_hash(891568578))))
        );
        assert_eq!(
            conv(t, "xxh32", s("abc"), &[]),
            Some(Sample::Int(0x32D153FF))
        );
        assert!(
            matches!(conv(t, "xxh32", s("abc"), &["1"]), Some(Sample::Int(v)) if v != 0x32D153FF)
        );
        assert!(matches!(
            conv(t, "xxh3", s("abc"), &[]),
            Some(Sample::Int(_))
        ));
        // djb2("abc") = ((5381*33+97)*33+98)*33+99
        assert_eq!(conv(t, "djb2", s("abc"), &[]), Some(Sample::Int(193485963)));
        assert!(matches!(
            conv(t, "sdbm", s("abc"), &[]),
            Some(Sample::Int(_))
        ));
    }

    #[test]
    fn arithmetic_converters() {
        let mut t = txn_get("/", &[]);
        let t = &mut t;
        let i = Sample::Int;
        assert_eq!(conv(t, "add", i(40), &["2"]), Some(i(42)));
        assert_eq!(conv(t, "sub", i(40), &["2"]), Some(i(38)));
        assert_eq!(conv(t, "mul", i(7), &["6"]), Some(i(42)));
        assert_eq!(conv(t, "div", i(40), &["4"]), Some(i(10)));
        assert_eq!(conv(t, "div", i(40), &["0"]), Some(i(i64::MAX)));
        assert_eq!(conv(t, "mod", i(41), &["4"]), Some(i(1)));
        assert_eq!(conv(t, "mod", i(41), &["0"]), Some(i(0)));
        assert_eq!(conv(t, "and", i(6), &["3"]), Some(i(2)));
        assert_eq!(conv(t, "or", i(6), &["3"]), Some(i(7)));
        assert_eq!(conv(t, "xor", i(6), &["3"]), Some(i(5)));
        assert_eq!(conv(t, "neg", i(6), &[]), Some(i(-6)));
        assert_eq!(conv(t, "cpl", i(0), &[]), Some(i(-1)));
        assert_eq!(conv(t, "not", i(0), &[]), Some(Sample::Bool(true)));
        assert_eq!(conv(t, "bool", i(3), &[]), Some(Sample::Bool(true)));
        assert_eq!(conv(t, "odd", i(3), &[]), Some(Sample::Bool(true)));
        assert_eq!(conv(t, "even", i(3), &[]), Some(Sample::Bool(false)));
        assert_eq!(conv(t, "add", i(i64::MAX), &["1"]), Some(i(i64::MAX)));
        assert_eq!(conv(t, "add", s("40"), &["2"]), Some(i(42)));
        t.set_var(&"txn.n".parse().unwrap(), s("5"));
        assert_eq!(conv(t, "add", i(1), &["txn.n"]), Some(i(6)));
        assert_eq!(conv(t, "mul", i(1), &["txn.missing"]), None);
    }

    #[test]
    fn address_and_date_converters() {
        let mut t = txn_get("/", &[]);
        let t = &mut t;
        let ip4 = |v: &str| Sample::Ipv4(v.parse().unwrap());
        assert_eq!(
            conv(t, "ipmask", ip4("10.1.2.3"), &["24"]),
            Some(ip4("10.1.2.0"))
        );
        assert_eq!(
            conv(t, "ipmask", ip4("10.1.2.3"), &["255.255.0.0"]),
            Some(ip4("10.1.0.0"))
        );
        assert_eq!(
            conv(t, "ipmask", s("10.1.2.3"), &["8"]),
            Some(ip4("10.0.0.0"))
        );
        let v6 = Sample::Ipv6("2001:db8:1:2::1".parse().unwrap());
        assert_eq!(conv(t, "ipmask", v6.clone(), &["24"]), None);
        assert_eq!(
            conv(t, "ipmask", v6, &["24", "32"]),
            Some(Sample::Ipv6("2001:db8::".parse().unwrap()))
        );
        assert_eq!(conv(t, "http_date", Sample::Int(i64::MAX), &[]), None);
        assert_eq!(conv(t, "http_date", Sample::Int(-5), &[]), None);
        assert_eq!(conv(t, "utime", Sample::Int(i64::MAX), &["%Y"]), None);
        assert_eq!(
            conv(t, "http_date", Sample::Int(0), &[]),
            Some(s("Thu, 01 Jan 1970 00:00:00 GMT"))
        );
        assert_eq!(
            conv(t, "http_date", Sample::Int(1000), &["1000", "ms"]),
            Some(s("Thu, 01 Jan 1970 00:00:02 GMT"))
        );
        assert_eq!(
            conv(t, "utime", Sample::Int(86400), &["%Y-%m-%d %H:%M:%S"]),
            Some(s("1970-01-02 00:00:00"))
        );
        assert_eq!(
            conv(t, "utime", Sample::Int(0), &["%Y", "31536000"]),
            Some(s("1971"))
        );
        assert!(
            matches!(conv(t, "ltime", Sample::Int(0), &["%Y"]), Some(Sample::Str(y)) if y == "1970" || y == "1969")
        );
    }

    #[test]
    fn map_converters() {
        let parts = ctx_parts();
        std::fs::write(parts.dir.join("h.map"), "# c\ntest.local other\n/api api\n").unwrap();
        std::fs::write(
            parts.dir.join("n.map"),
            "127.0.0.0/8 loopback\n10.0.0.0/8 lan\n10.1.0.0/16 office\n",
        )
        .unwrap();
        std::fs::write(parts.dir.join("i.map"), "1:10 5\n11 7\n").unwrap();
        let mut t = txn_get("/", &[]);
        let t = &mut t;
        assert_eq!(
            conv_in(&parts, t, "map", s("test.local"), &["h.map"]),
            Some(s("other"))
        );
        assert_eq!(conv_in(&parts, t, "map", s("nope"), &["h.map"]), None);
        assert_eq!(
            conv_in(&parts, t, "map", s("nope"), &["h.map", "be"]),
            Some(s("be"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_str", s("nope"), &["h.map", ""]),
            Some(s(""))
        );
        assert_eq!(
            conv_in(&parts, t, "map_beg", s("/api/x"), &["h.map"]),
            Some(s("api"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_sub", s("a.test.localz"), &["h.map"]),
            Some(s("other"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_end", s("www.test.local"), &["h.map"]),
            Some(s("other"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_dom", s("www.test.local"), &["h.map"]),
            Some(s("other"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_dir", s("/x/api/y"), &["h.map"]),
            Some(s("api"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_reg", s("/api"), &["h.map"]),
            Some(s("api"))
        );
        let ip = Sample::Ipv4("10.1.2.3".parse().unwrap());
        assert_eq!(
            conv_in(&parts, t, "map_ip", ip.clone(), &["n.map"]),
            Some(s("office"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_ip", s("127.0.0.1"), &["n.map"]),
            Some(s("loopback"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_ip", s("8.8.8.8"), &["n.map", "unknown"]),
            Some(s("unknown"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_int", Sample::Int(3), &["i.map"]),
            Some(s("5"))
        );
        assert_eq!(
            conv_in(&parts, t, "map_int_int", Sample::Int(11), &["i.map"]),
            Some(Sample::Int(7))
        );
        assert_eq!(
            conv_in(&parts, t, "map_int_int", Sample::Int(99), &["i.map", "-1"]),
            Some(Sample::Int(-1))
        );
        // Run-time changes through the store are visible.
        parts.maps.set("h.map", "new.host", "fresh").unwrap();
        assert_eq!(
            conv_in(&parts, t, "map", s("new.host"), &["h.map"]),
            Some(s("fresh"))
        );
        let ctx = parts.ctx();
        let e = lookup("map")
            .unwrap()
            .parse_args(&["missing.map".to_string()], ArgEnv::Parse(&ctx))
            .unwrap_err();
        assert!(e.starts_with("cannot open map file '"), "{e}");
        let e = lookup("map_str_int")
            .unwrap()
            .parse_args(&["i.map".to_string(), "x".to_string()], ArgEnv::Parse(&ctx))
            .unwrap_err();
        assert!(e.contains("default value 'x' is not an integer"), "{e}");
    }

    #[test]
    fn variable_converters() {
        let mut t = txn_get("/", &[]);
        assert_eq!(conv(&mut t, "set-var", s("v"), &["txn.a"]), Some(s("v")));
        assert_eq!(t.get_var(&"txn.a".parse().unwrap()), Some(s("v")));
        assert_eq!(conv(&mut t, "unset-var", s("w"), &["txn.a"]), Some(s("w")));
        assert_eq!(t.get_var(&"txn.a".parse().unwrap()), None);
        assert_eq!(
            conv(&mut t, "debug", Sample::Int(1), &[]),
            Some(Sample::Int(1))
        );
    }

    #[test]
    fn argument_errors() {
        assert!(err("field", &["0", ":"]).contains("index must not be 0"));
        assert!(err("field", &["1"]).contains("expects 2 to 3 argument(s), got 1"));
        assert!(err("regsub", &["(", "x"]).contains("invalid regex '('"));
        assert!(err("regsub", &["a", "x", "q"]).contains("unknown flag 'q'"));
        assert!(err("sha2", &["100"]).contains("unsupported number of bits 100"));
        assert!(err("ipmask", &["33"]).contains("invalid IPv4 mask '33'"));
        assert!(err("ipmask", &["24", "::1x"]).contains("invalid IPv6 mask"));
        assert!(err("add", &["nope"]).contains("is neither an integer nor a variable"));
        assert!(err("json", &["latin1"]).contains("unknown input code 'latin1'"));
        assert!(err("ltime", &["%Q%"]).contains("invalid time format"));
        assert!(err("http_date", &["0", "h"]).contains("unknown unit 'h'"));
        assert!(err("concat", &["a", "bad", "c"]).contains("argument 2"));
        assert!(err("lower", &["x"]).contains("expects no arguments"));
    }

    #[test]
    fn call_by_name_converts_arguments() {
        let mut t = txn_get("/", &[]);
        assert_eq!(
            call_by_name("add", &mut t, Sample::Int(1), &[Sample::Int(2)]),
            Some(Sample::Int(3))
        );
        assert_eq!(
            call_by_name("field", &mut t, s("a,b"), &[Sample::Int(2), s(",")]),
            Some(s("b"))
        );
        assert_eq!(call_by_name("nope", &mut t, s("x"), &[]), None);
        assert_eq!(call_by_name("field", &mut t, s("x"), &[]), None);
        assert_eq!(epoch_secs(UNIX_EPOCH + Duration::from_secs(5)), 5);
    }
}
