//! Lua 5.4 with HAProxy's Lua API, as a moonbox extension.
//!
//! `init` receives what the configuration says (`lua-load` files and their
//! arguments, `lua-prepend-path`, `setenv`, `tune.lua.*`), creates one Lua
//! state, installs the HAProxy API (primitives here, the rest in
//! `lua/haproxy.lua`) and runs the files. What they register with
//! `core.register_*` becomes the extension's registrations. Actions,
//! services and tasks run as coroutines: a wait (socket, sleep, applet I/O)
//! yields the coroutine, the host performs it, and other invocations use the
//! state meanwhile, as in HAProxy.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mlua::{
    Function, HookTriggers, IntoLua, Lua, LuaOptions, MultiValue, StdLib, Table, Value, Variadic,
    VmState,
};
use moonbox_sdk::bindings::moonbox::ext as host;
use moonbox_sdk::prelude::*;
use moonbox_sdk::raw::{self, Io, IoResult};

/// The HAProxy API written in Lua, over the primitives of `__mb`.
const HAPROXY_LUA: &str = include_str!("../../../lua/haproxy.lua");

/// The marker error of `txn:done()`, which ends the action at once.
const DONE_MARKER: &str = "\u{1}moonbox:done";
/// The marker error of `core.done()`, which returns to the caller at once.
const CORE_DONE_MARKER: &str = "\u{1}moonbox:core-done";

/// What the configuration gives the Lua state.
#[derive(Default, Debug)]
struct Setup {
    /// `lua-load FILE ARGS...`, in order.
    loads: Vec<(String, Vec<String>)>,
    /// `lua-prepend-path PATH [path|cpath]`.
    paths: Vec<String>,
    /// `tune.lua.*`.
    forced_yield: u32,
    session_timeout: Duration,
    service_timeout: Duration,
    task_timeout: Duration,
    burst_timeout: Duration,
    maxmem: usize,
    /// `core.thread`: 0 for the shared state, 1..n per thread.
    thread: u32,
    /// The proxy's worker threads (`core.get_info().Nbthread`).
    nbthread: u32,
    /// Whether `core.httpclient()` verifies server certificates.
    httpclient_verify: bool,
    bool_normal: bool,
}

impl Setup {
    /// Arguments are `key=value` words; `arg=` words belong to the last
    /// `load=`.
    fn parse(args: &[String]) -> Result<Setup, String> {
        let mut s = Setup {
            forced_yield: 10_000,
            session_timeout: Duration::from_secs(4),
            service_timeout: Duration::from_secs(4),
            task_timeout: Duration::from_secs(4),
            burst_timeout: Duration::from_secs(1),
            maxmem: 0,
            httpclient_verify: true,
            ..Setup::default()
        };
        let ms = |v: &str| -> Result<Duration, String> {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("bad milliseconds '{v}'"))
        };
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| format!("bad argument '{a}'"))?;
            match k {
                "load" => s.loads.push((v.to_string(), Vec::new())),
                "arg" => match s.loads.last_mut() {
                    Some(l) => l.1.push(v.to_string()),
                    None => return Err("'arg' before any 'load'".into()),
                },
                "path" => s.paths.push(v.to_string()),
                "forced-yield" => {
                    s.forced_yield = v.parse().map_err(|_| format!("bad number '{v}'"))?
                }
                "session-timeout" => s.session_timeout = ms(v)?,
                "service-timeout" => s.service_timeout = ms(v)?,
                "task-timeout" => s.task_timeout = ms(v)?,
                "burst-timeout" => s.burst_timeout = ms(v)?,
                "maxmem" => s.maxmem = v.parse().map_err(|_| format!("bad size '{v}'"))?,
                "thread" => s.thread = v.parse().map_err(|_| format!("bad thread '{v}'"))?,
                "nbthread" => s.nbthread = v.parse().map_err(|_| format!("bad nbthread '{v}'"))?,
                "httpclient-verify" => s.httpclient_verify = v != "none",
                "bool-sample-conversion" => s.bool_normal = v == "normal",
                other => return Err(format!("unknown setting '{other}'")),
            }
        }
        Ok(s)
    }
}

/// A name registered by a script.
enum Reg {
    Fetch(String, Function),
    Converter(String, Function),
    Action(String, Vec<Facility>, u32, Function),
    Service(String, bool, Function),
    Task(String, Function),
}

