//! Turns lexed lines into the [`Config`] model. Sections are handled in
//! HAProxy's order: `global` first (it loads extensions, whose names the
//! rest of the file may use), then `defaults`, `frontend`, `backend` and
//! `listen` in the order written. Every error reads `FILE:LINE: what was
//! wrong, what was expected`; all errors of a file are reported, not only
//! the first.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::lexer::{self, Line};
use super::model::*;
use crate::acl::{AclTable, Cond};
use crate::ext::{Facility, Registry, ServiceMode};
use crate::sample::expr::Expr;
use crate::sample::logformat::LogFormat;
use crate::sample::map::MapStore;
use crate::sample::{ParseCtx, VarName};

/// One configuration error, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub loc: Option<Loc>,
    pub msg: String,
}

impl ConfigError {
    pub fn at(loc: &Loc, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            loc: Some(loc.clone()),
            msg: msg.into(),
        }
    }
    pub fn global(msg: impl Into<String>) -> ConfigError {
        ConfigError {
            loc: None,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.loc {
            Some(l) => write!(f, "{l}: {}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

/// All errors found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A loaded configuration with the extensions and maps it refers to.
pub struct Loaded {
    pub config: Config,
    pub ext: Arc<Registry>,
    pub maps: Arc<MapStore>,
}

/// Loads extensions named by the `global` section into the registry.
/// Loads the extensions of the global section into the registry; they may
/// load maps into the configuration's store while they initialise.
pub type ExtLoader<'a> =
    dyn FnMut(&Global, &Arc<MapStore>, &mut Registry) -> Result<(), Vec<ConfigError>> + 'a;

/// Reads, parses and checks configuration files.
pub fn load(
    files: &[PathBuf],
    registry: Registry,
    loader: &mut ExtLoader<'_>,
) -> Result<Loaded, ConfigErrors> {
    let mut sources = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| {
            ConfigErrors(vec![ConfigError::global(format!(
                "{}: cannot read configuration file: {e}",
                f.display()
            ))])
        })?;
        sources.push((f.clone(), text));
    }
    load_sources(&sources, registry, loader)
}

/// Parses configuration texts (file name, content).
pub fn load_sources(
    sources: &[(PathBuf, String)],
    mut registry: Registry,
    loader: &mut ExtLoader<'_>,
) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let mut sections: Vec<RawSection> = Vec::new();
    for (path, text) in sources {
        let file: Arc<str> = Arc::from(path.display().to_string());
        let env = |name: &str| std::env::var(name).ok();
        let lines = match lexer::lex(text, &env) {
            Ok(l) => l,
            Err(e) => {
                errors.push(ConfigError::at(
                    &Loc {
                        file: file.clone(),
                        line: e.line,
                    },
                    e.msg,
                ));
                continue;
            }
        };
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        split_sections(&file, &base_dir, lines, &mut sections, &mut errors);
    }

    // 1. global: applied first, it loads the extensions.
    let mut global = Global::default();
    for s in sections.iter().filter(|s| s.kind == RawKind::Global) {
        parse_global(s, &mut global, &mut errors);
    }
    let maps = Arc::new(MapStore::new());
    if errors.is_empty()
        && let Err(mut e) = loader(&global, &maps, &mut registry)
    {
        errors.append(&mut e);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    // 2. proxies, with the defaults in force where each is declared.
    let mut proxies: Vec<ProxyConfig> = Vec::new();
    let mut named_defaults: Vec<(String, ProxyConfig)> = Vec::new();
    let mut current_defaults = ProxyConfig::defaults_template();
    for s in &sections {
        let section = match s.kind {
            RawKind::Global => continue,
            RawKind::Proxy(sec) => sec,
        };
        let ctx = ParseCtx {
            ext: &registry,
            maps: &maps,
            base_dir: &s.base_dir,
        };
        let base = match &s.from {
            Some(from) => match named_defaults.iter().rev().find(|(n, _)| n == from) {
                Some((_, d)) => d.clone(),
                None => {
                    errors.push(ConfigError::at(
                        &s.loc,
                        format!("no defaults section named '{from}', expected the name of a defaults section declared above"),
                    ));
                    continue;
                }
            },
            None => current_defaults.clone(),
        };
        let mut p = base;
        p.name = s.name.clone();
        p.section = section;
        p.loc = s.loc.clone();
        let mut pp = ProxyParser {
            p: &mut p,
            ctx: &ctx,
            errors: &mut errors,
            default_server: DefaultServer::default(),
        };
        for line in &s.lines {
            pp.directive(&s.file, line);
        }
        match section {
            Section::Defaults => {
                if !s.name.is_empty() {
                    named_defaults.push((s.name.clone(), p.clone()));
                }
                current_defaults = p;
            }
            _ => {
                if proxies.iter().any(|q| q.name == p.name) {
                    errors.push(ConfigError::at(
                        &s.loc,
                        format!(
                            "proxy '{}' is declared twice, expected unique names",
                            p.name
                        ),
                    ));
                }
                proxies.push(p);
            }
        }
    }
    check_references(&proxies, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Loaded {
        config: Config {
            global,
            proxies: proxies.into_iter().map(Arc::new).collect(),
            files: sources.iter().map(|(p, _)| p.clone()).collect(),
        },
        ext: Arc::new(registry),
        maps,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawKind {
    Global,
    Proxy(Section),
}

struct RawSection {
    kind: RawKind,
    name: String,
    from: Option<String>,
    loc: Loc,
    file: Arc<str>,
    base_dir: PathBuf,
    lines: Vec<Line>,
}

const UNSUPPORTED_SECTIONS: &[&str] = &[
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "cache",
    "program",
    "http-errors",
    "ring",
    "log-forward",
    "crt-store",
    "traces",
];

fn split_sections(
    file: &Arc<str>,
    base_dir: &Path,
    lines: Vec<Line>,
    out: &mut Vec<RawSection>,
    errors: &mut Vec<ConfigError>,
) {
    // Lines of an unsupported section are skipped after one error.
    let mut skipping = false;
    for line in lines {
        let loc = Loc {
            file: file.clone(),
            line: line.line,
        };
        let kw = line.words[0].as_str();
        let kind = match kw {
            "global" => Some(RawKind::Global),
            "defaults" => Some(RawKind::Proxy(Section::Defaults)),
            "frontend" => Some(RawKind::Proxy(Section::Frontend)),
            "backend" => Some(RawKind::Proxy(Section::Backend)),
            "listen" => Some(RawKind::Proxy(Section::Listen)),
            _ => None,
        };
        if let Some(kind) = kind {
            skipping = false;
            let mut name = line.words.get(1).cloned().unwrap_or_default();
            let mut from = None;
            let mut rest = &line.words[1.min(line.words.len())..];
            if !name.is_empty() && name != "from" {
                rest = &rest[1..];
            } else {
                name.clear();
            }
            if let RawKind::Proxy(sec) = kind
                && sec != Section::Defaults
                && name.is_empty()
            {
                errors.push(ConfigError::at(
                    &loc,
                    format!("'{kw}' needs a name, expected '{kw} NAME'"),
                ));
            }
            match rest {
                [] => {}
                [f, n] if f == "from" => from = Some(n.clone()),
                _ if kind == RawKind::Global => {}
                _ => errors.push(ConfigError::at(
                    &loc,
                    format!(
                        "unexpected '{}' after '{kw} {name}', expected nothing or 'from DEFAULTS'",
                        rest.join(" ")
                    ),
                )),
            }
            out.push(RawSection {
                kind,
                name,
                from,
                loc,
                file: file.clone(),
                base_dir: base_dir.to_path_buf(),
                lines: Vec::new(),
            });
            continue;
        }
        if UNSUPPORTED_SECTIONS.contains(&kw) {
            errors.push(ConfigError::at(
                &loc,
                format!("section '{kw}' is not supported, expected global, defaults, frontend, backend or listen"),
            ));
            skipping = true;
            continue;
        }
        if skipping {
            continue;
        }
        match out.last_mut() {
            Some(s) => s.lines.push(line),
            None => errors.push(ConfigError::at(
                &loc,
                format!("'{kw}' is outside any section, expected a section keyword (global, defaults, frontend, backend, listen) first"),
            )),
        }
    }
}

// === global ===

fn parse_global(s: &RawSection, g: &mut Global, errors: &mut Vec<ConfigError>) {
    for line in &s.lines {
        let loc = Loc {
            file: s.file.clone(),
            line: line.line,
        };
        if let Err(msg) = global_directive(&s.base_dir, &loc, &line.words, g) {
            errors.push(ConfigError::at(&loc, msg));
        }
    }
}

/// Global keywords accepted and not acted upon: they concern process
/// management that does not apply here.
const GLOBAL_ACCEPTED: &[&str] = &[
    "chroot",
    "user",
    "group",
    "uid",
    "gid",
    "pidfile",
    "ca-base",
    "crt-base",
    "log-send-hostname",
    "log-tag",
    "node",
    "description",
    "hard-stop-after",
    "insecure-fork-wanted",
    "master-worker",
    "expose-experimental-directives",
    "server-state-file",
    "spread-checks",
    "localpeer",
    "unix-bind",
    "quiet",
    "zero-warning",
    "busy-polling",
    "maxsslconn",
    "maxconnrate",
    "maxsessrate",
    "ssl-server-verify",
    "httpclient.resolvers.id",
    "httpclient.resolvers.prefer",
    "httpclient.resolvers.disabled",
    "httpclient.ssl.verify",
    "httpclient.ssl.ca-file",
    "httpclient.retries",
    "httpclient.timeout.connect",
];

fn global_directive(
    base_dir: &Path,
    loc: &Loc,
    w: &[String],
    g: &mut Global,
) -> Result<(), String> {
    let kw = w[0].as_str();
    match kw {
        "daemon" => g.daemon = true,
        "nbthread" => {
            let n = one_arg(w)?;
            let v: usize = n
                .parse()
                .ok()
                .filter(|v| (1..=1024).contains(v))
                .ok_or_else(|| {
                    format!("'nbthread' expects a number of threads from 1 to 1024, got '{n}'")
                })?;
            g.nbthread = Some(v);
        }
        "maxconn" => {
            let n = one_arg(w)?;
            g.maxconn = Some(
                n.parse()
                    .map_err(|_| format!("'maxconn' expects a positive number, got '{n}'"))?,
            );
        }
        "lua-load" | "lua-load-per-thread" => {
            let file = w.get(1).ok_or_else(|| {
                format!("'{kw}' expects a file name, expected '{kw} FILE [ARGS...]'")
            })?;
            g.lua_loads.push(LuaLoad {
                file: resolve_path(base_dir, file),
                args: w[2..].to_vec(),
                per_thread: kw == "lua-load-per-thread",
                loc: loc.clone(),
            });
        }
        "lua-prepend-path" => {
            let path = w.get(1).ok_or(
                "'lua-prepend-path' expects a path, expected 'lua-prepend-path PATH [path|cpath]'",
            )?;
            let kind = w.get(2).map(String::as_str).unwrap_or("path");
            if kind != "path" && kind != "cpath" {
                return Err(format!(
                    "'lua-prepend-path' type must be 'path' or 'cpath', got '{kind}'"
                ));
            }
            g.lua_prepend_path.push((path.clone(), kind.to_string()));
        }
        "lua-allow-read" => {
            if w.len() < 2 {
                return Err(
                    "'lua-allow-read' expects folders, expected 'lua-allow-read DIR [DIR...]'"
                        .into(),
                );
            }
            for d in &w[1..] {
                g.lua_allow_read.push(resolve_path(base_dir, d));
            }
        }
        "setenv" | "presetenv" => {
            let (name, value) = match w {
                [_, n, v] => (n, v),
                _ => {
                    return Err(format!(
                        "'{kw}' expects a name and a value, expected '{kw} NAME VALUE'"
                    ));
                }
            };
            if kw == "presetenv" && std::env::var_os(name).is_some() {
                return Ok(());
            }
            g.setenv.push((name.clone(), value.clone()));
        }
        "log" => g.logs.push(w[1..].join(" ")),
        "stats" => {
            return Err(format!(
                "'stats {}' is not supported: moonbox has no stats socket; extensions read stats through the Lua and Wasm APIs",
                w.get(1).map(String::as_str).unwrap_or("")
            ));
        }
        "ext-load" => g.ext_loads.push(parse_ext_load(base_dir, loc, w)?),
        _ if kw.starts_with("tune.") || kw == "httpclient.ssl.verify" => {
            let v = w.get(1).ok_or_else(|| format!("'{kw}' expects a value"))?;
            check_tune(kw, v)?;
            g.tune.push((kw.to_string(), v.clone(), loc.clone()));
        }
        _ if kw.starts_with("ssl-") || GLOBAL_ACCEPTED.contains(&kw) => {
            tracing::debug!(keyword = kw, "global keyword accepted and ignored");
        }
        _ => {
            return Err(format!(
                "unknown keyword '{kw}' in 'global' section, expected one of nbthread, maxconn, lua-load, lua-load-per-thread, lua-prepend-path, lua-allow-read, ext-load, setenv, log, tune.*"
            ));
        }
    }
    Ok(())
}

fn check_tune(kw: &str, v: &str) -> Result<(), String> {
    match kw {
        "tune.lua.forced-yield" | "tune.lua.maxmem" => {
            v.parse::<u64>()
                .map_err(|_| format!("'{kw}' expects a number, got '{v}'"))?;
        }
        "tune.lua.session-timeout"
        | "tune.lua.service-timeout"
        | "tune.lua.task-timeout"
        | "tune.lua.burst-timeout" => {
            parse_time(v).map_err(|e| format!("'{kw}': {e}"))?;
        }
        "tune.lua.bool-sample-conversion" if v != "normal" && v != "pre-3.1-bug" => {
            return Err(format!(
                "'{kw}' expects 'normal' or 'pre-3.1-bug', got '{v}'"
            ));
        }
        "httpclient.ssl.verify" if v != "none" && v != "required" => {
            return Err(format!("'{kw}' expects 'none' or 'required', got '{v}'"));
        }
        _ => {}
    }
    Ok(())
}

fn parse_ext_load(base_dir: &Path, loc: &Loc, w: &[String]) -> Result<ExtLoad, String> {
    let file = w
        .get(1)
        .ok_or("'ext-load' expects a file, expected 'ext-load FILE.wasm [as NS] [fuel N] [timeout T] [memory SIZE] [instances N] [isolation pooled|per-request] [on-error continue|deny|500] [allow-connect ADDR:PORT ...] [ARGS...]'")?;
    let mut e = ExtLoad::for_file(resolve_path(base_dir, file));
    e.loc = loc.clone();
    let mut i = 2;
    let val = |i: usize, what: &str| -> Result<&String, String> {
        w.get(i + 1)
            .ok_or_else(|| format!("'{}' expects {what}", w[i]))
    };
    while i < w.len() {
        match w[i].as_str() {
            "as" => {
                let ns = val(i, "a namespace")?;
                if ns.is_empty()
                    || !ns
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(format!(
                        "invalid namespace '{ns}', expected letters, digits, '_' or '-'"
                    ));
                }
                e.namespace = ns.clone();
                i += 2;
            }
            "fuel" => {
                let v = val(i, "a number")?;
                e.fuel = Some(
                    v.parse()
                        .map_err(|_| format!("'fuel' expects a number, got '{v}'"))?,
                );
                i += 2;
            }
            "timeout" => {
                e.timeout = Some(parse_time(val(i, "a time")?)?);
                i += 2;
            }
            "memory" => {
                e.memory = Some(parse_size(val(i, "a size")?)?);
                i += 2;
            }
            "instances" => {
                let v = val(i, "a number")?;
                e.instances =
                    Some(v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("'instances' expects a positive number, got '{v}'")
                    })?);
                i += 2;
            }
            "isolation" => {
                e.isolation = match val(i, "pooled or per-request")?.as_str() {
                    "pooled" => Isolation::Pooled,
                    "per-request" => Isolation::PerRequest,
                    o => {
                        return Err(format!(
                            "'isolation' expects pooled or per-request, got '{o}'"
                        ));
                    }
                };
                i += 2;
            }
            "on-error" => {
                e.on_error = match val(i, "continue, deny or 500")?.as_str() {
                    "continue" => OnError::Continue,
                    "deny" => OnError::Deny,
                    "500" => OnError::Status500,
                    o => {
                        return Err(format!(
                            "'on-error' expects continue, deny or 500, got '{o}'"
                        ));
                    }
                };
                i += 2;
            }
            "allow-connect" => {
                i += 1;
                let start = i;
                while i < w.len() && parse_addr_port(&w[i]).is_ok() {
                    e.allow_connect.push(w[i].clone());
                    i += 1;
                }
                if i == start {
                    return Err("'allow-connect' expects one or more ADDR:PORT".into());
                }
            }
            _ => {
                e.args = w[i..].to_vec();
                break;
            }
        }
    }
    Ok(e)
}

// === proxies ===

#[derive(Clone, Default)]
struct DefaultServer {
    words: Vec<String>,
}

struct ProxyParser<'a, 'b> {
    p: &'a mut ProxyConfig,
    ctx: &'a ParseCtx<'b>,
    errors: &'a mut Vec<ConfigError>,
    default_server: DefaultServer,
}

/// Proxy keywords accepted without effect (tuning that does not apply).
const PROXY_ACCEPTED: &[&str] = &[
    "http-reuse",
    "retries",
    "fullconn",
    "description",
    "hash-type",
    "id",
    "log-tag",
    "log-format",
    "unique-id-format",
    "unique-id-header",
    "email-alert",
    "errorfile",
    "errorfiles",
    "http-error",
    "capture",
    "monitor-uri",
    "rate-limit",
    "backlog",
    "grace",
    "max-keep-alive-queue",
];

/// `option` names accepted without effect.
const OPTIONS_ACCEPTED: &[&str] = &[
    "http-keep-alive",
    "http-server-close",
    "redispatch",
    "log-health-checks",
    "splice-auto",
    "splice-request",
    "splice-response",
    "tcp-smart-accept",
    "tcp-smart-connect",
    "tcpka",
    "clitcpka",
    "srvtcpka",
    "log-separate-errors",
    "logasap",
    "http-pretend-keepalive",
    "http-no-delay",
    "http-use-htx",
    "allbackups",
    "persist",
    "prefer-last-server",
    "nolinger",
    "contstats",
    "socket-stats",
    "independent-streams",
    "http-ignore-probes",
    "accept-invalid-http-request",
    "accept-invalid-http-response",
    "h1-case-adjust-bogus-client",
    "h1-case-adjust-bogus-server",
    "disable-h2-upgrade",
];

impl ProxyConfig {
    fn defaults_template() -> ProxyConfig {
        ProxyConfig {
            name: String::new(),
            section: Section::Defaults,
            mode: Mode::Tcp,
            loc: Loc {
                file: Arc::from(""),
                line: 0,
            },
            binds: Vec::new(),
            timeouts: Timeouts::default(),
            options: Options::default(),
            maxconn: None,
            acls: AclTable::default(),
            tcp_request_connection: Vec::new(),
            tcp_request_content: Vec::new(),
            tcp_response_content: Vec::new(),
            inspect_delay: None,
            http_request: Vec::new(),
            http_response: Vec::new(),
            http_after_response: Vec::new(),
            use_backends: Vec::new(),
            default_backend: None,
            balance: Balance::RoundRobin,
            servers: Vec::new(),
        }
    }
}

impl ProxyParser<'_, '_> {
    fn directive(&mut self, file: &Arc<str>, line: &Line) {
        let loc = Loc {
            file: file.clone(),
            line: line.line,
        };
        if let Err(msg) = self.try_directive(&loc, &line.words) {
            self.errors.push(ConfigError::at(&loc, msg));
        }
    }

    fn section(&self) -> &'static str {
        self.p.section.name()
    }

    fn need_frontend(&self, kw: &str) -> Result<(), String> {
        if self.p.section == Section::Backend {
            return Err(format!(
                "'{kw}' is not allowed in a backend, expected it in a frontend or listen section"
            ));
        }
        Ok(())
    }

    fn need_backend(&self, kw: &str) -> Result<(), String> {
        if self.p.section == Section::Frontend {
            return Err(format!(
                "'{kw}' is not allowed in a frontend, expected it in a backend or listen section"
            ));
        }
        Ok(())
    }

    fn not_defaults(&self, kw: &str) -> Result<(), String> {
        if self.p.section == Section::Defaults {
            return Err(format!(
                "'{kw}' is not allowed in a defaults section, expected it in a frontend, backend or listen section"
            ));
        }
        Ok(())
    }

    fn try_directive(&mut self, loc: &Loc, w: &[String]) -> Result<(), String> {
        let kw = w[0].as_str();
        match kw {
            "mode" => {
                self.p.mode = match one_arg(w)? {
                    "http" => Mode::Http,
                    "tcp" => Mode::Tcp,
                    other => {
                        return Err(format!("unknown mode '{other}', expected 'http' or 'tcp'"));
                    }
                }
            }
            "bind" => {
                self.not_defaults(kw)?;
                self.need_frontend(kw)?;
                self.bind(loc, w)?;
            }
            "timeout" => self.timeout(w)?,
            "option" => self.option(w, true)?,
            "no" => {
                if w.get(1).map(String::as_str) != Some("option") {
                    return Err("'no' must be followed by 'option NAME'".into());
                }
                self.option(&w[1..], false)?;
            }
            "maxconn" => {
                let n = one_arg(w)?;
                self.p.maxconn = Some(
                    n.parse()
                        .map_err(|_| format!("'maxconn' expects a positive number, got '{n}'"))?,
                );
            }
            "log" => match w.get(1).map(String::as_str) {
                Some(_) => self.p.options.log = true,
                None => return Err("'log' expects 'global' or a target".into()),
            },
            "no-log" | "dontlog" => self.p.options.log = false,
            "acl" => {
                self.not_defaults(kw)?;
                if w.len() < 3 {
                    return Err("'acl' expects a name and a criterion, expected 'acl NAME CRITERION [FLAGS] [PATTERN...]'".into());
                }
                self.p.acls.add(&w[1..], self.ctx)?;
            }
            "http-request" => {
                self.not_defaults(kw)?;
                self.need_frontend_or_backend_rules()?;
                let r = self.rule(loc, Facility::HttpReq, &w[1..])?;
                self.p.http_request.push(r);
            }
            "http-response" => {
                self.not_defaults(kw)?;
                let r = self.rule(loc, Facility::HttpRes, &w[1..])?;
                self.p.http_response.push(r);
            }
            "http-after-response" => {
                self.not_defaults(kw)?;
                let r = self.rule(loc, Facility::HttpAfterRes, &w[1..])?;
                self.p.http_after_response.push(r);
            }
            "tcp-request" => {
                self.not_defaults(kw)?;
                self.tcp_request(loc, w)?;
            }
            "tcp-response" => {
                self.not_defaults(kw)?;
                match w.get(1).map(String::as_str) {
                    Some("content") => {
                        let r = self.rule(loc, Facility::TcpRes, &w[2..])?;
                        self.p.tcp_response_content.push(r);
                    }
                    Some("inspect-delay") => {
                        parse_time(
                            w.get(2)
                                .ok_or("'tcp-response inspect-delay' expects a time")?,
                        )?;
                    }
                    _ => return Err("'tcp-response' expects 'content' or 'inspect-delay'".into()),
                }
            }
            "use_backend" => {
                self.not_defaults(kw)?;
                self.need_frontend(kw)?;
                let target = w
                    .get(1)
                    .ok_or("'use_backend' expects a backend name, expected 'use_backend NAME [if|unless COND]'")?;
                let target = if target.contains("%[") {
                    BackendTarget::Dynamic(LogFormat::parse(target, self.ctx)?)
                } else {
                    BackendTarget::Name(target.clone())
                };
                let cond = self.cond(&w[2..])?;
                self.p.use_backends.push(UseBackend {
                    target,
                    cond,
                    loc: loc.clone(),
                });
            }
            "default_backend" => {
                self.need_frontend(kw)?;
                self.p.default_backend = Some(one_arg(w)?.to_string());
            }
            "balance" => {
                self.need_backend(kw)?;
                self.p.balance = match one_arg_or_more(w)? {
                    "roundrobin" | "static-rr" => Balance::RoundRobin,
                    "leastconn" => Balance::LeastConn,
                    "first" => Balance::First,
                    "source" => Balance::Source,
                    other => {
                        return Err(format!(
                            "unknown balance algorithm '{other}', expected roundrobin, static-rr, leastconn, first or source"
                        ));
                    }
                }
            }
            "server" => {
                self.not_defaults(kw)?;
                self.need_backend(kw)?;
                let s = self.server(loc, w)?;
                if self.p.servers.iter().any(|o| o.name == s.name) {
                    return Err(format!(
                        "server '{}' is declared twice in this backend, expected unique names",
                        s.name
                    ));
                }
                self.p.servers.push(s);
            }
            "default-server" => {
                self.need_backend(kw)?;
                // Validate now with a placeholder name and address.
                let mut probe = vec![
                    "server".to_string(),
                    "x".to_string(),
                    "127.0.0.1:1".to_string(),
                ];
                probe.extend_from_slice(&w[1..]);
                self.server(loc, &probe)?;
                self.default_server.words.extend_from_slice(&w[1..]);
            }
            "http-check" => self.http_check(w)?,
            "stats" => {
                return Err("'stats' is not supported: moonbox has no stats page; extensions read stats through the Lua and Wasm APIs".into());
            }
            _ if PROXY_ACCEPTED.contains(&kw) => {
                tracing::debug!(keyword = kw, "keyword accepted and ignored");
            }
            _ => {
                return Err(format!(
                    "unknown keyword '{kw}' in '{}' section, expected one of mode, bind, timeout, option, acl, http-request, http-response, tcp-request, tcp-response, use_backend, default_backend, balance, server, maxconn, log",
                    self.section()
                ));
            }
        }
        Ok(())
    }

    fn need_frontend_or_backend_rules(&self) -> Result<(), String> {
        Ok(())
    }

    fn bind(&mut self, loc: &Loc, w: &[String]) -> Result<(), String> {
        let spec = w
            .get(1)
            .ok_or("'bind' expects an address, expected 'bind ADDR:PORT [options]'")?;
        for part in spec.split(',') {
            let part = part
                .strip_prefix("ipv4@")
                .or_else(|| part.strip_prefix("ipv6@"))
                .unwrap_or(part);
            let addr = parse_bind_addr(part)?;
            self.p.binds.push(Bind {
                addr,
                loc: loc.clone(),
            });
        }
        let mut i = 2;
        while i < w.len() {
            match w[i].as_str() {
                "name" | "alpn" | "proto" | "process" | "thread" | "maxconn" | "backlog" | "id"
                | "nice" | "tcp-ut" | "mss" | "interface" | "namespace" => i += 2,
                "v4v6"
                | "v6only"
                | "transparent"
                | "defer-accept"
                | "tfo"
                | "accept-netscaler-cip" => i += 1,
                "ssl" | "crt" | "ca-file" | "verify" => {
                    return Err(format!(
                        "bind option '{}' is not supported: TLS termination is not available, expected a plain TCP bind",
                        w[i]
                    ));
                }
                "accept-proxy" => {
                    return Err("bind option 'accept-proxy' is not supported: the PROXY protocol is not available".into());
                }
                other => {
                    return Err(format!(
                        "unknown bind option '{other}', expected name, alpn, proto, maxconn, backlog, v4v6 or v6only"
                    ));
                }
            }
        }
        Ok(())
    }

    fn timeout(&mut self, w: &[String]) -> Result<(), String> {
        let which = w
            .get(1)
            .ok_or("'timeout' expects a name and a time, expected 'timeout connect|client|server|http-request|http-keep-alive|queue|tunnel|check TIME'")?;
        let t =
            parse_time(w.get(2).ok_or_else(|| {
                format!("'timeout {which}' expects a time, such as 5s or 500ms")
            })?)?;
        let t = Some(t);
        let to = &mut self.p.timeouts;
        match which.as_str() {
            "connect" => to.connect = t,
            "client" => to.client = t,
            "server" => to.server = t,
            "http-request" => to.http_request = t,
            "http-keep-alive" => to.http_keep_alive = t,
            "queue" => to.queue = t,
            "tunnel" => to.tunnel = t,
            "check" => to.check = t,
            "client-fin" | "server-fin" | "tarpit" => {}
            other => {
                return Err(format!(
                    "unknown timeout '{other}', expected connect, client, server, http-request, http-keep-alive, queue, tunnel or check"
                ));
            }
        }
        Ok(())
    }

    fn option(&mut self, w: &[String], on: bool) -> Result<(), String> {
        let name = w.get(1).ok_or("'option' expects a name")?.as_str();
        let o = &mut self.p.options;
        match name {
            "forwardfor" => {
                if !on {
                    o.forwardfor = None;
                    return Ok(());
                }
                let mut ff = ForwardFor {
                    header: "X-Forwarded-For".into(),
                    if_none: false,
                };
                let mut i = 2;
                while i < w.len() {
                    match w[i].as_str() {
                        "header" => {
                            ff.header = w
                                .get(i + 1)
                                .ok_or("'option forwardfor header' expects a header name")?
                                .clone();
                            i += 2;
                        }
                        "except" => {
                            w.get(i + 1)
                                .ok_or("'option forwardfor except' expects a network")?;
                            i += 2;
                        }
                        "if-none" => {
                            ff.if_none = true;
                            i += 1;
                        }
                        other => {
                            return Err(format!(
                                "unknown 'option forwardfor' argument '{other}', expected header NAME, except NET or if-none"
                            ));
                        }
                    }
                }
                o.forwardfor = Some(ff);
            }
            "httplog" => {
                o.httplog = on;
                if on {
                    o.tcplog = false;
                }
            }
            "tcplog" => {
                o.tcplog = on;
                if on {
                    o.httplog = false;
                }
            }
            "dontlognull" => o.dontlognull = on,
            "httpclose" => o.httpclose = on,
            "abortonclose" => o.abortonclose = on,
            "http-buffer-request" => o.buffer_request = on,
            "httpchk" => {
                if !on {
                    o.httpchk = None;
                    return Ok(());
                }
                let args = &w[2..];
                let (method, uri, version) = match args {
                    [] => ("OPTIONS", "/", "HTTP/1.0"),
                    [uri] => ("OPTIONS", uri.as_str(), "HTTP/1.0"),
                    [m, uri] => (m.as_str(), uri.as_str(), "HTTP/1.0"),
                    [m, uri, v, ..] => (m.as_str(), uri.as_str(), v.as_str()),
                };
                let prev = o.httpchk.take();
                o.httpchk = Some(HttpCheck {
                    method: method.into(),
                    uri: uri.into(),
                    version: version.into(),
                    expect_status: prev.and_then(|p| p.expect_status),
                });
            }
            _ if OPTIONS_ACCEPTED.contains(&name) => {}
            other => {
                return Err(format!(
                    "unknown option '{other}', expected forwardfor, httplog, tcplog, httpchk, dontlognull, httpclose, http-keep-alive, http-server-close, redispatch"
                ));
            }
        }
        Ok(())
    }

    fn http_check(&mut self, w: &[String]) -> Result<(), String> {
        match w.get(1).map(String::as_str) {
            Some("expect") => {
                let (neg, rest) = match w.get(2).map(String::as_str) {
                    Some("!") => (true, &w[3..]),
                    _ => (false, &w[2..]),
                };
                match rest {
                    [k, v] if k == "status" && !neg => {
                        let code = v.parse().map_err(|_| {
                            format!("'http-check expect status' expects a status code, got '{v}'")
                        })?;
                        let hc = self.p.options.httpchk.get_or_insert(HttpCheck {
                            method: "OPTIONS".into(),
                            uri: "/".into(),
                            version: "HTTP/1.0".into(),
                            expect_status: None,
                        });
                        hc.expect_status = Some(code);
                        Ok(())
                    }
                    _ => Err("'http-check expect' supports 'status CODE' only".into()),
                }
            }
            Some("send") | Some("disable-on-404") | Some("send-state") => Ok(()),
            _ => Err("'http-check' expects 'expect status CODE' or 'send ...'".into()),
        }
    }

    fn server(&mut self, loc: &Loc, w: &[String]) -> Result<ServerConfig, String> {
        let name = w.get(1).ok_or(
            "'server' expects a name and an address, expected 'server NAME ADDR:PORT [options]'",
        )?;
        let addr = w.get(2).ok_or_else(|| {
            format!("server '{name}' has no address, expected 'server NAME ADDR:PORT [options]'")
        })?;
        let addr = resolve_server_addr(addr)?;
        let mut s = ServerConfig {
            name: name.clone(),
            addr,
            check: false,
            inter: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            weight: 1,
            maxconn: None,
            backup: false,
            disabled: false,
            loc: loc.clone(),
        };
        let mut opts: Vec<String> = self.default_server.words.clone();
        opts.extend_from_slice(&w[3..]);
        let mut i = 0;
        let val = |i: usize| -> Result<&String, String> {
            opts.get(i + 1)
                .ok_or_else(|| format!("server option '{}' expects a value", opts[i]))
        };
        while i < opts.len() {
            let o = opts[i].as_str();
            match o {
                "check" => {
                    s.check = true;
                    i += 1;
                }
                "no-check" => {
                    s.check = false;
                    i += 1;
                }
                "backup" => {
                    s.backup = true;
                    i += 1;
                }
                "disabled" => {
                    s.disabled = true;
                    i += 1;
                }
                "enabled" => {
                    s.disabled = false;
                    i += 1;
                }
                "inter" | "fastinter" | "downinter" => {
                    let t = parse_time(val(i)?)?;
                    if o == "inter" {
                        s.inter = t;
                    }
                    i += 2;
                }
                "rise" | "fall" | "weight" | "maxconn" | "port" | "minconn" | "maxqueue" => {
                    let v = val(i)?;
                    let n: u32 = v
                        .parse()
                        .map_err(|_| format!("server option '{o}' expects a number, got '{v}'"))?;
                    match o {
                        "rise" => s.rise = n.max(1),
                        "fall" => s.fall = n.max(1),
                        "weight" => {
                            if n > 256 {
                                return Err(format!(
                                    "server option 'weight' expects 0 to 256, got {n}"
                                ));
                            }
                            s.weight = n;
                        }
                        "maxconn" => s.maxconn = Some(n),
                        _ => {}
                    }
                    i += 2;
                }
                "init-addr" | "resolvers" | "resolve-prefer" | "cookie" | "id" | "slowstart"
                | "agent-port" | "agent-inter" | "on-error" | "on-marked-down" | "on-marked-up"
                | "proto" | "alpn" | "pool-max-conn" | "pool-purge-delay" | "source" | "tfo" => {
                    i += 2
                }
                "send-proxy" | "send-proxy-v2" | "ssl" | "verify" | "sni" | "crt" | "ca-file" => {
                    return Err(format!(
                        "server option '{o}' is not supported: servers are reached over plain TCP/HTTP"
                    ));
                }
                "observe" | "agent-check" | "redir" | "track" => i += 2,
                "no-ssl" | "non-stick" | "check-send-proxy" | "check-ssl" | "no-tfo" => i += 1,
                other => {
                    return Err(format!(
                        "unknown server option '{other}', expected check, inter, rise, fall, weight, maxconn, backup or disabled"
                    ));
                }
            }
        }
        Ok(s)
    }

    fn tcp_request(&mut self, loc: &Loc, w: &[String]) -> Result<(), String> {
        match w.get(1).map(String::as_str) {
            Some("connection") | Some("session") => {
                let r = self.rule(loc, Facility::TcpReq, &w[2..])?;
                if matches!(r.action, Action::UseService(_)) {
                    return Err("'use-service' is not allowed in 'tcp-request connection', expected it in 'tcp-request content'".into());
                }
                self.p.tcp_request_connection.push(r);
            }
            Some("content") => {
                let r = self.rule(loc, Facility::TcpReq, &w[2..])?;
                self.p.tcp_request_content.push(r);
            }
            Some("inspect-delay") => {
                self.p.inspect_delay = Some(parse_time(
                    w.get(2)
                        .ok_or("'tcp-request inspect-delay' expects a time, such as 5s")?,
                )?);
            }
            _ => {
                return Err(
                    "'tcp-request' expects 'connection', 'content' or 'inspect-delay'".into(),
                );
            }
        }
        Ok(())
    }

    fn cond(&self, w: &[String]) -> Result<Option<Cond>, String> {
        if w.is_empty() {
            return Ok(None);
        }
        if w[0] != "if" && w[0] != "unless" {
            return Err(format!(
                "unexpected '{}', expected 'if' or 'unless' followed by a condition",
                w[0]
            ));
        }
        if w.len() < 2 {
            return Err(format!("'{}' expects a condition", w[0]));
        }
        Ok(Some(Cond::parse(w, &self.p.acls, self.ctx)?))
    }

    /// Parses `ACTION [ARGS] [if|unless COND]` for a facility.
    fn rule(&self, loc: &Loc, facility: Facility, w: &[String]) -> Result<Rule, String> {
        let kw = w
            .first()
            .ok_or_else(|| format!("'{}' expects an action", facility_keyword(facility)))?;
        let cond_at = w
            .iter()
            .position(|x| x == "if" || x == "unless")
            .unwrap_or(w.len());
        let (head, tail) = w.split_at(cond_at);
        let args = &head[1..];
        let action = self.action(facility, kw, args)?;
        let cond = self.cond(tail)?;
        Ok(Rule {
            action,
            cond,
            loc: loc.clone(),
        })
    }

    fn action(&self, facility: Facility, kw: &str, args: &[String]) -> Result<Action, String> {
        let ctx = self.ctx;
        let http = matches!(
            facility,
            Facility::HttpReq | Facility::HttpRes | Facility::HttpAfterRes
        );
        let on_request = matches!(facility, Facility::HttpReq | Facility::TcpReq);
        let nargs = |n: usize, usage: &str| -> Result<(), String> {
            if args.len() != n {
                Err(format!("'{kw}' expects {usage}"))
            } else {
                Ok(())
            }
        };
        // set-var(NAME) / set-var-fmt(NAME) / unset-var(NAME)
        if let Some(inner) = paren_arg(kw, "set-var") {
            let var: VarName = inner.parse()?;
            if args.is_empty() {
                return Err(format!(
                    "'{kw}' expects a sample expression, such as 'set-var(txn.x) req.hdr(host)'"
                ));
            }
            let expr = Expr::parse(&args.join(" "), ctx)?;
            return Ok(Action::SetVar { var, expr });
        }
        if let Some(inner) = paren_arg(kw, "set-var-fmt") {
            let var: VarName = inner.parse()?;
            nargs(1, "a log-format string")?;
            return Ok(Action::SetVarFmt {
                var,
                fmt: LogFormat::parse(&args[0], ctx)?,
            });
        }
        if let Some(inner) = paren_arg(kw, "unset-var") {
            nargs(0, "no argument")?;
            return Ok(Action::UnsetVar(inner.parse()?));
        }
        match kw {
            "set-header" | "add-header" if http => {
                nargs(2, "a header name and a value")?;
                let name = args[0].clone();
                check_header_name(&name)?;
                let value = LogFormat::parse(&args[1], ctx)?;
                Ok(if kw == "set-header" {
                    Action::SetHeader { name, value }
                } else {
                    Action::AddHeader { name, value }
                })
            }
            "del-header" if http => {
                if args.is_empty() || (args.len() != 1 && args.len() != 3) {
                    return Err("'del-header' expects a header name".into());
                }
                check_header_name(&args[0])?;
                Ok(Action::DelHeader {
                    name: args[0].clone(),
                })
            }
            "replace-header" | "replace-value" if http => {
                nargs(3, "a header name, a regex and a replacement")?;
                check_header_name(&args[0])?;
                let regex = regex::Regex::new(&args[1])
                    .map_err(|e| format!("invalid regex '{}': {e}", args[1]))?;
                let replace = LogFormat::parse(&args[2], ctx)?;
                Ok(if kw == "replace-header" {
                    Action::ReplaceHeader {
                        name: args[0].clone(),
                        regex,
                        replace,
                    }
                } else {
                    Action::ReplaceValue {
                        name: args[0].clone(),
                        regex,
                        replace,
                    }
                })
            }
            "set-path" | "set-query" | "set-uri" | "set-method"
                if facility == Facility::HttpReq =>
            {
                nargs(1, "a log-format string")?;
                let f = LogFormat::parse(&args[0], ctx)?;
                Ok(match kw {
                    "set-path" => Action::SetPath(f),
                    "set-query" => Action::SetQuery(f),
                    "set-uri" => Action::SetUri(f),
                    _ => Action::SetMethod(f),
                })
            }
            "set-status" if matches!(facility, Facility::HttpRes | Facility::HttpAfterRes) => {
                let code = args
                    .first()
                    .and_then(|c| c.parse::<u16>().ok())
                    .filter(|c| (100..=999).contains(c))
                    .ok_or("'set-status' expects a status code from 100 to 999")?;
                let reason = match &args[1..] {
                    [] => None,
                    [k, r] if k == "reason" => Some(r.clone()),
                    _ => return Err("'set-status' expects 'CODE [reason TEXT]'".into()),
                };
                Ok(Action::SetStatus { code, reason })
            }
            "redirect" if facility == Facility::HttpReq || facility == Facility::HttpRes => {
                self.redirect(args)
            }
            "deny" if http => {
                let mut status = if on_request { 403 } else { 502 };
                let mut i = 0;
                while i < args.len() {
                    match args[i].as_str() {
                        "deny_status" | "status" => {
                            status = parse_status(args.get(i + 1))?;
                            i += 2;
                        }
                        other => {
                            return Err(format!(
                                "unexpected '{other}' after 'deny', expected 'deny_status CODE'"
                            ));
                        }
                    }
                }
                Ok(Action::Deny { status })
            }
            "return" if http => self.return_spec(args),
            "use-service" if facility == Facility::HttpReq || facility == Facility::TcpReq => {
                nargs(1, "a service name, such as 'lua.magic8ball'")?;
                let mode = if facility == Facility::HttpReq {
                    ServiceMode::Http
                } else {
                    ServiceMode::Tcp
                };
                let r = ctx.ext.service(&args[0], mode).map_err(|e| e.to_string())?;
                Ok(Action::UseService(r))
            }
            "allow" if http => {
                nargs(0, "no argument")?;
                Ok(Action::Allow)
            }
            "accept" if !http => {
                nargs(0, "no argument")?;
                Ok(Action::Allow)
            }
            "reject" if !http => {
                nargs(0, "no argument")?;
                Ok(Action::Reject)
            }
            "silent-drop" => Ok(Action::Reject),
            "set-log-level" => {
                nargs(1, "a log level")?;
                Ok(Action::SetLogLevel(args[0].clone()))
            }
            _ if kw.contains('.') && !kw.starts_with('.') => {
                let r = ctx
                    .ext
                    .action(kw, facility, args.len())
                    .map_err(|e| e.to_string())?;
                Ok(Action::Ext {
                    r,
                    facility,
                    args: args.to_vec(),
                })
            }
            _ => Err(format!(
                "unknown action '{kw}' for '{}', expected {}",
                facility_keyword(facility),
                match facility {
                    Facility::HttpReq =>
                        "set-header, add-header, del-header, replace-header, set-path, set-query, set-uri, set-method, set-var(NAME), unset-var(NAME), redirect, deny, return, use-service, allow or NS.NAME",
                    Facility::HttpRes | Facility::HttpAfterRes =>
                        "set-header, add-header, del-header, replace-header, set-status, set-var(NAME), unset-var(NAME), deny, return, allow or NS.NAME",
                    Facility::TcpReq =>
                        "accept, reject, set-var(NAME), unset-var(NAME), use-service or NS.NAME",
                    Facility::TcpRes => "accept, reject, set-var(NAME) or NS.NAME",
                }
            )),
        }
    }

    fn redirect(&self, args: &[String]) -> Result<Action, String> {
        let kind = match args.first().map(String::as_str) {
            Some("location") => RedirectKind::Location,
            Some("prefix") => RedirectKind::Prefix,
            Some("scheme") => RedirectKind::Scheme,
            _ => {
                return Err(
                    "'redirect' expects location, prefix or scheme followed by a target".into(),
                );
            }
        };
        let target = args
            .get(1)
            .ok_or("'redirect' expects a target after its type")?;
        let mut r = Redirect {
            kind,
            target: LogFormat::parse(target, self.ctx)?,
            code: 302,
            drop_query: false,
        };
        let mut i = 2;
        while i < args.len() {
            match args[i].as_str() {
                "code" => {
                    r.code = parse_status(args.get(i + 1))?;
                    if ![301, 302, 303, 307, 308].contains(&r.code) {
                        return Err(format!(
                            "'redirect code' expects 301, 302, 303, 307 or 308, got {}",
                            r.code
                        ));
                    }
                    i += 2;
                }
                "drop-query" => {
                    r.drop_query = true;
                    i += 1;
                }
                "append-slash" => i += 1,
                "set-cookie" | "clear-cookie" => i += 2,
                other => {
                    return Err(format!(
                        "unexpected '{other}' in 'redirect', expected code N, drop-query or append-slash"
                    ));
                }
            }
        }
        Ok(Action::Redirect(r))
    }

    fn return_spec(&self, args: &[String]) -> Result<Action, String> {
        let mut spec = ReturnSpec {
            status: 200,
            content_type: None,
            body: None,
            headers: Vec::new(),
        };
        let mut i = 0;
        let val = |i: usize| -> Result<&String, String> {
            args.get(i + 1)
                .ok_or_else(|| format!("'return {}' expects a value", args[i]))
        };
        while i < args.len() {
            match args[i].as_str() {
                "status" => {
                    spec.status = parse_status(args.get(i + 1))?;
                    i += 2;
                }
                "content-type" => {
                    spec.content_type = Some(val(i)?.clone());
                    i += 2;
                }
                "string" => {
                    spec.body = Some(LogFormat::literal(val(i)?));
                    i += 2;
                }
                "lf-string" => {
                    spec.body = Some(LogFormat::parse(val(i)?, self.ctx)?);
                    i += 2;
                }
                "file" | "lf-file" => {
                    let path = resolve_path(self.ctx.base_dir, val(i)?);
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
                    spec.body = Some(if args[i] == "file" {
                        LogFormat::literal(&text)
                    } else {
                        LogFormat::parse(&text, self.ctx)?
                    });
                    i += 2;
                }
                "hdr" => {
                    let name = val(i)?.clone();
                    check_header_name(&name)?;
                    let v = args
                        .get(i + 2)
                        .ok_or("'return hdr' expects a name and a value")?;
                    spec.headers.push((name, LogFormat::parse(v, self.ctx)?));
                    i += 3;
                }
                "default-errorfiles" => i += 1,
                other => {
                    return Err(format!(
                        "unexpected '{other}' in 'return', expected status, content-type, string, lf-string, file, lf-file or hdr"
                    ));
                }
            }
        }
        if spec.body.is_some() && spec.content_type.is_none() {
            return Err("'return' with a body expects a 'content-type'".into());
        }
        Ok(Action::Return(spec))
    }
}

fn facility_keyword(f: Facility) -> &'static str {
    match f {
        Facility::TcpReq => "tcp-request",
        Facility::TcpRes => "tcp-response",
        Facility::HttpReq => "http-request",
        Facility::HttpRes => "http-response",
        Facility::HttpAfterRes => "http-after-response",
    }
}

