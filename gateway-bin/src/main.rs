//! The reference gateway. `gateway-bin demo` runs it with three in-process backends.

use std::{net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand};
use gateway_bin::gateway::{shutdown_signal, Gateway, GatewayConfig};
use tower_hashring::NodeId;

#[derive(Parser)]
#[command(
    version,
    about = "A consistent-hash gateway for stateful WebSocket backends"
)]
struct Cli {
    /// Public listener (clients).
    #[arg(
        long,
        env = "WSCLUSTER_PUBLIC",
        default_value = "127.0.0.1:7000",
        global = true
    )]
    public: SocketAddr,
    /// Admin listener.
    #[arg(
        long,
        env = "WSCLUSTER_ADMIN",
        default_value = "127.0.0.1:7001",
        global = true
    )]
    admin: SocketAddr,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded default: the gateway plus in-process reference backends.
    Demo {
        /// How many backends to start.
        #[arg(long, default_value_t = 3)]
        backends: usize,
    },
    /// Route to running backends, each given as `id=host:port`.
    Run {
        /// A backend, e.g. `--backend backend-a=127.0.0.1:7100` (repeat for more).
        #[arg(long = "backend", value_parser = parse_backend, required = true)]
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = GatewayConfig {
        public: cli.public,
        admin: cli.admin,
        ..GatewayConfig::default()
    };
    let (backends, demo) = match cli.command.unwrap_or(Command::Demo { backends: 3 }) {
        Command::Demo { backends } => (vec![], backends),
        Command::Run { backends } => (backends, 0),
    };
    let gateway = match Gateway::start(config, backends, demo).await {
        Ok(gateway) => gateway,
        Err(error) => {
            eprintln!("error: cannot start the gateway: {error}");
            return ExitCode::FAILURE;
        }
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
    println!("  ring:     curl http://{}/admin/ring", gateway.admin);
    println!(
        "  scale up: curl -X POST http://{}/admin/backends",
        gateway.admin
    );
    shutdown_signal().await;
    println!("shutting down: closing websockets with 1001");
    gateway.shutdown().await;
    ExitCode::SUCCESS
}