thread_local! {
    static REGS: RefCell<Vec<Reg>> = const { RefCell::new(Vec::new()) };
    /// When the Lua code running now must stop (runaway protection).
    static DEADLINE: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
    /// Whether the code running now is a coroutine that may yield (actions,
    /// services, tasks), so that forced yields apply.
    static YIELDABLE: Cell<bool> = const { Cell::new(false) };
    /// The Lua state, alive as long as the instance.
    static STATE: RefCell<Option<Lua>> = const { RefCell::new(None) };
    /// The requests of the HTTP services running, by a number the script
    /// gets, until it reads one (`mb.applet_request`). Most services read
    /// few of the request's fields, and every string handed to Lua costs a
    /// protected call: the applet's fields are made when first read.
    static REQUESTS: RefCell<Vec<(u64, HttpApplet)>> = const { RefCell::new(Vec::new()) };
    static NEXT_REQUEST: Cell<u64> = const { Cell::new(0) };
    /// Whether the code running now is loading (io allowed).
    static LOADING: Cell<bool> = const { Cell::new(false) };
    /// `tune.lua.bool-sample-conversion normal`: boolean samples reach Lua
    /// as booleans, not as HAProxy's historic 0 and 1.
    static BOOL_NORMAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs a coroutine's future under HAProxy's timeouts: `limit` counts
/// Lua's own running time over all its polls, not the time spent waiting
/// (session, service and task timeouts), and forced yields apply.
struct Limited<F> {
    fut: Pin<Box<F>>,
    limit: Duration,
    used: Duration,
}

impl<F: Future> Future for Limited<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = Instant::now();
        let left = self.limit.saturating_sub(self.used);
        let before = DEADLINE.replace(Some((start + left, self.limit)));
        let yieldable = YIELDABLE.replace(true);
        let out = self.fut.as_mut().poll(cx);
        YIELDABLE.set(yieldable);
        DEADLINE.set(before);
        self.used += start.elapsed();
        out
    }
}

fn limited<F: Future>(limit: Duration, fut: F) -> Limited<F> {
    Limited {
        fut: Box::pin(fut),
        limit,
        used: Duration::ZERO,
    }
}

fn lua_err(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(msg.into())
}

