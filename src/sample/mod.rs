//! Samples: HAProxy's typed values, variables, the fetch and converter
//! registries and the `%[...]` expression language.
//!
//! This module owns what a sample *is* and how expressions over samples are
//! parsed and evaluated. It reads the transaction (`crate::proxy::txn::Txn`)
//! but never changes the HTTP message; actions do that.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The type of a sample, as HAProxy names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SampleType {
    /// Any type; used in fetch/converter definitions for "whatever comes".
    Any,
    Bool,
    Int,
    Str,
    Bin,
    Ipv4,
    Ipv6,
    /// An IPv4 or IPv6 address.
    Addr,
    Meth,
}

impl SampleType {
    pub fn name(self) -> &'static str {
        match self {
            SampleType::Any => "any",
            SampleType::Bool => "bool",
            SampleType::Int => "sint",
            SampleType::Str => "str",
            SampleType::Bin => "bin",
            SampleType::Ipv4 => "ipv4",
            SampleType::Ipv6 => "ipv6",
            SampleType::Addr => "addr",
            SampleType::Meth => "meth",
        }
    }
}

/// A typed value produced by a fetch or a converter.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    Bool(bool),
    Int(i64),
    Str(String),
    Bin(Vec<u8>),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// An HTTP method, kept as its text (`GET`, `PURGE`, ...).
    Method(String),
}

impl Sample {
    pub fn kind(&self) -> SampleType {
        match self {
            Sample::Bool(_) => SampleType::Bool,
            Sample::Int(_) => SampleType::Int,
            Sample::Str(_) => SampleType::Str,
            Sample::Bin(_) => SampleType::Bin,
            Sample::Ipv4(_) => SampleType::Ipv4,
            Sample::Ipv6(_) => SampleType::Ipv6,
            Sample::Method(_) => SampleType::Meth,
        }
    }

    pub fn str(s: impl Into<String>) -> Sample {
        Sample::Str(s.into())
    }

    pub fn ip(ip: IpAddr) -> Sample {
        match ip {
            IpAddr::V4(a) => Sample::Ipv4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Sample::Ipv4(v4),
                None => Sample::Ipv6(a),
            },
        }
    }

    /// The string form HAProxy gives a sample when a string is needed
    /// (log-format, header values, `str` casts). Binary is taken as-is
    /// (lossy UTF-8), booleans are `0`/`1`.
    pub fn to_str(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Sample::Bool(b) => Cow::Borrowed(if *b { "1" } else { "0" }),
            Sample::Int(i) => Cow::Owned(i.to_string()),
            Sample::Str(s) => Cow::Borrowed(s.as_str()),
            Sample::Bin(b) => String::from_utf8_lossy(b),
            Sample::Ipv4(a) => Cow::Owned(a.to_string()),
            Sample::Ipv6(a) => Cow::Owned(a.to_string()),
            Sample::Method(m) => Cow::Borrowed(m.as_str()),
        }
    }

    /// Bytes of the sample (string form for non-binary types).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Sample::Bin(b) => b.clone(),
            other => other.to_str().as_bytes().to_vec(),
        }
    }

    /// Cast to an integer as HAProxy does (`str` is parsed as a leading
    /// decimal, bool is 0/1); `None` where no cast exists.
    pub fn to_int(&self) -> Option<i64> {
        match self {
            Sample::Bool(b) => Some(*b as i64),
            Sample::Int(i) => Some(*i),
            Sample::Str(s) => parse_leading_int(s),
            Sample::Bin(b) => parse_leading_int(&String::from_utf8_lossy(b)),
            Sample::Ipv4(a) => Some(u32::from(*a) as i64),
            Sample::Ipv6(_) | Sample::Method(_) => None,
        }
    }

    /// Cast to a boolean as HAProxy does: non-zero ints, non-empty strings.
    pub fn to_bool(&self) -> bool {
        match self {
            Sample::Bool(b) => *b,
            Sample::Int(i) => *i != 0,
            Sample::Str(s) => match parse_leading_int(s) {
                Some(i) => i != 0,
                None => !s.is_empty(),
            },
            Sample::Bin(b) => !b.is_empty(),
            Sample::Ipv4(_) | Sample::Ipv6(_) | Sample::Method(_) => true,
        }
    }

    /// Cast to an IP address, parsing strings.
    pub fn to_ip(&self) -> Option<IpAddr> {
        match self {
            Sample::Ipv4(a) => Some(IpAddr::V4(*a)),
            Sample::Ipv6(a) => Some(IpAddr::V6(*a)),
            Sample::Str(s) => s.trim().parse().ok(),
            Sample::Int(i) => u32::try_from(*i)
                .ok()
                .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            _ => None,
        }
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_str())
    }
}

/// Parses an optional sign and leading decimal digits, as `strtoll` would.
pub fn parse_leading_int(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = digits
        .as_bytes()
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let v: i64 = digits[..end].parse().ok()?;
    Some(if neg { -v } else { v })
}

pub mod vars;
pub use vars::{Scope, VarName, Vars};
pub mod conv;
pub mod expr;
pub mod fetch;
pub mod logformat;
pub mod map;
#[cfg(test)]
pub(crate) mod testutil;

/// What parsing an expression needs to resolve names and load files.
pub struct ParseCtx<'a> {
    /// Extension fetches and converters (`lua.x`, `NS.y`).
    pub ext: &'a crate::ext::Registry,
    /// Map files, loaded once and shared.
    pub maps: &'a std::sync::Arc<map::MapStore>,
    /// Folder of the configuration file, for relative paths.
    pub base_dir: &'a std::path::Path,
}
