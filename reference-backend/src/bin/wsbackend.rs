//! The reference backend, standalone: `wsbackend --id backend-a --listen 127.0.0.1:7100`.
//! With `--redis`, it registers itself there (with a heartbeat) for gateways that discover
//! their members in Redis, and deregisters on shutdown.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use discovery::{AmqpAnnouncer, RedisRegistry};
use reference_backend::ReferenceBackend;
use tower_ws_migrate::MigrationSecret;
use tower_ws_proxy::server::shutdown_signal;

#[derive(Parser)]
#[command(version, about = "The wscluster reference WebSocket backend")]
struct Cli {
    /// The backend's id (the `server` field of its messages, its place on the ring).
    #[arg(long, env = "WSBACKEND_ID", required_unless_present = "probe")]
    id: Option<String>,
    /// Instead of serving: GET this `http://host:port/path` (default: this backend's own
    /// `/health` at its `--listen` address) and exit 0 on a 2xx; a health check command for
    /// images without a shell, e.g. Docker's HEALTHCHECK.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    probe: Option<String>,
    /// Where to listen.
    #[arg(long, env = "WSBACKEND_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Register in this Redis (`redis://host:port`).
    #[arg(long, env = "WSBACKEND_REDIS")]
    redis: Option<String>,
    /// Announce on this RabbitMQ (`amqp://user:password@host:port/vhost`).
    #[arg(long, env = "WSBACKEND_AMQP")]
    amqp: Option<String>,
    /// The fanout exchange to announce on.
    #[arg(
        long,
        env = "WSBACKEND_AMQP_EXCHANGE",
        default_value = "wscluster.members"
    )]
    amqp_exchange: String,
    /// The service to register under (Redis).
    #[arg(long, env = "WSBACKEND_SERVICE", default_value = "wscluster")]
    service: String,
    /// The address gateways should dial (default: the listen address).
    #[arg(long, env = "WSBACKEND_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Its share of the ring.
    #[arg(long, env = "WSBACKEND_WEIGHT", default_value_t = 1)]
    weight: u32,
    /// On SIGTERM / Ctrl-C: fail the health check and keep serving until every WebSocket has
    /// moved away, at most this long, in milliseconds.
    #[arg(long, env = "WSBACKEND_DRAIN_MS", default_value_t = 8000)]
    drain_ms: u64,
    /// The secret shared with the gateways (`[migration] secret`): a live move's
    /// `x-wscluster-migrated-from` is believed only with a valid signature.
    #[arg(long, env = "WSCLUSTER_MIGRATION_SECRET", hide_env_values = true)]
    migration_secret: Option<String>,
    /// How long a registration (Redis) or announcement (RabbitMQ) outlives a silent
    /// backend, in milliseconds.
    #[arg(long, env = "WSBACKEND_TTL_MS", default_value_t = 3000)]
    ttl_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(url) = &cli.probe {
        let own = || {
            let port = cli.listen.port();
            let host = if cli.listen.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                cli.listen.ip().to_string()
            };
            format!("http://{host}:{port}/health")
        };
        let url = if url.is_empty() { own() } else { url.clone() };
        return probe(&url).await;
    }
    let id = cli.id.clone().unwrap_or_default();
    let listener = match ReferenceBackend::listen(cli.listen) {
        Ok(listener) => listener,
        Err(error) => return fail(&format!("cannot listen on {}: {error}", cli.listen)),
    };
    let heartbeat = match &cli.redis {
        None => None,
        Some(url) => {
            let advertised = cli.advertise.unwrap_or(cli.listen);
            let me = discovery::Backend::new(id.as_str(), advertised).weight(cli.weight);
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
    let announcer = cli.amqp.as_ref().map(|url| {
        let advertised = cli.advertise.unwrap_or(cli.listen);
        let me = discovery::Backend::new(id.as_str(), advertised).weight(cli.weight);
        AmqpAnnouncer::start(
            url,
            &cli.amqp_exchange,
            me,
            Duration::from_millis(cli.ttl_ms),
        )
    });
    println!("backend {id} on {}", cli.listen);
    let drain = Duration::from_millis(cli.drain_ms);
    // Leaving starts with deregistering, so gateways move the users away during the drain.
    let leave = async move {
        shutdown_signal().await;
        if let Some(heartbeat) = heartbeat {
            if let Err(error) = heartbeat.deregister().await {
                eprintln!("warning: could not deregister: {error}");
            }
        }
        if let Some(announcer) = announcer {
            announcer.leave().await;
        }
    };
    let backend = match &cli.migration_secret {
        Some(secret) => ReferenceBackend::new(id).with_secret(MigrationSecret::new(secret.trim())),
        None => ReferenceBackend::new(id),
    };
    let served = backend.serve_draining(listener, leave, drain).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// One HTTP GET; success on a 2xx within 2 s.
async fn probe(url: &str) -> ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rest) = url.strip_prefix("http://") else {
        return fail(&format!("--probe wants an http:// URL, got `{url}`"));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let check = async {
        let mut tcp = tokio::net::TcpStream::connect(authority).await?;
        let request =
            format!("GET /{path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut status = [0u8; 12];
        tcp.read_exact(&mut status).await?;
        Ok::<_, std::io::Error>(status[9] == b'2')
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
