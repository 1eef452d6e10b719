//! The configuration model: what the parser produces and the running proxy
//! consumes. Every item keeps the `file:line` it came from.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::acl::{AclTable, Cond};
use crate::ext::{ExtRef, Facility};
use crate::sample::VarName;
use crate::sample::expr::Expr;
use crate::sample::logformat::LogFormat;

/// Where a directive was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<str>,
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// `mode http` or `mode tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Http,
    Tcp,
}

/// A whole configuration, from one or more files.
#[derive(Debug, Default)]
pub struct Config {
    pub global: Global,
    pub proxies: Vec<Arc<ProxyConfig>>,
    pub files: Vec<PathBuf>,
}

/// The `global` section.
#[derive(Debug, Default, Clone)]
pub struct Global {
    pub nbthread: Option<usize>,
    pub maxconn: Option<u32>,
    pub lua_loads: Vec<LuaLoad>,
    /// `lua-prepend-path PATH [path|cpath]`, in order of appearance.
    pub lua_prepend_path: Vec<(String, String)>,
    /// `lua-allow-read DIR...`: more folders whose files scripts may read
    /// while they load and in init functions (their own folder always).
    pub lua_allow_read: Vec<std::path::PathBuf>,
    /// `setenv NAME VALUE` (also applied to the process environment).
    pub setenv: Vec<(String, String)>,
    /// `tune.*` settings by name, with where they were set.
    pub tune: Vec<(String, String, Loc)>,
    /// `log` targets as written.
    pub logs: Vec<String>,
    pub ext_loads: Vec<ExtLoad>,
    pub daemon: bool,
}

impl Global {
    pub fn tune(&self, name: &str) -> Option<&str> {
        self.tune
            .iter()
            .rev()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.as_str())
    }
}

/// `lua-load FILE [ARGS]` or `lua-load-per-thread FILE [ARGS]`.
#[derive(Debug, Clone)]
pub struct LuaLoad {
    pub file: PathBuf,
    pub args: Vec<String>,
    pub per_thread: bool,
    pub loc: Loc,
}

/// How instances of a Wasm extension are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Isolation {
    /// A pool of instances reused across requests.
    #[default]
    Pooled,
    /// A fresh instance per transaction.
    PerRequest,
}

/// What the proxy does when an extension call fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnError {
    /// HAProxy's policy: actions are logged and rules go on, services
    /// answer 500, fetches and converters give no sample.
    #[default]
    Continue,
    /// Deny the request (403).
    Deny,
    /// Answer 500.
    Status500,
}

/// `ext-load FILE.wasm [as NS] [fuel N] [timeout T] [memory SIZE] ...`.
#[derive(Debug, Clone)]
pub struct ExtLoad {
    pub file: PathBuf,
    pub namespace: String,
    pub fuel: Option<u64>,
    pub timeout: Option<Duration>,
    pub memory: Option<u64>,
    pub instances: Option<u32>,
    pub isolation: Isolation,
    pub on_error: OnError,
    pub allow_connect: Vec<String>,
    pub args: Vec<String>,
    pub loc: Loc,
}

impl ExtLoad {
    /// `ext-load FILE` with nothing else: the namespace is the file stem,
    /// limits and policy are the defaults.
    pub fn for_file(file: PathBuf) -> ExtLoad {
        let namespace = file
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        ExtLoad {
            file,
            namespace,
            fuel: None,
            timeout: None,
            memory: None,
            instances: None,
            isolation: Isolation::Pooled,
            on_error: OnError::Continue,
            allow_connect: Vec::new(),
            args: Vec::new(),
            loc: Loc {
                file: Arc::from("<command line>"),
                line: 0,
            },
        }
    }
}

/// Timeouts of a proxy (`timeout ...`).
#[derive(Debug, Clone, Default)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub client: Option<Duration>,
    pub server: Option<Duration>,
    pub http_request: Option<Duration>,
    pub http_keep_alive: Option<Duration>,
    pub queue: Option<Duration>,
    pub tunnel: Option<Duration>,
    pub check: Option<Duration>,
}

/// `balance ALGO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    First,
    Source,
}

/// `option forwardfor [except NET] [header NAME] [if-none]`.
#[derive(Debug, Clone)]
pub struct ForwardFor {
    pub header: String,
    pub if_none: bool,
}

/// `option httpchk [METHOD] [URI] [VERSION]`.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    pub method: String,
    pub uri: String,
    pub version: String,
    /// `http-check expect status N` (default: any 2xx or 3xx).
    pub expect_status: Option<u16>,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub forwardfor: Option<ForwardFor>,
    pub httplog: bool,
    pub tcplog: bool,
    pub httpchk: Option<HttpCheck>,
    pub dontlognull: bool,
    pub httpclose: bool,
    /// `option http-buffer-request`: wait for the whole body before rules.
    pub buffer_request: bool,
    /// `log global` or any `log` line in the proxy: access logs are emitted.
    pub log: bool,
    /// `option abortonclose`: a client that closes its side while its
    /// request is in flight aborts it. Off (HAProxy's default), the request
    /// goes on and its response is still sent. HAProxy aborts only while the
    /// request waits for a server; here the close aborts it until its
    /// response has been sent, and the client is answered nothing.
    pub abortonclose: bool,
}

