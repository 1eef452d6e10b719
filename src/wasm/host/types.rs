//! `moonbox:ext/types`: conversions between WIT values and the proxy's.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ext::{Facility, Registration, ServiceMode, Verdict};
use crate::sample::Sample;
use crate::wasm::bindings::types as wit;
use crate::wasm::instance::Ctx;

impl wit::Host for Ctx {}

pub fn sample_to_wit(s: Sample) -> wit::Sample {
    match s {
        Sample::Bool(b) => wit::Sample::Boolean(b),
        Sample::Int(i) => wit::Sample::Sint(i),
        Sample::Str(s) => wit::Sample::Str(s),
        Sample::Bin(b) => wit::Sample::Bin(b),
        Sample::Ipv4(a) => wit::Sample::Ipv4(a.octets().to_vec()),
        Sample::Ipv6(a) => wit::Sample::Ipv6(a.octets().to_vec()),
        Sample::Method(m) => wit::Sample::Meth(m),
    }
}

/// A guest's sample; addresses of the wrong length are refused.
pub fn sample_from_wit(s: wit::Sample) -> Result<Sample, String> {
    Ok(match s {
        wit::Sample::Boolean(b) => Sample::Bool(b),
        wit::Sample::Sint(i) => Sample::Int(i),
        wit::Sample::Str(s) => Sample::Str(s),
        wit::Sample::Bin(b) => Sample::Bin(b),
        wit::Sample::Ipv4(b) => {
            let a: [u8; 4] = b
                .try_into()
                .map_err(|_| "an ipv4 sample has 4 bytes".to_string())?;
            Sample::Ipv4(Ipv4Addr::from(a))
        }
        wit::Sample::Ipv6(b) => {
            let a: [u8; 16] = b
                .try_into()
                .map_err(|_| "an ipv6 sample has 16 bytes".to_string())?;
            Sample::Ipv6(Ipv6Addr::from(a))
        }
        wit::Sample::Meth(m) => Sample::Method(m),
    })
}

pub fn facility_to_wit(f: Facility) -> wit::Facility {
    match f {
        Facility::TcpReq => wit::Facility::TcpReq,
        Facility::TcpRes => wit::Facility::TcpRes,
        Facility::HttpReq => wit::Facility::HttpReq,
        Facility::HttpRes => wit::Facility::HttpRes,
        Facility::HttpAfterRes => wit::Facility::HttpAfterRes,
    }
}

fn facility_from_wit(f: wit::Facility) -> Facility {
    match f {
        wit::Facility::TcpReq => Facility::TcpReq,
        wit::Facility::TcpRes => Facility::TcpRes,
        wit::Facility::HttpReq => Facility::HttpReq,
        wit::Facility::HttpRes => Facility::HttpRes,
        wit::Facility::HttpAfterRes => Facility::HttpAfterRes,
    }
}

pub fn verdict_from_wit(v: wit::Verdict) -> Verdict {
    match v {
        wit::Verdict::Continue => Verdict::Continue,
        wit::Verdict::Stop => Verdict::Stop,
        wit::Verdict::Done => Verdict::Done,
        wit::Verdict::Deny => Verdict::Deny,
        wit::Verdict::Error => Verdict::Error,
        wit::Verdict::Abort => Verdict::Abort,
        wit::Verdict::Invalid => Verdict::Invalid,
    }
}

/// A guest's registrations, checked: names must be usable in a config.
pub fn registrations_from_wit(regs: Vec<wit::Registration>) -> Result<Vec<Registration>, String> {
    let check = |name: &str| -> Result<(), String> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "registered name '{name}' is not usable in a configuration (letters, digits, '_', '-', '.')"
            ))
        }
    };
    regs.into_iter()
        .map(|r| {
            Ok(match r {
                wit::Registration::Fetch(name) => {
                    check(&name)?;
                    Registration::Fetch { name }
                }
                wit::Registration::Converter(name) => {
                    check(&name)?;
                    Registration::Converter { name }
                }
                wit::Registration::Action(a) => {
                    check(&a.name)?;
                    if a.facilities.is_empty() {
                        return Err(format!("action '{}' names no facility", a.name));
                    }
                    Registration::Action {
                        name: a.name,
                        facilities: a.facilities.into_iter().map(facility_from_wit).collect(),
                        nargs: a.nargs,
                    }
                }
                wit::Registration::Service(s) => {
                    check(&s.name)?;
                    Registration::Service {
                        name: s.name,
                        mode: match s.mode {
                            wit::ServiceMode::Http => ServiceMode::Http,
                            wit::ServiceMode::Tcp => ServiceMode::Tcp,
                        },
                    }
                }
                wit::Registration::Task(name) => {
                    check(&name)?;
                    Registration::Task { name }
                }
                wit::Registration::Init(name) => {
                    check(&name)?;
                    Registration::Init { name }
                }
            })
        })
        .collect()
}