/// The first line of a Lua error, as HAProxy logs it.
fn describe(e: &mlua::Error) -> String {
    let s = match e {
        mlua::Error::CallbackError { cause, .. } => return describe(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => m.clone(),
        other => other.to_string(),
    };
    s.lines().next().unwrap_or_default().to_string()
}

fn has_marker(e: &mlua::Error, marker: &str) -> bool {
    match e {
        mlua::Error::CallbackError { cause, .. } => has_marker(cause, marker),
        mlua::Error::RuntimeError(m) => m.contains(marker),
        _ => e.to_string().contains(marker),
    }
}

fn is_done(e: &mlua::Error) -> bool {
    has_marker(e, DONE_MARKER)
}

/// `core.done()`: the function returned early; not an error.
fn is_core_done(e: &mlua::Error) -> bool {
    has_marker(e, CORE_DONE_MARKER)
}

fn sample_to_lua(lua: &Lua, s: Sample) -> mlua::Result<Value> {
    Ok(match s {
        Sample::Boolean(b) if BOOL_NORMAL.get() => Value::Boolean(b),
        Sample::Boolean(b) => Value::Integer(i64::from(b)),
        Sample::Sint(i) => Value::Integer(i),
        Sample::Str(s) | Sample::Meth(s) => Value::String(lua.create_string(&s)?),
        Sample::Bin(b) => Value::String(lua.create_string(&b)?),
        other @ (Sample::Ipv4(_) | Sample::Ipv6(_)) => {
            Value::String(lua.create_string(other.to_str())?)
        }
    })
}

/// What a fetch or converter returns, or a variable is set to, as HAProxy
/// converts it (`hlua_lua2smp`): nil, tables and functions are boolean
/// false.
fn lua_to_sample_or_false(v: &Value) -> Sample {
    lua_to_sample(v).unwrap_or(Sample::Boolean(false))
}

fn lua_to_sample(v: &Value) -> Option<Sample> {
    match v {
        Value::Nil => None,
        Value::Boolean(b) => Some(Sample::Boolean(*b)),
        Value::Integer(i) => Some(Sample::Sint(*i)),
        Value::Number(n) if n.fract() == 0.0 && n.is_finite() => Some(Sample::Sint(*n as i64)),
        Value::Number(n) => Some(Sample::Str(n.to_string())),
        Value::String(s) => Some(match s.to_str() {
            Ok(t) => Sample::Str(t.to_string()),
            Err(_) => Sample::Bin(s.as_bytes().to_vec()),
        }),
        _ => None,
    }
}

fn facility(name: &str) -> Option<Facility> {
    Some(match name {
        "http-req" => Facility::HttpReq,
        "http-res" => Facility::HttpRes,
        "tcp-req" => Facility::TcpReq,
        "tcp-res" => Facility::TcpRes,
        "http-after-res" => Facility::HttpAfterRes,
        _ => return None,
    })
}

fn verdict(v: &Value) -> Verdict {
    match v {
        Value::Integer(1) => Verdict::Stop,
        Value::Integer(3) => Verdict::Error,
        Value::Integer(4) => Verdict::Done,
        Value::Integer(5) => Verdict::Deny,
        Value::Integer(6) => Verdict::Abort,
        Value::Integer(7) => Verdict::Invalid,
        _ => Verdict::Continue,
    }
}

fn io_err(e: &moonbox_sdk::IoError) -> String {
    use moonbox_sdk::IoErrorKind as K;
    match e.kind {
        K::Timeout => "timeout".into(),
        K::Closed => "closed".into(),
        K::Refused => "connection refused".into(),
        _ => e.message.clone(),
    }
}

/// Installs the primitives the Lua layer builds the HAProxy API on.
fn primitives(lua: &Lua) -> mlua::Result<Table> {
    let mb = lua.create_table()?;

    // Registration (body context).
    mb.set(
        "register",
        lua.create_function(|_, (kind, name, f, extra, nargs): (String, String, Function, Value, Option<u32>)| {
            let reg = match kind.as_str() {
                "fetch" => Reg::Fetch(name, f),
                "converter" => Reg::Converter(name, f),
                "action" => {
                    let mut facs = Vec::new();
                    if let Value::Table(t) = extra {
                        for v in t.sequence_values::<String>() {
                            let v = v?;
                            facs.push(facility(&v).ok_or_else(|| {
                                lua_err(format!("register_action: unknown action type '{v}', expected http-req, http-res, tcp-req, tcp-res or http-after-res"))
                            })?);
                        }
                    }
                    if facs.is_empty() {
                        return Err(lua_err("register_action: no action type given"));
                    }
                    Reg::Action(name, facs, nargs.unwrap_or(0), f)
                }
                "service" => {
                    let mode = match &extra {
                        Value::String(s) => s.to_str()?.to_string(),
                        _ => String::new(),
                    };
                    let http = match mode.as_str() {
                        "http" => true,
                        "tcp" => false,
                        m => return Err(lua_err(format!("register_service: mode '{m}', expected 'http' or 'tcp'"))),
                    };
                    Reg::Service(name, http, f)
                }
                "task" => Reg::Task(name, f),
                k => return Err(lua_err(format!("unknown registration kind '{k}'"))),
            };
            REGS.with(|r| r.borrow_mut().push(reg));
            Ok(())
        })?,
    )?;
    mb.set("loading", lua.create_function(|_, ()| Ok(LOADING.get()))?)?;
    mb.set(
        "read_file",
        lua.create_function(|lua, path: String| match host::files::read(&path) {
            Ok(b) => Ok((Value::String(lua.create_string(&b)?), None)),
            Err(e) => Ok((Value::Nil, Some(e))),
        })?,
    )?;

    // Logging and time.
    mb.set(
        "log",
        lua.create_function(|_, (level, msg): (i64, String)| {
            let level = match level {
                0 => Level::Emerg,
                1 => Level::Alert,
                2 => Level::Crit,
                3 => Level::Err,
                4 => Level::Warning,
                5 => Level::Notice,
                6 => Level::Info,
                _ => Level::Debug,
            };
            host::log::log(level, &msg);
            Ok(())
        })?,
    )?;
    mb.set(
        "now",
        lua.create_function(|_, ()| {
            let (s, us) = host::clock::now();
            Ok((s, us))
        })?,
    )?;
    mb.set(
        "monotonic_ms",
        lua.create_function(|_, ()| Ok(host::clock::monotonic_ms()))?,
    )?;

    // Fetches and converters by name.
    mb.set(
        "fetch",
        lua.create_function(|lua, (name, args): (String, Variadic<Value>)| {
            let args: Vec<Sample> = args.iter().filter_map(lua_to_sample).collect();
            match host::txn::fetch(&name, &args) {
                Ok(Some(s)) => sample_to_lua(lua, s),
                Ok(None) => Ok(Value::Nil),
                Err(e) => Err(lua_err(e)),
            }
        })?,
    )?;
    mb.set(
        "convert",
        lua.create_function(
            |lua, (name, input, args): (String, Value, Variadic<Value>)| {
                let Some(input) = lua_to_sample(&input) else {
                    return Ok(Value::Nil);
                };
                let args: Vec<Sample> = args.iter().filter_map(lua_to_sample).collect();
                match host::txn::convert(&name, &input, &args) {
                    Ok(Some(s)) => sample_to_lua(lua, s),
                    Ok(None) => Ok(Value::Nil),
                    Err(e) => Err(lua_err(e)),
                }
            },
        )?,
    )?;
    mb.set(
        "fetch_names",
        lua.create_function(|_, ()| Ok(host::txn::fetch_names()))?,
    )?;
    mb.set(
        "converter_names",
        lua.create_function(|_, ()| Ok(host::txn::converter_names()))?,
    )?;

    // Variables.
    mb.set(
        "get_var",
        lua.create_function(|lua, name: String| match host::txn::get_var(&name) {
            Some(s) => sample_to_lua(lua, s),
            None => Ok(Value::Nil),
        })?,
    )?;
    mb.set(
        "set_var",
        lua.create_function(|_, (name, v): (String, Value)| {
            host::txn::set_var(&name, &lua_to_sample_or_false(&v)).map_err(lua_err)
        })?,
    )?;
    mb.set(
        "unset_var",
        lua.create_function(|_, name: String| host::txn::unset_var(&name).map_err(lua_err))?,
    )?;
    mb.set("txn_id", lua.create_function(|_, ()| Ok(host::txn::id()))?)?;
    mb.set(
        "is_http",
        lua.create_function(|_, ()| Ok(host::txn::is_http()))?,
    )?;

    // Channels (TCP mode).
    mb.set(
        "channel_data",
        lua.create_function(|lua, res: bool| lua.create_string(host::txn::channel_data(res)))?,
    )?;
    mb.set(
        "channel_set",
        lua.create_function(|_, (res, data): (bool, mlua::LuaString)| {
            host::txn::channel_set(res, &data.as_bytes()).map_err(lua_err)
        })?,
    )?;
    mb.set(
        "channel_send",
        lua.create_function(|_, (res, data): (bool, mlua::LuaString)| {
            host::txn::channel_send(res, &data.as_bytes()).map_err(lua_err)
        })?,
    )?;

    // The HTTP message.
    let headers = |lua: &Lua, h: Vec<(String, String)>| -> mlua::Result<Table> {
        let t = lua.create_table()?;
        for (i, (n, v)) in h.into_iter().enumerate() {
            let pair = lua.create_table()?;
            pair.raw_set(1, n)?;
            pair.raw_set(2, v)?;
            t.raw_set(i + 1, pair)?;
        }
        Ok(t)
    };
    mb.set(
        "req_headers",
        lua.create_function(move |lua, ()| headers(lua, host::txn::req_headers()))?,
    )?;
    mb.set(
        "res_headers",
        lua.create_function(move |lua, ()| headers(lua, host::txn::res_headers()))?,
    )?;
    mb.set(
        "edit_header",
        lua.create_function(
            |_, (res, op, name, value): (bool, String, String, Option<String>)| {
                let v = value.unwrap_or_default();
                match (res, op.as_str()) {
                    (false, "add") => host::txn::req_add_header(&name, &v),
                    (false, "set") => host::txn::req_set_header(&name, &v),
                    (false, "del") => host::txn::req_del_header(&name),
                    (true, "add") => host::txn::res_add_header(&name, &v),
                    (true, "set") => host::txn::res_set_header(&name, &v),
                    (true, "del") => host::txn::res_del_header(&name),
                    _ => return Err(lua_err(format!("unknown header operation '{op}'"))),
                }
                Ok(())
            },
        )?,
    )?;
    mb.set(
        "rep_header",
        lua.create_function(|_, (res, name, re, rep): (bool, String, String, String)| {
            let r = if res {
                host::txn::res_rep_header(&name, &re, &rep)
            } else {
                host::txn::req_rep_header(&name, &re, &rep)
            };
            r.map_err(lua_err)
        })?,
    )?;
    mb.set(
        "req_line",
        lua.create_function(|_, ()| {
            Ok((
                host::txn::req_method(),
                host::txn::req_path(),
                host::txn::req_query(),
                host::txn::req_uri(),
                host::txn::req_version(),
            ))
        })?,
    )?;
    mb.set(
        "set_req_line",
        lua.create_function(|_, (what, v): (String, String)| {
            match what.as_str() {
                "method" => host::txn::req_set_method(&v),
                "path" => host::txn::req_set_path(&v),
                "query" => host::txn::req_set_query(&v),
                "uri" => host::txn::req_set_uri(&v),
                w => Err(format!("unknown request line part '{w}'")),
            }
            .map_err(lua_err)
        })?,
    )?;
    mb.set(
        "status",
        lua.create_function(|_, ()| Ok(host::txn::res_status()))?,
    )?;
    mb.set(
        "set_status",
        lua.create_function(|_, (code, reason): (u16, Option<String>)| {
            host::txn::res_set_status(code, reason.as_deref()).map_err(lua_err)
        })?,
    )?;
    mb.set(
        "done",
        lua.create_function(|_, reply: Option<Table>| {
            let reply = match reply {
                None => None,
                Some(t) => {
                    let mut hs = Vec::new();
                    if let Ok(h) = t.get::<Table>("headers") {
                        for pair in h.pairs::<String, Value>() {
                            let (n, v) = pair?;
                            match v {
                                Value::Table(vs) => {
                                    for v in vs.sequence_values::<String>() {
                                        hs.push((n.clone(), v?));
                                    }
                                }
                                Value::String(s) => hs.push((n, s.to_str()?.to_string())),
                                _ => {}
                            }
                        }
                    }
                    Some(Reply {
                        status: t.get::<Option<u16>>("status")?.unwrap_or(200),
                        reason: t.get("reason")?,
                        headers: hs,
                        body: t
                            .get::<Option<mlua::LuaString>>("body")?
                            .map(|b| b.as_bytes().to_vec())
                            .unwrap_or_default(),
                    })
                }
            };
            host::txn::done(reply.as_ref());
            Err::<(), _>(lua_err(DONE_MARKER))
        })?,
    )?;

    // Proxies and maps.
    mb.set(
        "proxies",
        lua.create_function(|lua, ()| {
            let out = lua.create_table()?;
            for p in host::proxies::list_proxies() {
                let t = lua.create_table()?;
                t.set("name", p.name.clone())?;
                t.set("uuid", p.uuid)?;
                t.set("frontend", p.frontend)?;
                t.set("backend", p.backend)?;
                t.set("mode", p.mode)?;
                let servers = lua.create_table()?;
                for s in p.servers {
                    let st = lua.create_table()?;
                    st.set("name", s.name.clone())?;
                    st.set("addr", s.addr)?;
                    st.set("status", s.status)?;
                    st.set("weight", s.weight)?;
                    st.set("backup", s.backup)?;
                    st.set("puid", s.puid)?;
                    servers.push(st)?;
                }
                t.set("servers", servers)?;
                out.push(t)?;
            }
            Ok(out)
        })?,
    )?;
    let stats = |lua: &Lua, v: Option<Vec<(String, String)>>| -> mlua::Result<Value> {
        let Some(v) = v else { return Ok(Value::Nil) };
        let t = lua.create_table()?;
        for (k, v) in v {
            match v.parse::<i64>() {
                Ok(i) => t.set(k, i)?,
                Err(_) => t.set(k, v)?,
            }
        }
        Ok(Value::Table(t))
    };
    mb.set(
        "proxy_stats",
        lua.create_function(move |lua, p: String| stats(lua, host::proxies::proxy_stats(&p)))?,
    )?;
    mb.set(
        "server_stats",
        lua.create_function(move |lua, (p, s): (String, String)| {
            stats(lua, host::proxies::server_stats(&p, &s))
        })?,
    )?;
    mb.set(
        "server_admin",
        lua.create_function(|_, (p, s, st): (String, String, String)| {
            host::proxies::server_set_admin(&p, &s, &st).map_err(lua_err)
        })?,
    )?;
    mb.set(
        "server_weight",
        lua.create_function(|_, (p, s, w): (String, String, u32)| {
            host::proxies::server_set_weight(&p, &s, w).map_err(lua_err)
        })?,
    )?;
    mb.set(
        "server_maxconn",
        lua.create_function(|_, (p, s, m): (String, String, u32)| {
            host::proxies::server_set_maxconn(&p, &s, m).map_err(lua_err)
        })?,
    )?;
    mb.set(
        "regex",
        lua.create_function(
            |lua, (pattern, nocase, subject): (String, bool, mlua::LuaString)| {
                let subject = subject.to_str()?.to_string();
                match host::regex::captures(&pattern, nocase, &subject) {
                    Ok(Some(groups)) => {
                        let t = lua.create_table()?;
                        for (i, g) in groups.into_iter().enumerate() {
                            t.raw_set(i + 1, g)?;
                        }
                        Ok(Value::Table(t))
                    }
                    Ok(None) => Ok(Value::Boolean(false)),
                    Err(e) => Err(lua_err(e)),
                }
            },
        )?,
    )?;
    mb.set(
        "map_lookup",
        lua.create_function(|_, (f, m, k): (String, String, String)| {
            host::maps::lookup(&f, &m, &k).map_err(lua_err)
        })?,
    )?;
    mb.set(
        "map_load",
        lua.create_function(|_, f: String| host::maps::load(&f).map_err(lua_err))?,
    )?;
    mb.set(
        "map_set",
        lua.create_function(|_, (f, k, v): (String, String, String)| {
            host::maps::set(&f, &k, &v).map_err(lua_err)
        })?,
    )?;
    mb.set(
        "map_del",
        lua.create_function(|_, (f, k): (String, String)| {
            host::maps::del(&f, &k).map_err(lua_err)
        })?,
    )?;

    // Waits: each yields the running coroutine until the host resumes it.
    mb.set(
        "sleep_ms",
        lua.create_async_function(|_, ms: u64| async move {
            raw::wait(Io::Sleep(ms)).await;
            Ok(())
        })?,
    )?;
    mb.set(
        "yield",
        lua.create_async_function(|_, ()| async move {
            raw::wait(Io::Yield).await;
            Ok(())
        })?,
    )?;
    mb.set(
        "connect",
        lua.create_async_function(
            |_,
             (id, addr, timeout, tls, server_name, verify): (
                u32,
                String,
                Option<u64>,
                bool,
                Option<String>,
                bool,
            )| async move {
                let tls = tls.then_some(raw::TlsOptions {
                    server_name,
                    verify,
                });
                match raw::wait(Io::Connect(raw::ConnectRequest {
                    socket: id,
                    addr,
                    timeout_ms: timeout,
                    tls,
                }))
                .await
                {
                    IoResult::Failed(e) => Ok((Value::Nil, Some(io_err(&e)))),
                    IoResult::Data(local) => Ok((
                        Value::Integer(1),
                        Some(String::from_utf8_lossy(&local).into_owned()),
                    )),
                    _ => Ok((Value::Integer(1), None)),
                }
            },
        )?,
    )?;
    mb.set(
        "send",
        lua.create_async_function(|_, (id, data): (u32, mlua::LuaString)| {
            let data = data.as_bytes().to_vec();
            async move {
                match raw::wait(Io::Send((id, data))).await {
                    IoResult::Sent(n) => Ok((Value::Integer(n as i64), None)),
                    IoResult::Failed(e) => Ok((Value::Nil, Some(io_err(&e)))),
                    _ => Ok((Value::Nil, Some("unexpected".to_string()))),
                }
            }
        })?,
    )?;
    mb.set(
        "receive",
        lua.create_async_function(
            |lua, (id, pattern, n, timeout): (u32, String, Option<u32>, Option<u64>)| async move {
                let pattern = match pattern.as_str() {
                    "*l" => raw::ReceivePattern::Line,
                    "*a" => raw::ReceivePattern::All,
                    _ => raw::ReceivePattern::Count(n.unwrap_or(0)),
                };
                match raw::wait(Io::Receive(raw::ReceiveRequest {
                    socket: id,
                    pattern,
                    timeout_ms: timeout,
                }))
                .await
                {
                    IoResult::Data(d) => Ok((Value::String(lua.create_string(&d)?), None, None)),
                    IoResult::Failed(e) => {
                        let partial = lua.create_string(&e.partial)?;
                        Ok((Value::Nil, Some(io_err(&e)), Some(partial)))
                    }
                    _ => Ok((Value::Nil, Some("unexpected".to_string()), None)),
                }
            },
        )?,
    )?;
    mb.set(
        "close",
        lua.create_async_function(|_, id: u32| async move {
            raw::wait(Io::Close(id)).await;
            Ok(1)
        })?,
    )?;
    mb.set(
        "applet_receive",
        lua.create_async_function(
            |lua, (pattern, n, timeout): (String, Option<u32>, Option<u64>)| async move {
                let pattern = match pattern.as_str() {
                    "line" => raw::ReceivePattern::Line,
                    "all" => raw::ReceivePattern::All,
                    _ => raw::ReceivePattern::Count(n.unwrap_or(0)),
                };
                match raw::wait(Io::AppletReceive(raw::AppletReceiveRequest {
                    pattern,
                    timeout_ms: timeout,
                }))
                .await
                {
                    IoResult::Data(d) => Ok((Value::String(lua.create_string(&d)?), None)),
                    IoResult::Failed(e) => Ok((Value::Nil, Some(io_err(&e)))),
                    _ => Ok((Value::Nil, None)),
                }
            },
        )?,
    )?;
    // The response head and body are queued without waiting; the host
    // sends them when the call returns. `applet_send` waits, for when the
    // queue is full.
    mb.set(
        "applet_start",
        lua.create_function(|_, (status, reason, hs): (u16, Option<String>, Table)| {
            let mut headers = Vec::new();
            for pair in hs.sequence_values::<Table>() {
                let p = pair?;
                headers.push((p.get::<String>(1)?, p.get::<String>(2)?));
            }
            raw::applet_start(&raw::AppletHead {
                status,
                reason,
                headers,
            })
            .map_err(lua_err)
        })?,
    )?;
    mb.set(
        "applet_request",
        lua.create_function(|lua, id: u64| {
            let Some(a) = take_request(id) else {
                return Ok(Value::Nil);
            };
            let req = lua.create_table_with_capacity(0, 6)?;
            req.raw_set("method", a.method)?;
            req.raw_set("path", a.path)?;
            req.raw_set("qs", a.query)?;
            req.raw_set("version", a.version)?;
            req.raw_set("length", a.length)?;
            let hs = lua.create_table_with_capacity(a.headers.len(), 0)?;
            for (i, (n, v)) in a.headers.into_iter().enumerate() {
                let pair = lua.create_table_with_capacity(2, 0)?;
                pair.raw_set(1, n)?;
                pair.raw_set(2, v)?;
                hs.raw_set(i + 1, pair)?;
            }
            req.raw_set("headers", hs)?;
            Ok(Value::Table(req))
        })?,
    )?;
    mb.set(
        "applet_write",
        lua.create_function(|_, data: mlua::LuaString| {
            raw::applet_write(&data.as_bytes()).map_err(lua_err)
        })?,
    )?;
    mb.set(
        "applet_send",
        lua.create_async_function(|_, data: mlua::LuaString| {
            let data = data.as_bytes().to_vec();
            async move {
                match raw::wait(Io::AppletSend(data)).await {
                    IoResult::Failed(e) => Err(lua_err(e.message)),
                    _ => Ok(()),
                }
            }
        })?,
    )?;
    Ok(mb)
}

/// Calls a fetch or converter: it cannot wait, and it runs within
/// `tune.lua.burst-timeout`.
fn call_sample(
    f: &Function,
    burst: Duration,
    argv: impl FnOnce() -> mlua::Result<Vec<Value>>,
) -> Result<Option<Sample>, String> {
    let _ = DEADLINE.replace(Some((Instant::now() + burst, burst)));
    let r = argv().and_then(|argv| f.call::<MultiValue>(MultiValue::from_vec(argv)));
    DEADLINE.set(None);
    match r {
        // Returning no value at all fails the sample; nil is false.
        Ok(v) => Ok(v.front().map(lua_to_sample_or_false)),
        Err(e) if is_core_done(&e) => Ok(None),
        Err(e) => Err(describe(&e)),
    }
}

/// Drops the request of a service that ends without reading it.
struct Unread(u64);

impl Drop for Unread {
    fn drop(&mut self) {
        take_request(self.0);
    }
}

/// Takes the request of HTTP service `id` out of [`REQUESTS`].
fn take_request(id: u64) -> Option<HttpApplet> {
    REQUESTS.with_borrow_mut(|r| {
        let i = r.iter().position(|(k, _)| *k == id)?;
        Some(r.swap_remove(i).1)
    })
}

/// The outcome of a service: `txn:done()` and `core.done()` end it well.
fn service_end(r: mlua::Result<()>) -> Result<(), String> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if is_done(&e) || is_core_done(&e) => Ok(()),
        Err(e) => Err(describe(&e)),
    }
}

