//! The reference backend, standalone: `wsbackend --id backend-a --listen 127.0.0.1:7100`.
//! With `--redis`, it registers itself there (with a heartbeat) for gateways that discover
//! their members in Redis, and deregisters on shutdown.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use discovery::RedisRegistry;
use gateway_bin::{backend::Backend, gateway::shutdown_signal};

#[derive(Parser)]
#[command(version, about = "The wscluster reference WebSocket backend")]
struct Cli {
    /// The backend's id (the `server` field of its messages, its place on the ring).
    #[arg(long, env = "WSBACKEND_ID")]
    id: String,
    /// Where to listen.
    #[arg(long, env = "WSBACKEND_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Register in this Redis (`redis://host:port`).
    #[arg(long, env = "WSBACKEND_REDIS")]
    redis: Option<String>,
    /// The service to register under.
    #[arg(long, env = "WSBACKEND_SERVICE", default_value = "wscluster")]
    service: String,
    /// The address gateways should dial (default: the listen address).
    #[arg(long, env = "WSBACKEND_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Its share of the ring.
    #[arg(long, env = "WSBACKEND_WEIGHT", default_value_t = 1)]
    weight: u32,
    /// How long the registration outlives a silent backend, in milliseconds.
    #[arg(long, env = "WSBACKEND_TTL_MS", default_value_t = 3000)]
    ttl_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let listener = match Backend::listen(cli.listen) {
        Ok(listener) => listener,
        Err(error) => return fail(&format!("cannot listen on {}: {error}", cli.listen)),
    };
    let heartbeat = match &cli.redis {
        None => None,
        Some(url) => {
            let advertised = cli.advertise.unwrap_or(cli.listen);
            let me = discovery::Backend::new(cli.id.as_str(), advertised).weight(cli.weight);
            let registered = async {
                RedisRegistry::new(url, cli.service.as_str())?
                    .ttl(Duration::from_millis(cli.ttl_ms))
                    .register(me)
                    .await
            };
            match registered.await {
                Ok(heartbeat) => Some(heartbeat),
                Err(error) => return fail(&format!("cannot register in {url}: {error}")),
            }
        }
    };
    println!("backend {} on {}", cli.id, cli.listen);
    let served = Backend::new(cli.id)
        .serve(listener, shutdown_signal())
        .await;
    if let Some(heartbeat) = heartbeat {
        if let Err(error) = heartbeat.deregister().await {
            eprintln!("warning: could not deregister: {error}");
        }
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
