//! The command line: `proxy -f FILE`, `proxy -c -f FILE`, quick mode.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::config::{self, ConfigError, ConfigErrors, Loaded};
use std::sync::Arc;

use crate::config::model::ExtLoad;
use crate::ext::{Extension, Facility, Registration, Registry, ServiceMode};
use crate::proxy::Proxy;
use crate::sample::map::MapStore;
use crate::wasm;

/// A reverse proxy that HAProxy users recognise, with extensions sandboxed
/// in WebAssembly.
#[derive(Parser, Debug)]
#[command(name = "proxy", version, about, disable_version_flag = true)]
pub struct Args {
    /// Configuration file (HAProxy syntax); may be given several times.
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Check the configuration and exit (0 when valid, 1 otherwise).
    #[arg(short = 'c', long = "check")]
    pub check: bool,

    /// Print the version and exit.
    #[arg(short = 'v', long = "version")]
    pub version: bool,

    /// Quick mode: address to listen on (without -f).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Quick mode: URL of the server to forward to (without -f).
    #[arg(long, value_name = "URL")]
    pub backend: Option<String>,

    /// Print the configuration quick mode is equivalent to, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Quick mode: load a Wasm extension (repeatable). Its http-req actions
    /// run on every request, its http-res actions on every response, its
    /// http service answers when there is no backend, its tasks run.
    #[arg(long = "ext", value_name = "FILE.wasm")]
    pub exts: Vec<PathBuf>,

    /// Only log warnings and errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Accepted for HAProxy compatibility (moonbox always runs in the
    /// foreground): `-db`, `-d`, `-V`.
    #[arg(short = 'd', value_name = "FLAGS", num_args = 0..=1, default_missing_value = "", hide = true)]
    pub debug_flags: Option<String>,
}

/// Sets up operator logs on standard error (`RUST_LOG` overrides the level).
pub fn init_logging(quiet: bool) {
    // Extensions' own log lines show at every level in the foreground, as
    // HAProxy prints `core.Debug` on its terminal.
    let default = if quiet { "warn" } else { "info,ext=debug" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Where the configuration comes from.
enum Source {
    Files(Vec<PathBuf>),
    /// Quick mode: generated text, and the extensions loaded to write it.
    Text(String, Vec<Preloaded>),
}

/// An extension loaded before its configuration was written (quick mode).
#[derive(Clone)]
struct Preloaded {
    file: PathBuf,
    ext: Arc<dyn Extension>,
}

impl Source {
    fn load(&self) -> Result<Loaded, ConfigErrors> {
        let pre: &[Preloaded] = match self {
            Source::Files(_) => &[],
            Source::Text(_, p) => p,
        };
        let mut loader = |g: &config::model::Global,
                          maps: &Arc<MapStore>,
                          reg: &mut Registry|
         -> Result<(), Vec<ConfigError>> {
            let workers = g.nbthread.unwrap_or(1);
            let mut errors = Vec::new();
            for l in &g.ext_loads {
                if let Some(p) = pre.iter().find(|p| p.file == l.file) {
                    reg.add(Arc::clone(&p.ext));
                    continue;
                }
                match load_extension(l, workers, Some(maps)) {
                    Ok(ext) => reg.add(ext),
                    Err(e) => errors.push(ConfigError::at(
                        &l.loc,
                        format!("cannot load extension '{}': {e:#}", l.file.display()),
                    )),
                }
            }
            if let Err(e) = load_lua(g, workers, maps, reg) {
                errors.push(ConfigError::at(
                    &g.lua_loads[0].loc,
                    format!("lua-load: {e:#}"),
                ));
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors)
            }
        };
        match self {
            Source::Files(f) => config::load(f, Registry::new(), &mut loader),
            Source::Text(t, _) => config::load_sources(
                &[(PathBuf::from("<quick mode>"), t.clone())],
                Registry::new(),
                &mut loader,
            ),
        }
    }
}

/// Loads the configuration's Lua scripts, if any, as the extension `lua`.
fn load_lua(
    g: &config::model::Global,
    workers: usize,
    maps: &Arc<MapStore>,
    reg: &mut Registry,
) -> anyhow::Result<()> {
    if let Some(settings) = wasm::lua::settings(g, workers, Some(Arc::clone(maps)))? {
        reg.add(Arc::new(wasm::lua::load(settings)?));
    }
    Ok(())
}

/// Loads the extension of an `ext-load` line.
fn load_extension(
    l: &ExtLoad,
    workers: usize,
    maps: Option<&Arc<MapStore>>,
) -> anyhow::Result<Arc<dyn Extension>> {
    let mut settings = wasm::Settings::from_load(l, workers)?;
    settings.maps = maps.cloned();
    Ok(Arc::new(wasm::WasmExtension::load(&l.file, settings)?))
}

/// Quick mode's `--ext` files, loaded with default limits so that their
/// registrations can be written into the configuration.
fn preload(files: &[PathBuf]) -> anyhow::Result<Vec<Preloaded>> {
    let mut out: Vec<Preloaded> = Vec::new();
    for file in files {
        let l = ExtLoad::for_file(file.clone());
        if out.iter().any(|p| p.ext.namespace() == l.namespace) {
            bail!("two extensions named '{}': rename one file", l.namespace);
        }
        let ext = load_extension(&l, 1, None)
            .with_context(|| format!("cannot load extension '{}'", file.display()))?;
        out.push(Preloaded {
            file: file.clone(),
            ext,
        });
    }
    Ok(out)
}

/// The configuration quick mode stands for.
pub fn quick_config(listen: &str, backend: Option<&str>) -> anyhow::Result<String> {
    quick_config_with(listen, backend, &[])
}

/// Quick mode with extensions: each is `ext-load`ed; its http-req actions
/// run on every request and its http-res actions on every response (those
/// that take no argument); its first http service answers when there is no
/// backend.
fn quick_config_with(
    listen: &str,
    backend: Option<&str>,
    exts: &[Preloaded],
) -> anyhow::Result<String> {
    let listen = if listen.contains(':') {
        listen.to_string()
    } else {
        format!(":{listen}")
    };
    let mut s = String::new();
    s.push_str("global\n    log stdout format raw local0\n");
    for p in exts {
        s.push_str(&format!(
            "    ext-load {} as {}\n",
            quote_word(&p.file.display().to_string()),
            p.ext.namespace()
        ));
    }
    s.push('\n');
    s.push_str("defaults\n    mode http\n    log global\n    option httplog\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n");
    s.push_str(&format!("frontend quick\n    bind {listen}\n"));
    let mut service = None;
    for p in exts {
        let ns = p.ext.namespace();
        for r in p.ext.registrations() {
            match r {
                Registration::Action {
                    name,
                    facilities,
                    nargs: 0,
                } => {
                    if facilities.contains(&Facility::HttpReq) {
                        s.push_str(&format!("    http-request {ns}.{name}\n"));
                    }
                    if facilities.contains(&Facility::HttpRes) {
                        s.push_str(&format!("    http-response {ns}.{name}\n"));
                    }
                }
                Registration::Service {
                    name,
                    mode: ServiceMode::Http,
                } if service.is_none() => service = Some(format!("{ns}.{name}")),
                _ => {}
            }
        }
    }
    if let Some(url) = backend {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("invalid backend URL '{url}', expected http://HOST:PORT"))?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            bail!("backend URL '{url}' must use http://");
        }
        let host = uri.host().with_context(|| {
            format!("backend URL '{url}' has no host, expected http://HOST:PORT")
        })?;
        let port = uri.port_u16().unwrap_or(80);
        s.push_str("    default_backend app\n\n");
        s.push_str(&format!("backend app\n    server app1 {host}:{port}\n"));
    } else if let Some(svc) = service {
        s.push_str(&format!("    http-request use-service {svc}\n"));
    } else {
        s.push_str("    http-request return status 503 content-type text/plain string \"no backend configured\\n\"\n");
    }
    Ok(s)
}