fn paren_arg<'a>(kw: &'a str, prefix: &str) -> Option<&'a str> {
    kw.strip_prefix(prefix)?
        .strip_prefix('(')?
        .strip_suffix(')')
}

fn check_header_name(name: &str) -> Result<(), String> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| format!("invalid header name '{name}'"))
}

fn parse_status(v: Option<&String>) -> Result<u16, String> {
    let v = v.ok_or("expected a status code")?;
    v.parse::<u16>()
        .ok()
        .filter(|c| (100..=999).contains(c))
        .ok_or_else(|| format!("invalid status code '{v}', expected a number from 100 to 999"))
}

fn check_references(proxies: &[ProxyConfig], errors: &mut Vec<ConfigError>) {
    let backend = |name: &str| proxies.iter().find(|p| p.name == name && p.is_backend());
    for p in proxies.iter().filter(|p| p.is_frontend()) {
        let check = |name: &str, loc: &Loc, errors: &mut Vec<ConfigError>| match backend(name) {
            None => errors.push(ConfigError::at(
                loc,
                format!(
                    "unknown backend '{name}', expected the name of a backend or listen section"
                ),
            )),
            Some(b) if b.mode != p.mode => errors.push(ConfigError::at(
                loc,
                format!(
                    "backend '{name}' is in {} mode but '{}' is in {} mode, expected the same mode",
                    mode_name(b.mode),
                    p.name,
                    mode_name(p.mode)
                ),
            )),
            Some(_) => {}
        };
        for ub in &p.use_backends {
            if let BackendTarget::Name(n) = &ub.target {
                check(n, &ub.loc, errors);
            }
        }
        if let Some(db) = &p.default_backend {
            check(db, &p.loc, errors);
        }
        if p.binds.is_empty() {
            tracing::warn!(proxy = %p.name, "{}: proxy has no 'bind', it will receive no traffic", p.loc);
        }
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Http => "http",
        Mode::Tcp => "tcp",
    }
}

