//! The command line: `proxy -f FILE`, `proxy -c -f FILE`, quick mode.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::config::{self, ConfigError, ConfigErrors, Loaded};
use crate::ext::Registry;
use crate::proxy::Proxy;

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
    let default = if quiet { "warn" } else { "info" };
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
    Text(String),
}

impl Source {
    fn load(&self) -> Result<Loaded, ConfigErrors> {
        let mut loader = |_: &config::model::Global,
                          _: &mut Registry|
         -> Result<(), Vec<ConfigError>> { Ok(()) };
        match self {
            Source::Files(f) => config::load(f, Registry::new(), &mut loader),
            Source::Text(t) => config::load_sources(
                &[(PathBuf::from("<quick mode>"), t.clone())],
                Registry::new(),
                &mut loader,
            ),
        }
    }
}

/// The configuration quick mode stands for.
pub fn quick_config(listen: &str, backend: Option<&str>) -> anyhow::Result<String> {
    let listen = if listen.contains(':') {
        listen.to_string()
    } else {
        format!(":{listen}")
    };
    let mut s = String::new();
    s.push_str("global\n    log stdout format raw local0\n\n");
    s.push_str("defaults\n    mode http\n    log global\n    option httplog\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n");
    s.push_str(&format!("frontend quick\n    bind {listen}\n"));
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
        if args.listen.is_some() || args.backend.is_some() {
            bail!("--listen and --backend are for quick mode, without -f");
        }
        Source::Files(args.files.clone())
    } else if args.listen.is_some() || args.backend.is_some() || args.print_config {
        let listen = args
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:8080".to_string());
        Source::Text(quick_config(&listen, args.backend.as_deref())?)
    } else {
        bail!("no configuration: use -f FILE, or --listen ADDR --backend URL (see --help)");
    };
    if args.print_config {
        if let Source::Text(t) = &source {
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