/// Runs the command line; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.version {
        println!("moonbox proxy {}", env!("CARGO_PKG_VERSION"));
        return Ok(ExitCode::SUCCESS);
    }
    let source = if !args.files.is_empty() {
        if args.listen.is_some() || args.backend.is_some() || !args.exts.is_empty() {
            bail!("--listen, --backend and --ext are for quick mode, without -f");
        }
        Source::Files(args.files.clone())
    } else if args.listen.is_some()
        || args.backend.is_some()
        || args.print_config
        || !args.exts.is_empty()
    {
        let listen = args
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:8080".to_string());
        let pre = preload(&args.exts)?;
        Source::Text(
            quick_config_with(&listen, args.backend.as_deref(), &pre)?,
            pre,
        )
    } else {
        bail!("no configuration: use -f FILE, or --listen ADDR --backend URL (see --help)");
    };
    if args.print_config {
        if let Source::Text(t, _) = &source {
            print!("{t}");
            return Ok(ExitCode::SUCCESS);
        }
        bail!("--print-config is for quick mode, without -f");
    }
    let loaded = match source.load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.check {
        println!("Configuration file is valid");
        return Ok(ExitCode::SUCCESS);
    }
    let threads = loaded.config.global.nbthread.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // One thread (`nbthread 1`): a single-threaded scheduler, as HAProxy
    // runs; more: a work-stealing pool of that many workers.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        .enable_all()
        .thread_name("proxy-worker")
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(serve(source, loaded))
}

async fn serve(source: Source, loaded: Loaded) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let proxy = match Proxy::start(&loaded).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    drop(loaded);
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tracing::info!("proxy started");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("reloading configuration");
                match source.load() {
                    Ok(l) => match proxy.reload(&l).await {
                        Ok(()) => tracing::info!("configuration reloaded"),
                        Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
                    },
                    Err(e) => tracing::error!("reload failed, keeping the running configuration:\n{e}"),
                }
            }
        }
    }
    tracing::info!("stopping: finishing in-flight requests");
    let grace = Duration::from_secs(30);
    tokio::select! {
        _ = proxy.shutdown(grace) => {}
        _ = term.recv() => tracing::warn!("second signal: stopping now"),
        _ = int.recv() => tracing::warn!("second signal: stopping now"),
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Quotes a word for the configuration when it needs it.
fn quote_word(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\' | b'#' | b'$'))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
