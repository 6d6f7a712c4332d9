//! The reference gateway. `gateway-bin demo` runs it with three in-process backends.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use gateway_bin::{admin_access::AdminToken, config::GatewayConfig, demo, gateway::Gateway};
use tower_hashring::NodeId;
use tower_ws_proxy::server::{
    shutdown_signal,
    tls::{Certificates, TlsSettings},
};

/// jemalloc rather than glibc's malloc: tokio's task cells and I/O records are 128-byte
/// aligned, which glibc serves by cutting fragments off larger chunks, and a fresh gateway's
/// idle WebSockets then held 3,203 B each against 2,997 B here (bench/README.md, issue 25).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    version,
    about = "A consistent-hash gateway for stateful WebSocket backends"
)]
struct Cli {
    /// A TOML configuration file (see the README); flags and environment override it.
    #[arg(long, env = "WSCLUSTER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Public listener (clients) [default: 127.0.0.1:7000].
    #[arg(long, env = "WSCLUSTER_PUBLIC", global = true)]
    public: Option<SocketAddr>,
    /// Admin listener [default: 127.0.0.1:7001].
    #[arg(long, env = "WSCLUSTER_ADMIN", global = true)]
    admin: Option<SocketAddr>,
    /// Threads serving the public listener, each with its own runtime and listener (default:
    /// one per core); 0 serves on the main runtime.
    #[arg(long, env = "WSCLUSTER_WORKERS", global = true)]
    workers: Option<usize>,
    /// TLS on the public listener (`wss://`): the PEM certificate chain, leaf first. With
    /// `--tls-key`. New handshakes get the file's new contents within ~2 s of a change, or
    /// at once on SIGHUP; a file that fails to load keeps the previous certificate.
    #[arg(
        long,
        env = "WSCLUSTER_TLS_CERT",
        global = true,
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(
        long,
        env = "WSCLUSTER_TLS_KEY",
        global = true,
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Log lines as text or as JSON objects (one per line). Colours only on a terminal.
    #[arg(
        long,
        env = "WSCLUSTER_LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded default: the gateway plus in-process reference backends.
    Demo {
        /// How many backends to start.
        #[arg(long, default_value_t = 3)]
        backends: usize,
    },
    /// Route to running backends: the file's `[[backends]]` plus any `--backend`.
    Run {
        /// A backend, e.g. `--backend backend-a=127.0.0.1:7100` (repeat for more).
        #[arg(long = "backend", value_parser = parse_backend)]
        backends: Vec<(NodeId, SocketAddr)>,
    },
}

fn parse_backend(value: &str) -> Result<(NodeId, SocketAddr), String> {
    let (id, address) = value
        .split_once('=')
        .ok_or_else(|| format!("`{value}` is not `id=host:port`"))?;
    let address = address
        .parse()
        .map_err(|e| format!("backend `{id}`: address `{address}`: {e}"))?;
    Ok((NodeId::from(id), address))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let launch = match load_config(cli) {
        Ok(launch) => launch,
        Err(error) => return fail(&error),
    };
    let shown_token = launch.shown_token.clone();
    let config_has_token = launch.config.admin.token.is_some() && shown_token.is_none();
    let tls = ServedTls {
        public: launch.config.tls.is_some(),
        admin: launch.config.tls.is_some() && launch.config.admin.tls,
    };
    let started = if launch.demo > 0 {
        demo::start(launch.config, launch.backends, launch.demo).await
    } else {
        Gateway::start(launch.config, launch.backends).await
    };
    let gateway = match started {
        Ok(gateway) => gateway,
        Err(error) => return fail(&format!("cannot start the gateway: {error}")),
    };
    if let Some(certificates) = gateway.certificates() {
        reload_on_hangup(certificates);
    }
    print_banner(&gateway, shown_token.as_deref(), config_has_token, tls);
    let code = run_until_signal(gateway).await;
    // Not a return: dropping the runtime would wait for blocking tasks (a DNS lookup, say).
    std::process::exit(code)
}

/// Log lines to stdout, filtered by `RUST_LOG` (default: info).
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // No escape sequences in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// What the gateway starts with: the settings, its backends, and how many in-process demo
/// backends.
struct Launch {
    config: GatewayConfig,
    backends: Vec<(NodeId, SocketAddr)>,
    demo: usize,
    /// The demo's fresh admin token, to print once.
    shown_token: Option<String>,
}

/// The config file under the flags and environment, the caps fitted to the descriptor
/// limit, and the demo's secret and token when it runs one.
fn load_config(cli: Cli) -> Result<Launch, String> {
    let config = match cli.config.as_deref() {
        Some(path) => GatewayConfig::load(path),
        None => Ok(GatewayConfig {
            listen: gateway_bin::config::Listen::from_file(),
            ..GatewayConfig::default()
        }),
    };
    let mut config = config
        .and_then(|config| config.with_env(|name| std::env::var(name).ok()))
        .map_err(|e| e.to_string())?;
    fit_caps_to_descriptors(&mut config);
    let listen = &mut config.listen;
    listen.public = cli.public.unwrap_or(listen.public);
    listen.admin = cli.admin.unwrap_or(listen.admin);
    listen.workers = cli.workers.unwrap_or(listen.workers);
    if let (Some(cert), Some(key)) = (cli.tls_cert, cli.tls_key) {
        // The flags win over the file's `[tls]`, and keep its other settings.
        config.tls = Some(match config.tls.take() {
            Some(mut tls) => {
                (tls.cert, tls.key) = (cert, key);
                tls
            }
            None => TlsSettings::new(cert, key),
        });
    }
    let (backends, demo) = match cli.command.unwrap_or(Command::Demo { backends: 3 }) {
        Command::Demo { backends } => (Vec::new(), backends),
        Command::Run { backends } => (backends, 0),
    };
    if demo > 0 && config.migration.secret.is_none() {
        // The demo's backends run in this process: they share a fresh secret.
        config.migration.secret = Some(demo::fresh_secret());
    }
    // The demo's admin API gets a fresh token unless one is configured.
    let mut shown_token = None;
    if demo > 0 && config.admin.token.is_none() {
        let token = demo::fresh_token();
        config.admin.token = Some(AdminToken::new(&token).map_err(|e| e.to_string())?);
        shown_token = Some(token);
    }
    if config.admin.token.is_none() {
        tracing::warn!(admin = %config.listen.admin, "the admin API has no token: anyone on this host can use it");
    }
    let no_backends = backends.is_empty() && config.backends.is_empty();
    if no_backends && demo == 0 && !config.discovery.discovers() {
        return Err(
            "no backends: give `--backend id=host:port`, `[[backends]]` or a \
                    [discovery] source in the config file"
                .into(),
        );
    }
    Ok(Launch {
        config,
        backends,
        demo,
        shown_token,
    })
}

/// On SIGHUP, new TLS handshakes get the certificate files' contents at once (the gateway
/// also reloads them when they change). Failures are logged and counted by the reload, and
/// the previous certificate stays in use.
fn reload_on_hangup(certificates: &Arc<Certificates>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let certificates = Arc::downgrade(certificates);
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "no SIGHUP handler: certificates reload on file changes only");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let Some(certificates) = certificates.upgrade() else {
                    return;
                };
                tracing::info!("SIGHUP: reloading the TLS certificates");
                // Reading files blocks: off the runtime's threads.
                drop(tokio::task::spawn_blocking(move || certificates.reload()).await);
            }
        });
    }
}

