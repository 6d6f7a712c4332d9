//! The reference backend, standalone: `wsbackend --id backend-a --listen 127.0.0.1:7100`.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use gateway_bin::{backend::Backend, gateway::shutdown_signal};

#[derive(Parser)]
#[command(version, about = "The wscluster reference WebSocket backend")]
struct Cli {
    /// The backend's id (the `server` field of its messages).
    #[arg(long, env = "WSBACKEND_ID")]
    id: String,
    /// Where to listen.
    #[arg(long, env = "WSBACKEND_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let listener = match Backend::listen(cli.listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: cannot listen on {}: {error}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("backend {} on {}", cli.id, cli.listen);
    match Backend::new(cli.id)
        .serve(listener, shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
