//! A bench target: `examples/axum_app.rs`, the axum app an embedding user writes (its own
//! routes, keyed WebSocket routing and live migration), served two ways so that
//! `bench/compare.sh` measures the relay's two paths with everything else equal:
//!
//! - `--server axum`: `axum::serve`, which wraps the socket, so WebSockets take the generic
//!   path over hyper's `Upgraded`;
//! - `--server hyper`: `tower_ws_proxy::server::serve`, which reads a WebSocket handshake
//!   itself and gives the relay the raw `TcpStream` (hyper's HTTP/1 builder serves the
//!   rest), so they take the fast path.
//!
//! ```sh
//! wsaxum --listen 127.0.0.1:17020 --server axum --backend backend-1=127.0.0.1:17101
//! ```

#[path = "../../examples/axum_app.rs"]
#[allow(unreachable_pub, dead_code)]
mod axum_app;

use std::{net::SocketAddr, process::ExitCode};

use axum::serve::ListenerExt;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use tower::discover::Change;
use tower_hashring::NodeId;
use tower_ws_proxy::{
    server::{self, HttpLimits},
    Upstream, UpstreamConfig,
};

#[derive(Clone, Copy, ValueEnum)]
enum Server {
    /// `axum::serve`: the relay's generic path.
    Axum,
    /// `tower_ws_proxy::server::serve`: the relay's fast path.
    Hyper,
}

#[derive(Parser)]
#[command(
    about = "The axum example app, served by axum::serve or by tower_ws_proxy::server::serve"
)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:17020")]
    listen: SocketAddr,
    /// Which server, i.e. which relay path.
    #[arg(long, value_enum, default_value = "axum")]
    server: Server,
    /// A backend, `id=host:port` (repeatable).
    #[arg(long = "backend", value_parser = parse_backend)]
    backends: Vec<(NodeId, String)>,
}

fn parse_backend(arg: &str) -> Result<(NodeId, String), String> {
    let (id, address) = arg.split_once('=').ok_or("a backend is id=host:port")?;
    Ok((NodeId::from(id), address.to_owned()))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let backends: Vec<_> = args
        .backends
        .into_iter()
        .map(|(id, address)| {
            let upstream = Upstream::new(address, UpstreamConfig::default());
            Ok(Change::Insert(id, upstream))
        })
        .collect();
    let members = futures_util::stream::iter(backends).chain(futures_util::stream::pending());
    let (app, _stats) = axum_app::app(Box::pin(members));
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: cannot listen on {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match args.server {
        Server::Axum => {
            // TCP_NODELAY as on the hyper side and in the gateway.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        }
        Server::Hyper => {
            // The library's fast-path server, as an embedding app calls it.
            let (_stop, stopped) = tokio::sync::watch::channel(false);
            server::serve(listener, app, HttpLimits::default(), stopped).await;
        }
    }
    ExitCode::SUCCESS
}
