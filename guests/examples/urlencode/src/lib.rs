//! A converter that URL-encodes its input as a form value: spaces become
//! `+`, reserved bytes `%XX` (the seed's `urlencode.lua`).
use moonbox_sdk::prelude::*;

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn init(ext: &mut Registrar, _args: &[String]) -> Result<(), String> {
    ext.converter("urlencode", |_txn, input, _args| {
        Ok(Some(Sample::from(urlencode(&input.to_str()))))
    });
    Ok(())
}

moonbox_sdk::export!(init);
