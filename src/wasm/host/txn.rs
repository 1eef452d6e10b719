//! `moonbox:ext/txn`: the transaction of the invocation being run.
//!
//! Every function acts on the transaction lent to the store for the current
//! call. Without one (init, tasks) reads return nothing and changes fail
//! with a message; `proc.*` variables work everywhere a running proxy is.

use std::str::FromStr;

use bytes::Bytes;
use http::{HeaderName, Method, StatusCode};

use crate::proxy::rules::{replace_header, set_uri_part};
use crate::proxy::txn::{Phase, Reply, Txn, header_value};
use crate::sample::{Sample, Scope, VarName, conv, fetch};
use crate::wasm::bindings::moonbox::ext::txn::Host;
use crate::wasm::bindings::types as wit;
use crate::wasm::host::types::{sample_from_wit, sample_to_wit};
use crate::wasm::instance::Ctx;

const NO_TXN: &str = "no transaction here (init or task)";

impl Ctx {
    fn txn(&mut self) -> Result<&mut Txn, String> {
        self.txn.as_mut().ok_or_else(|| NO_TXN.to_string())
    }

    fn priv_key(&self) -> String {
        format!("wasm:{}", self.ns)
    }
}

fn headers_of(h: Option<&http::HeaderMap>) -> Vec<(String, String)> {
    h.map(|h| {
        h.iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.as_bytes()).ok()
}

fn edit(h: Option<&mut http::HeaderMap>, name: &str, value: Option<&str>, replace: bool) {
    let (Some(h), Some(n)) = (h, header_name(name)) else {
        return;
    };
    if replace {
        h.remove(&n);
    }
    if let Some(v) = value {
        h.append(n, header_value(v));
    }
}

fn rep(h: Option<&mut http::HeaderMap>, name: &str, re: &str, with: &str) -> Result<(), String> {
    let re = regex::Regex::new(re).map_err(|e| format!("bad regex '{re}': {e}"))?;
    if let Some(h) = h {
        replace_header(h, name, &re, with, false);
    }
    Ok(())
}

impl Host for Ctx {
    fn fetch(
        &mut self,
        name: String,
        args: Vec<wit::Sample>,
    ) -> Result<Option<wit::Sample>, String> {
        if fetch::lookup(&name).is_none() {
            return Err(format!("unknown fetch '{name}'"));
        }
        let args: Vec<Sample> = args
            .into_iter()
            .map(sample_from_wit)
            .collect::<Result<_, _>>()?;
        let txn = self.txn()?;
        Ok(fetch::call_by_name(&name, txn, &args).map(sample_to_wit))
    }

    fn convert(
        &mut self,
        name: String,
        input: wit::Sample,
        args: Vec<wit::Sample>,
    ) -> Result<Option<wit::Sample>, String> {
        if conv::lookup(&name).is_none() {
            return Err(format!("unknown converter '{name}'"));
        }
        let input = sample_from_wit(input)?;
        let args: Vec<Sample> = args
            .into_iter()
            .map(sample_from_wit)
            .collect::<Result<_, _>>()?;
        let txn = self.txn()?;
        Ok(conv::call_by_name(&name, txn, input, &args).map(sample_to_wit))
    }

    fn fetch_names(&mut self) -> Vec<String> {
        fetch::FETCHES.iter().map(|f| f.name.to_string()).collect()
    }

    fn converter_names(&mut self) -> Vec<String> {
        conv::CONVERTERS
            .iter()
            .map(|c| c.name.to_string())
            .collect()
    }

    fn get_var(&mut self, name: String) -> Option<wit::Sample> {
        let var = VarName::from_str(&name).ok()?;
        if let Some(t) = self.txn.as_ref() {
            return t.get_var(&var).map(sample_to_wit);
        }
        let world = self.world.as_ref()?;
        (var.scope == Scope::Proc)
            .then(|| world.proc_vars.read().get(&var.name).cloned())
            .flatten()
            .map(sample_to_wit)
    }

    fn set_var(&mut self, name: String, value: wit::Sample) -> Result<(), String> {
        let var = VarName::from_str(&name)?;
        let value = sample_from_wit(value)?;
        if let Some(t) = self.txn.as_mut() {
            t.set_var(&var, value);
            return Ok(());
        }
        match (&self.world, var.scope) {
            (Some(w), Scope::Proc) => {
                w.proc_vars.write().set(&var.name, value);
                Ok(())
            }
            _ => Err(format!("cannot set '{name}': {NO_TXN}")),
        }
    }

    fn unset_var(&mut self, name: String) -> Result<(), String> {
        let var = VarName::from_str(&name)?;
        if let Some(t) = self.txn.as_mut() {
            t.unset_var(&var);
            return Ok(());
        }
        match (&self.world, var.scope) {
            (Some(w), Scope::Proc) => {
                w.proc_vars.write().unset(&var.name);
                Ok(())
            }
            _ => Err(format!("cannot unset '{name}': {NO_TXN}")),
        }
    }

    fn get_priv(&mut self) -> Option<Vec<u8>> {
        let key = self.priv_key();
        let t = self.txn.as_ref()?;
        t.privs.get(&key)?.downcast_ref::<Vec<u8>>().cloned()
    }

    fn set_priv(&mut self, data: Option<Vec<u8>>) {
        let key = self.priv_key();
        if let Some(t) = self.txn.as_mut() {
            match data {
                Some(d) => {
                    t.privs.insert(key, Box::new(d));
                }
                None => {
                    t.privs.remove(&key);
                }
            }
        }
    }

    fn id(&mut self) -> u64 {
        self.txn.as_ref().map_or(0, |t| t.id)
    }

    fn is_http(&mut self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.req.is_some())
    }

    fn req_headers(&mut self) -> Vec<(String, String)> {
        headers_of(
            self.txn
                .as_ref()
                .and_then(|t| t.req.as_ref())
                .map(|r| &r.headers),
        )
    }

    fn res_headers(&mut self) -> Vec<(String, String)> {
        headers_of(
            self.txn
                .as_ref()
                .and_then(|t| t.res.as_ref())
                .map(|r| &r.headers),
        )
    }

    fn req_add_header(&mut self, name: String, value: String) {
        let h = self.txn.as_mut().and_then(|t| t.req_headers_mut());
        edit(h, &name, Some(&value), false);
    }

    fn req_set_header(&mut self, name: String, value: String) {
        let h = self.txn.as_mut().and_then(|t| t.req_headers_mut());
        edit(h, &name, Some(&value), true);
    }

    fn req_del_header(&mut self, name: String) {
        let h = self.txn.as_mut().and_then(|t| t.req_headers_mut());
        edit(h, &name, None, true);
    }

    fn res_add_header(&mut self, name: String, value: String) {
        let h = self.txn.as_mut().and_then(|t| t.res_headers_mut());
        edit(h, &name, Some(&value), false);
    }

    fn res_set_header(&mut self, name: String, value: String) {
        let h = self.txn.as_mut().and_then(|t| t.res_headers_mut());
        edit(h, &name, Some(&value), true);
    }

    fn res_del_header(&mut self, name: String) {
        let h = self.txn.as_mut().and_then(|t| t.res_headers_mut());
        edit(h, &name, None, true);
    }

    fn req_rep_header(
        &mut self,
        name: String,
        regex: String,
        replace: String,
    ) -> Result<(), String> {
        let h = self.txn.as_mut().and_then(|t| t.req_headers_mut());
        rep(h, &name, &regex, &replace)
    }

    fn res_rep_header(
        &mut self,
        name: String,
        regex: String,
        replace: String,
    ) -> Result<(), String> {
        let h = self.txn.as_mut().and_then(|t| t.res_headers_mut());
        rep(h, &name, &regex, &replace)
    }

    fn req_method(&mut self) -> String {
        let req = self.txn.as_ref().and_then(|t| t.req.as_ref());
        req.map(|r| r.method.to_string()).unwrap_or_default()
    }

    fn req_path(&mut self) -> String {
        let req = self.txn.as_ref().and_then(|t| t.req.as_ref());
        req.map(|r| r.uri.path().to_string()).unwrap_or_default()
    }

    fn req_query(&mut self) -> Option<String> {
        let req = self.txn.as_ref().and_then(|t| t.req.as_ref());
        req.and_then(|r| r.uri.query().map(str::to_string))
    }

    fn req_uri(&mut self) -> String {
        let req = self.txn.as_ref().and_then(|t| t.req.as_ref());
        req.map(|r| r.uri.to_string()).unwrap_or_default()
    }

    fn req_version(&mut self) -> String {
        let req = self.txn.as_ref().and_then(|t| t.req.as_ref());
        req.map(|r| crate::sample::fetch::version_str(r.version))
            .unwrap_or_default()
            .to_string()
    }

    fn req_set_method(&mut self, method: String) -> Result<(), String> {
        let m = Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("invalid method '{method}'"))?;
        let req = self.txn()?.req.as_mut().ok_or("not an HTTP transaction")?;
        req.method = m;
        Ok(())
    }

    fn req_set_path(&mut self, path: String) -> Result<(), String> {
        check_uri_text(&path)?;
        set_uri_part(self.txn()?, |old| {
            let q = old.query().map(|q| format!("?{q}")).unwrap_or_default();
            format!("{path}{q}")
        });
        Ok(())
    }

    fn req_set_query(&mut self, query: String) -> Result<(), String> {
        check_uri_text(&query)?;
        set_uri_part(self.txn()?, |old| {
            if query.is_empty() {
                old.path().to_string()
            } else {
                format!("{}?{}", old.path(), query.trim_start_matches('?'))
            }
        });
        Ok(())
    }

    fn req_set_uri(&mut self, uri: String) -> Result<(), String> {
        uri.parse::<http::Uri>()
            .map_err(|e| format!("invalid URI '{uri}': {e}"))?;
        set_uri_part(self.txn()?, |_| uri);
        Ok(())
    }

    fn res_status(&mut self) -> Option<u16> {
        self.txn.as_ref()?.res_status().map(|s| s.as_u16())
    }

    fn res_set_status(&mut self, status: u16, _reason: Option<String>) -> Result<(), String> {
        let s = StatusCode::from_u16(status).map_err(|_| format!("invalid status {status}"))?;
        let res = self.txn()?.res.as_mut().ok_or("no response yet")?;
        res.status = s;
        Ok(())
    }

    fn done(&mut self, reply: Option<wit::Reply>) {
        if let Some(t) = self.txn.as_mut() {
            if let Some(r) = reply {
                t.reply = Some(Reply {
                    status: r.status,
                    reason: r.reason,
                    headers: r.headers,
                    body: Bytes::from(r.body),
                    local: true,
                });
            }
            t.done = true;
        }
    }

    fn channel_data(&mut self, response: bool) -> Vec<u8> {
        match self.tcp_txn() {
            Ok(t) if analysing(t, response) => t.payload.to_vec(),
            _ => Vec::new(),
        }
    }

    fn channel_set(&mut self, response: bool, data: Vec<u8>) -> Result<(), String> {
        let t = self.tcp_txn()?;
        if !analysing(t, response) {
            return Err(format!(
                "the {} channel is not being analysed here",
                if response { "response" } else { "request" }
            ));
        }
        t.payload = Bytes::from(data);
        Ok(())
    }

    fn channel_send(&mut self, response: bool, data: Vec<u8>) -> Result<(), String> {
        let t = self.tcp_txn()?;
        if response {
            t.to_client.extend_from_slice(&data);
        } else {
            t.to_server.extend_from_slice(&data);
        }
        Ok(())
    }
}

impl Ctx {
    /// The transaction, when it is in TCP mode: channels hold raw bytes
    /// only there, as in HAProxy.
    fn tcp_txn(&mut self) -> Result<&mut Txn, String> {
        let t = self.txn()?;
        if t.req.is_some() {
            return Err("channel data cannot be used in HTTP mode".into());
        }
        Ok(t)
    }
}

/// Whether `response` names the channel whose rules run now.
fn analysing(t: &Txn, response: bool) -> bool {
    match t.phase {
        Phase::Request | Phase::Connection => !response,
        Phase::Response => response,
    }
}

fn check_uri_text(s: &str) -> Result<(), String> {
    if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("'{s}' contains spaces or control characters"));
    }
    Ok(())
}