/// Raises the descriptor limit, and sizes the caps the file leaves unset to it.
fn fit_caps_to_descriptors(config: &mut GatewayConfig) {
    // The limit, or why it could not be read, is logged by `raise_limit`.
    let Ok(limit) = tower_ws_proxy::server::descriptors::raise_limit() else {
        return;
    };
    let (websockets, http) = limit.default_caps();
    let max_websockets = *config.proxy.max_websockets.get_or_insert(websockets);
    if config.http.open_connections.is_none() {
        config.http = config.http.clone().open_connections(http);
    }
    tracing::info!(soft = limit.soft, max_websockets, "connection caps");
}

/// Where to connect (`tls`: which listeners serve TLS), and ready-to-paste commands with the
/// admin token (`shown`: the demo's fresh one; `configured`: one from the config, not printed).
fn print_banner(gateway: &Gateway, shown: Option<&str>, configured: bool, tls: ServedTls) {
    let (public, admin) = (gateway.public, gateway.admin);
    let (ws, http) = if tls.public {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let admin_http = if tls.admin { "https" } else { "http" };
    println!("wscluster gateway on {ws}://{public} (admin on {admin_http}://{admin})");
    println!("  connect:  websocat {ws}://{public}/connect/42");
    println!("  send:     curl -X POST '{http}://{public}/send?userId=42' -d hello");
    let (auth, fragment) = match shown {
        Some(token) => {
            println!("  admin token: {token}");
            (
                format!("-H 'Authorization: Bearer {token}' "),
                format!("#token={token}"),
            )
        }
        None if configured => (
            "-H \"Authorization: Bearer $WSCLUSTER_ADMIN_TOKEN\" ".into(),
            "#token=<the admin token>".into(),
        ),
        None => (String::new(), String::new()),
    };
    println!("  dashboard: {admin_http}://{admin}/{fragment}");
    println!("  ring:     curl {auth}{admin_http}://{admin}/admin/ring");
    println!(
        "  scale up: curl {auth}-H 'Content-Type: application/json' -X POST {admin_http}://{admin}/admin/backends"
    );
}

/// Which listeners serve TLS, for the banner.
#[derive(Clone, Copy)]
struct ServedTls {
    public: bool,
    admin: bool,
}

/// Serves until Ctrl-C or SIGTERM, or until a new process took the listeners over
/// (SIGUSR2), then shuts down within its bound; a second Ctrl-C exits at once, a repeated
/// SIGTERM does not (`interrupted_again`). Returns the exit code.
async fn run_until_signal(gateway: Gateway) -> i32 {
    loop {
        tokio::select! {
            () = shutdown_signal() => break,
            taken = tower_ws_proxy::server::handover::upgraded_on_signal(gateway.upgrader()) => {
                let pid = taken.pid;
                let handed = gateway.hand_over(taken).await;
                let (p50, p99, max) = handed.pause_percentiles();
                println!(
                    "upgrade: {} websockets handed to process {pid} in {:?} (paused p50 {p50:?}, \
                     p99 {p99:?}, max {max:?}), {} closed with 1012, {} kept",
                    handed.handed, handed.elapsed, handed.closed, handed.kept
                );
                match handed.failed {
                    Some(why) if gateway.accepting() => eprintln!("upgrade failed ({why}): still serving"),
                    _ => break,
                }
            }
        }
    }
    let bound = gateway.shutdown_bound();
    println!(
        "shutting down: closing websockets with 1001 (at most {bound:?}; Ctrl-C again to exit now)"
    );
    tokio::select! {
        () = gateway.shutdown() => 0,
        () = tower_ws_proxy::server::interrupted_again() => {
            eprintln!("second Ctrl-C: exiting now");
            130
        }
        // The shutdown bounds itself; this only guards against a bug in that.
        () = tokio::time::sleep(bound + std::time::Duration::from_secs(2)) => {
            eprintln!("shutdown overran {bound:?}: exiting");
            1
        }
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