// === values ===

fn one_arg(w: &[String]) -> Result<&str, String> {
    match w {
        [_, v] => Ok(v.as_str()),
        [kw] => Err(format!("'{kw}' expects a value")),
        [kw, ..] => Err(format!(
            "'{kw}' expects exactly one value, got {}",
            w.len() - 1
        )),
        [] => Err("empty directive".into()),
    }
}

fn one_arg_or_more(w: &[String]) -> Result<&str, String> {
    w.get(1)
        .map(String::as_str)
        .ok_or_else(|| format!("'{}' expects a value", w[0]))
}

fn resolve_path(base_dir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        // HAProxy resolves relative to the working directory; moonbox tries
        // that first and falls back to the configuration file's folder.
        if p.exists() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    }
}

/// Parses a time with HAProxy's units: `us`, `ms` (default), `s`, `m`, `h`, `d`.
pub fn parse_time(v: &str) -> Result<Duration, String> {
    let digits = v.bytes().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!(
            "invalid time '{v}', expected a number with an optional unit (us, ms, s, m, h, d)"
        ));
    }
    let n: u64 = v[..digits]
        .parse()
        .map_err(|_| format!("time '{v}' is too large"))?;
    let d = match &v[digits..] {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        unit => {
            return Err(format!(
                "invalid time unit '{unit}' in '{v}', expected us, ms, s, m, h or d"
            ));
        }
    };
    Ok(d)
}