/// Creates the state, runs the scripts, and turns what they registered into
/// the extension's registrations.
fn init(ext: &mut Registrar, args: &[String]) -> Result<(), String> {
    let setup = Setup::parse(args)?;
    // Actions, services and tasks each run as a coroutine: keep finished
    // ones for the next call rather than make and collect one per call.
    let lua = Lua::new_with(StdLib::ALL_SAFE, LuaOptions::new().thread_pool_size(64))
        .map_err(|e| e.to_string())?;
    // Keep Lua's own allocations under the instance's memory cap, so that
    // running out is a Lua error, not a trap.
    let cap = if setup.maxmem > 0 {
        setup.maxmem
    } else {
        96 << 20
    };
    lua.set_memory_limit(cap).map_err(|e| e.to_string())?;

    // Every `tune.lua.forced-yield` instructions: stop code past its
    // deadline, and let a coroutine give the proxy a turn (HAProxy's
    // forced yield), so that a long action cannot hold the others up.
    let every = setup.forced_yield.max(100);
    lua.set_global_hook(HookTriggers::new().every_nth_instruction(every), |_, _| {
        if let Some((deadline, limit)) = DEADLINE.get()
            && Instant::now() > deadline
        {
            return Err(lua_err(format!(
                "execution timeout: Lua code ran for more than {} ms",
                limit.as_millis()
            )));
        }
        if YIELDABLE.get() {
            raw::request_yield();
            return Ok(VmState::Yield);
        }
        Ok(VmState::Continue)
    })
    .map_err(|e| e.to_string())?;

    STATE.with(|s| *s.borrow_mut() = Some(lua.clone()));
    let mb = primitives(&lua).map_err(|e| e.to_string())?;
    mb.set("thread", setup.thread).map_err(|e| e.to_string())?;
    mb.set("nbthread", setup.nbthread.max(1))
        .map_err(|e| e.to_string())?;
    BOOL_NORMAL.set(setup.bool_normal);
    mb.set("httpclient_verify", setup.httpclient_verify)
        .map_err(|e| e.to_string())?;
    lua.globals().set("__mb", mb).map_err(|e| e.to_string())?;
    if !setup.paths.is_empty() {
        let package: Table = lua.globals().get("package").map_err(|e| e.to_string())?;
        let mut path: String = package.get("path").unwrap_or_default();
        for p in &setup.paths {
            path = format!("{p};{path}");
        }
        package.set("path", path).map_err(|e| e.to_string())?;
    }
    lua.load(HAPROXY_LUA)
        .set_name("@haproxy.lua")
        .exec()
        .map_err(|e| format!("the HAProxy API layer failed: {e}"))?;

    LOADING.set(true);
    let loaded = (|| -> Result<(), String> {
        for (file, fargs) in &setup.loads {
            let code = host::files::read(file).map_err(|e| format!("{file}: cannot read: {e}"))?;
            let args: Vec<Value> = fargs
                .iter()
                .map(|a| a.as_str().into_lua(&lua))
                .collect::<mlua::Result<_>>()
                .map_err(|e| e.to_string())?;
            let _ = DEADLINE.replace(Some((
                Instant::now() + setup.session_timeout,
                setup.session_timeout,
            )));
            lua.load(&code[..])
                .set_name(format!("@{file}"))
                .call::<()>(MultiValue::from_vec(args))
                .map_err(|e| describe(&e))?;
        }
        Ok(())
    })();
    DEADLINE.set(None);
    LOADING.set(false);
    loaded?;

    let setup = Rc::new(setup);
    // register_init functions run in order, once the proxy is configured,
    // as one init of the extension.
    let has_inits: bool = lua
        .load("return __mb.has_inits()")
        .eval()
        .map_err(|e| e.to_string())?;
    if has_inits {
        let run: Function = lua
            .load("return __mb.run_inits")
            .eval()
            .map_err(|e| e.to_string())?;
        let setup = setup.clone();
        ext.init("register_init", move || {
            let run = run.clone();
            limited(setup.session_timeout, async move {
                run.call_async::<()>(()).await.map_err(|e| describe(&e))
            })
        });
    }
    for reg in REGS.with(|r| std::mem::take(&mut *r.borrow_mut())) {
        match reg {
            Reg::Fetch(name, f) => {
                let (setup, l) = (setup.clone(), lua.clone());
                ext.fetch(&name, move |_txn, args| {
                    call_sample(&f, setup.burst_timeout, || {
                        let mut argv = Vec::with_capacity(args.len());
                        for a in args {
                            argv.push(sample_to_lua(&l, a.clone())?);
                        }
                        Ok(argv)
                    })
                });
            }
            Reg::Converter(name, f) => {
                let (setup, l) = (setup.clone(), lua.clone());
                ext.converter(&name, move |_txn, input, args| {
                    call_sample(&f, setup.burst_timeout, || {
                        let mut argv = vec![sample_to_lua(&l, input)?];
                        for a in args {
                            argv.push(sample_to_lua(&l, a.clone())?);
                        }
                        Ok(argv)
                    })
                });
            }
            Reg::Action(name, facs, nargs, f) => {
                let (setup, l) = (setup.clone(), lua.clone());
                ext.action(&name, &facs, nargs, move |_txn, args| {
                    let (f, lua) = (f.clone(), l.clone());
                    limited(setup.session_timeout, async move {
                        let r = async {
                            let mut argv = Vec::with_capacity(args.len());
                            for a in &args {
                                argv.push(Value::String(lua.create_string(a)?));
                            }
                            f.call_async::<Value>(MultiValue::from_vec(argv)).await
                        }
                        .await;
                        match r {
                            Ok(v) => Ok(verdict(&v)),
                            Err(e) if is_done(&e) => Ok(Verdict::Done),
                            Err(e) if is_core_done(&e) => Ok(Verdict::Continue),
                            Err(e) => Err(describe(&e)),
                        }
                    })
                });
            }
            Reg::Service(name, true, f) => {
                let setup = setup.clone();
                ext.http_service(&name, move |_txn, applet| {
                    let f = f.clone();
                    limited(setup.service_timeout, async move {
                        let id = NEXT_REQUEST.replace(NEXT_REQUEST.get() + 1);
                        REQUESTS.with_borrow_mut(|r| r.push((id, applet)));
                        // Also when the invocation is cancelled.
                        let _unread = Unread(id);
                        service_end(f.call_async::<()>(id).await)
                    })
                });
            }
            Reg::Service(name, false, f) => {
                let (setup, l) = (setup.clone(), lua.clone());
                ext.tcp_service(&name, move |_txn, _applet| {
                    let (f, lua) = (f.clone(), l.clone());
                    limited(setup.service_timeout, async move {
                        let r = async { f.call_async::<()>(lua.create_table()?).await }.await;
                        service_end(r)
                    })
                });
            }
            Reg::Task(name, f) => {
                let setup = setup.clone();
                ext.task(&name, move || {
                    let f = f.clone();
                    limited(setup.task_timeout, async move {
                        f.call_async::<Value>(())
                            .await
                            .map(|_| ())
                            .map_err(|e| describe(&e))
                    })
                });
            }
        }
    }
    Ok(())
}

moonbox_sdk::export!(init);