/// `bind ADDR:PORT [options]`.
#[derive(Debug, Clone)]
pub struct Bind {
    pub addr: SocketAddr,
    pub loc: Loc,
}

/// `server NAME ADDR:PORT [options]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub check: bool,
    pub inter: Duration,
    pub rise: u32,
    pub fall: u32,
    pub weight: u32,
    pub maxconn: Option<u32>,
    pub backup: bool,
    pub disabled: bool,
    pub loc: Loc,
}

/// Which sections a proxy comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Defaults,
    Frontend,
    Backend,
    Listen,
}

impl Section {
    pub fn name(self) -> &'static str {
        match self {
            Section::Defaults => "defaults",
            Section::Frontend => "frontend",
            Section::Backend => "backend",
            Section::Listen => "listen",
        }
    }
}

/// A frontend, backend or listen section.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub name: String,
    pub section: Section,
    pub mode: Mode,
    pub loc: Loc,
    pub binds: Vec<Bind>,
    pub timeouts: Timeouts,
    pub options: Options,
    pub maxconn: Option<u32>,
    pub acls: AclTable,
    pub tcp_request_connection: Vec<Rule>,
    pub tcp_request_content: Vec<Rule>,
    pub tcp_response_content: Vec<Rule>,
    pub inspect_delay: Option<Duration>,
    pub http_request: Vec<Rule>,
    pub http_response: Vec<Rule>,
    pub http_after_response: Vec<Rule>,
    pub use_backends: Vec<UseBackend>,
    pub default_backend: Option<String>,
    pub balance: Balance,
    pub servers: Vec<ServerConfig>,
}

impl ProxyConfig {
    pub fn is_frontend(&self) -> bool {
        matches!(self.section, Section::Frontend | Section::Listen)
    }
    pub fn is_backend(&self) -> bool {
        matches!(self.section, Section::Backend | Section::Listen)
    }
}

/// `use_backend NAME|%[expr] [if|unless COND]`.
#[derive(Debug, Clone)]
pub struct UseBackend {
    pub target: BackendTarget,
    pub cond: Option<Cond>,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub enum BackendTarget {
    Name(String),
    /// A log-format string evaluated per request (`%[var(txn.be)]`).
    Dynamic(LogFormat),
}

/// One `http-request`/`http-response`/`tcp-request`... rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub action: Action,
    pub cond: Option<Cond>,
    pub loc: Loc,
}

/// `redirect location|prefix|scheme TARGET [code N] [drop-query]`.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub kind: RedirectKind,
    pub target: LogFormat,
    pub code: u16,
    pub drop_query: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectKind {
    Location,
    Prefix,
    Scheme,
}

/// `return [status N] [content-type T] [string S | lf-string S] [hdr N V]...`.
#[derive(Debug, Clone)]
pub struct ReturnSpec {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Option<LogFormat>,
    pub headers: Vec<(String, LogFormat)>,
}

/// The actions rules can take.
#[derive(Debug, Clone)]
pub enum Action {
    SetHeader {
        name: String,
        value: LogFormat,
    },
    AddHeader {
        name: String,
        value: LogFormat,
    },
    DelHeader {
        name: String,
    },
    ReplaceHeader {
        name: String,
        regex: regex::Regex,
        replace: LogFormat,
    },
    ReplaceValue {
        name: String,
        regex: regex::Regex,
        replace: LogFormat,
    },
    SetPath(LogFormat),
    SetQuery(LogFormat),
    SetUri(LogFormat),
    SetMethod(LogFormat),
    SetStatus {
        code: u16,
        reason: Option<String>,
    },
    SetVar {
        var: VarName,
        expr: Expr,
    },
    SetVarFmt {
        var: VarName,
        fmt: LogFormat,
    },
    UnsetVar(VarName),
    Redirect(Redirect),
    Deny {
        status: u16,
    },
    Return(ReturnSpec),
    /// `use-service NAME` (an extension's service).
    UseService(ExtRef),
    /// `NS.NAME [ARGS]`: an extension's action.
    Ext {
        r: ExtRef,
        facility: Facility,
        args: Vec<String>,
    },
    /// `accept` / `allow`: stop evaluating this rule set.
    Allow,
    /// `reject`: close the connection.
    Reject,
    /// `set-log-level LEVEL` (accepted; affects this transaction's log line).
    SetLogLevel(String),
}
