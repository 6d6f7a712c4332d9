//! The reference gateway. `gateway-bin demo` runs it with three in-process backends.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use gateway_bin::{
    admin_access::AdminToken, config::ConfigFile, demo, descriptors, gateway::Gateway,
};
use tower_hashring::NodeId;
use tower_ws_proxy::server::shutdown_signal;

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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // No escape sequences in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let file = match cli.config.as_deref().map(ConfigFile::load).transpose() {
        Ok(file) => file.unwrap_or_default(),
        Err(error) => return fail(&error),
    };
    let mut config = match file.gateway_config() {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    match descriptors::raise_limit() {
        Ok(limit) => {
            let (websockets, http) = limit.default_caps();
            let (sets_websockets, sets_http) = file.sets_caps();
            if !sets_websockets {
                config.max_connections = websockets;
            }
            if !sets_http {
                config.max_http_connections = http;
            }
            tracing::info!(
                was = limit.was,
                soft = limit.soft,
                hard = limit.hard,
                max_connections = config.max_connections,
                max_http_connections = config.max_http_connections,
                "descriptor limit"
            );
        }
        Err(error) => tracing::warn!(%error, "cannot read or raise the descriptor limit"),
    }
    config.public = cli.public.unwrap_or(config.public);
    config.admin = cli.admin.unwrap_or(config.admin);
    config.workers = cli.workers.unwrap_or(config.workers);
    let (backends, demo) = match cli.command.unwrap_or(Command::Demo { backends: 3 }) {
        Command::Demo { backends } => (file.backends(), backends),
        Command::Run { backends } => ([file.backends(), backends].concat(), 0),
    };
    if demo > 0 && config.migration.secret.is_none() {
        // The demo's backends run in this process: they share a fresh secret.
        config.migration.secret = Some(demo::fresh_secret());
    }
    // The demo's admin API gets a fresh token unless one is configured.
    let mut shown_token = None;
    if demo > 0 && config.admin_access.token.is_none() {
        let token = demo::fresh_token();
        match AdminToken::new(&token) {
            Ok(admin_token) => config.admin_access.token = Some(admin_token),
            Err(error) => return fail(&error),
        }
        shown_token = Some(token);
    }
    if config.admin_access.token.is_none() {
        tracing::warn!(admin = %config.admin, "the admin API has no token: anyone on this host can use it");
    }
    let discovered = config.discovery.redis.is_some()
        || config.discovery.amqp.is_some()
        || config.discovery.docker.is_some()
        || config.discovery.swarm.is_some();
    if backends.is_empty() && demo == 0 && !discovered {
        return fail(
            &"no backends: give `--backend id=host:port`, `[[backends]]` or a \
                      [discovery], [docker] or [swarm] source in the config file",
        );
    }
    let config_has_token = config.admin_access.token.is_some() && shown_token.is_none();
    let started = if demo > 0 {
        demo::start(config, backends, demo).await
    } else {
        Gateway::start(config, backends).await
    };
    let gateway = match started {
        Ok(gateway) => gateway,
        Err(error) => return fail(&format!("cannot start the gateway: {error}")),
    };
    println!(
        "wscluster gateway on ws://{0} (admin on http://{1})",
        gateway.public, gateway.admin
    );
    println!("  connect:  websocat ws://{}/connect/42", gateway.public);
    println!(
        "  send:     curl -X POST 'http://{}/send?userId=42' -d hello",
        gateway.public
    );
    let auth = match &shown_token {
        Some(token) => {
            println!("  admin token: {token}");
            format!("-H 'Authorization: Bearer {token}' ")
        }
        None if config_has_token => "-H \"Authorization: Bearer $WSCLUSTER_ADMIN_TOKEN\" ".into(),
        None => String::new(),
    };
    let fragment = match &shown_token {
        Some(token) => format!("#token={token}"),
        None if config_has_token => "#token=<the admin token>".into(),
        None => String::new(),
    };
    println!("  dashboard: http://{}/{fragment}", gateway.admin);
    println!("  ring:     curl {auth}http://{}/admin/ring", gateway.admin);
    println!(
        "  scale up: curl {auth}-H 'Content-Type: application/json' -X POST http://{}/admin/backends",
        gateway.admin
    );
    shutdown_signal().await;
    let bound = gateway.shutdown_bound();
    println!(
        "shutting down: closing websockets with 1001 (at most {bound:?}; signal again to exit now)"
    );
    let code = tokio::select! {
        () = gateway.shutdown() => 0,
        () = shutdown_signal() => {
            eprintln!("second signal: exiting now");
            130
        }
        // The shutdown bounds itself; this only guards against a bug in that.
        () = tokio::time::sleep(bound + std::time::Duration::from_secs(2)) => {
            eprintln!("shutdown overran {bound:?}: exiting");
            1
        }
    };
    // Not a return: dropping the runtime would wait for blocking tasks (a DNS lookup, say).
    std::process::exit(code)
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