/// Parses a size: bytes, or with `k`, `m`, `g` suffixes (powers of 1024).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let digits = v.bytes().take_while(|c| c.is_ascii_digit()).count();
    let n: u64 = v[..digits].parse().map_err(|_| {
        format!("invalid size '{v}', expected a number with an optional unit (k, m, g)")
    })?;
    let mul = match v[digits..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        unit => {
            return Err(format!(
                "invalid size unit '{unit}' in '{v}', expected k, m or g"
            ));
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size '{v}' is too large"))
}

fn parse_port(p: &str, whole: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .map_err(|_| format!("invalid port in '{whole}', expected a number from 0 to 65535"))
}

/// Parses `ADDR:PORT` with a literal address.
pub fn parse_addr_port(v: &str) -> Result<SocketAddr, String> {
    v.parse::<SocketAddr>()
        .map_err(|_| format!("invalid address '{v}', expected IP:PORT"))
}

/// Parses a bind address: `:PORT`, `*:PORT`, `IP:PORT`, `[IPv6]:PORT`.
fn parse_bind_addr(v: &str) -> Result<SocketAddr, String> {
    let (host, port) = v
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid bind address '{v}', expected ADDR:PORT or :PORT"))?;
    let port = parse_port(port, v)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = match host {
        "" | "*" | "0.0.0.0" => std::net::Ipv4Addr::UNSPECIFIED.into(),
        "::" => std::net::Ipv6Addr::UNSPECIFIED.into(),
        h => h.parse().map_err(|_| {
            format!("invalid bind address '{v}', expected an IP address (names are not resolved)")
        })?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses and resolves a server address (names are resolved once, at load).
fn resolve_server_addr(v: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Ok(a);
    }
    let v = v.strip_prefix("ipv4@").unwrap_or(v);
    let (host, port) = v
        .rsplit_once(':')
        .ok_or_else(|| format!("server address '{v}' has no port, expected ADDR:PORT"))?;
    let port = parse_port(port, v)?;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve server address '{host}': {e}"))?
        .next()
        .ok_or_else(|| format!("server address '{host}' resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigErrors> {
        load_sources(
            &[(PathBuf::from("t.cfg"), text.to_string())],
            Registry::new(),
            &mut |_, _, _| Ok(()),
        )
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn times_and_sizes() {
        assert_eq!(parse_time("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_time("500"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_time("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_time("5x").is_err());
        assert_eq!(parse_size("32m"), Ok(32 << 20));
    }

    #[test]
    fn minimal_config() {
        let l = parse(
            "global\n  nbthread 2\ndefaults\n  mode http\n  timeout connect 5s\nfrontend fe\n  bind 127.0.0.1:8080\n  default_backend be\nbackend be\n  server s1 127.0.0.1:9000 check weight 3\n",
        )
        .expect("parses");
        let c = l.config;
        assert_eq!(c.global.nbthread, Some(2));
        assert_eq!(c.proxies.len(), 2);
        let fe = &c.proxies[0];
        assert_eq!(fe.mode, Mode::Http);
        assert_eq!(fe.timeouts.connect, Some(Duration::from_secs(5)));
        assert_eq!(c.proxies[1].servers[0].weight, 3);
        assert!(c.proxies[1].servers[0].check);
    }

    #[test]
    fn errors_carry_file_line_and_expectation() {
        let e = err("frontend fe\n  bind :80\n  frobnicate yes\n");
        assert!(
            e.starts_with("t.cfg:3: unknown keyword 'frobnicate'"),
            "{e}"
        );
        let e = err("frontend fe\n  bind :80\n  use_backend nope\n");
        assert!(e.starts_with("t.cfg:3: unknown backend 'nope'"), "{e}");
        let e = err("global\n  stats socket /run/x.sock\n");
        assert!(
            e.starts_with("t.cfg:2: 'stats socket' is not supported"),
            "{e}"
        );
        let e = err("frontend fe\n  mode http\n  http-request lua.x\n");
        assert!(e.contains("t.cfg:3: unknown extension 'lua.x'"), "{e}");
    }

    #[test]
    fn all_errors_are_reported() {
        let e = err("frontend fe\n  bogus1\n  bogus2\n");
        assert_eq!(e.lines().count(), 2, "{e}");
    }
}
