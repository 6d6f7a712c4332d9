//! The echo peers of the Autobahn|Testsuite run (`tests/autobahn/`), on tokio-tungstenite.
//!
//! `wsecho server --listen 127.0.0.1:9100` echoes every text and binary message; it does not
//! check the Host header, so it can sit behind the gateway (the backend of
//! `wstest -m fuzzingclient`). It negotiates no extension, so it serves 1.* to 10.*.
//!
//! `wsecho client --url ws://127.0.0.1:9001 --agent gateway --connect 127.0.0.1:7000` is the
//! testee of `wstest -m fuzzingserver`: it asks `/getCaseCount`, runs each case
//! (`/runCase?case=N&agent=A`, echoing every message), then asks `/updateReports?agent=A`.
//! The case connections go to `--connect` (the gateway, or the fuzzing server itself, the
//! default) while their URL, and so their Host header, stays the fuzzing server's.
//! `--first`/`--last` run only a range of the case numbers. It mirrors `echo_client.py`:
//! a case silent for `--idle-timeout` seconds, or longer than `--case-timeout` in all, is
//! abandoned; the exit status is non-zero only if the fuzzing server cannot be reached.
//! `--connect-ca ca.pem` makes the case connections TLS (to a gateway serving `wss://`),
//! checked against that CA and the `--connect` host.

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpListener, time::timeout};
use tokio_tungstenite::{
    accept_async_with_config, client_async_with_config,
    tungstenite::{
        http::Uri,
        protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig},
        Error, Message,
    },
    WebSocketStream,
};
use wscluster_tools::tls::{ClientStream, TlsClient};

/// 9.* sends messages (and frames) of up to 16 MiB.
const MAX_SIZE: usize = 32 << 20;

#[derive(Parser)]
#[command(
    version,
    about = "Echo server and fuzzingserver echo client for Autobahn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo every text and binary message of every connection.
    Server {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
    },
    /// Run the cases of `wstest -m fuzzingserver`, echoing every message.
    Client(ClientArgs),
}

#[derive(Args)]
struct ClientArgs {
    /// The fuzzing server's ws:// URL.
    #[arg(long, alias = "server")]
    url: String,
    /// The agent name of the reports.
    #[arg(long)]
    agent: String,
    /// host:port to open the case connections to (default: the URL's).
    #[arg(long, alias = "via")]
    connect: Option<String>,
    /// Open the case connections in TLS, trusting this CA certificate (PEM).
    #[arg(long, requires = "connect")]
    connect_ca: Option<std::path::PathBuf>,
    /// The first case number to run (1-based).
    #[arg(long, default_value_t = 1)]
    first: u32,
    /// The last case number to run (default: the case count).
    #[arg(long)]
    last: Option<u32>,
    /// Abandon a case after this many seconds without a frame.
    #[arg(long, default_value_t = 4.0)]
    idle_timeout: f64,
    /// Abandon a case after this many seconds in all.
    #[arg(long, default_value_t = 120.0)]
    case_timeout: f64,
    /// Only ask the fuzzing server to write its reports.
    #[arg(long)]
    update_only: bool,
    /// Do not ask for the reports at the end (another client runs the other cases).
    #[arg(long, conflicts_with = "update_only")]
    no_update: bool,
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_SIZE))
        .max_frame_size(Some(MAX_SIZE))
}

/// Echoes text and binary messages until the stream ends; control frames are answered by
/// tungstenite itself. A protocol violation, bad UTF-8 or an oversized message fails the
/// connection with a Close frame of the matching code (tungstenite only reports them).
async fn echo<S>(ws: &mut WebSocketStream<S>, idle: Option<Duration>) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let next = match idle {
            Some(idle) => match timeout(idle, ws.next()).await {
                Ok(next) => next,
                Err(_) => return Err(format!("nothing for {:.0} s", idle.as_secs_f64())),
            },
            None => ws.next().await,
        };
        match next {
            None => return Ok(()),
            Some(Err(error)) => {
                fail(ws, &error).await;
                return Ok(());
            }
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if ws.send(message).await.is_err() {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
        }
    }
}

/// _Fails the WebSocket Connection_ (RFC 6455, 7.1.7): a Close frame with the code for this
/// error, then a short wait for the peer's answer or the end of the TCP connection.
async fn fail<S>(ws: &mut WebSocketStream<S>, error: &Error)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let code = match error {
        Error::Protocol(_) => CloseCode::Protocol,
        Error::Utf8(_) => CloseCode::Invalid,
        Error::Capacity(_) => CloseCode::Size,
        _ => return,
    };
    let close = CloseFrame {
        code,
        reason: "".into(),
    };
    let closed = async {
        if ws.close(Some(close)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = timeout(Duration::from_secs(2), closed).await;
}

async fn serve(listen: &str) -> ExitCode {
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("wsecho: cannot listen on {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("wsecho: accept: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if let Ok(mut ws) = accept_async_with_config(stream, Some(config())).await {
                let _ = echo(&mut ws, None).await;
            }
        });
    }
}

/// A WebSocket to `url` over a TCP connection to `connect`, in TLS when `tls` is given.
async fn open(
    url: &str,
    connect: &str,
    tls: Option<&TlsClient>,
) -> Result<WebSocketStream<ClientStream>, String> {
    let opened = async {
        let host = connect.rsplit_once(':').map_or(connect, |(host, _)| host);
        let stream = ClientStream::open(connect, host, tls).await?;
        let _ = stream.tcp().set_nodelay(true);
        let (ws, _) = client_async_with_config(url, stream, Some(config()))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(ws)
    };
    timeout(Duration::from_secs(10), opened)
        .await
        .map_err(|_| format!("{url}: no handshake within 10 s"))?
}

async fn get_case_count(server: &str, connect: &str) -> Result<u32, String> {
    let url = format!("{server}/getCaseCount");
    let mut ws = open(&url, connect, None).await?;
    let count = match timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => text
            .trim()
            .parse::<u32>()
            .map_err(|e| format!("{url}: not a count: {e}"))?,
        _ => return Err(format!("{url}: no case count")),
    };
    let _ = timeout(Duration::from_secs(5), ws.close(None)).await;
    Ok(count)
}

async fn update_reports(server: &str, connect: &str, agent: &str) -> Result<(), String> {
    let url = format!("{server}/updateReports?agent={agent}");
    let closed = async {
        let mut ws = open(&url, connect, None).await?;
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
        Ok(())
    };
    timeout(Duration::from_secs(120), closed)
        .await
        .map_err(|_| format!("{url}: not over after 120 s"))?
}

/// host:port of a ws:// URL.
fn authority(url: &str) -> Result<String, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("no host in {url}"))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

async fn client(args: &ClientArgs) -> Result<(), String> {
    let ClientArgs {
        url,
        agent,
        connect,
        connect_ca,
        first,
        last,
        idle_timeout,
        case_timeout,
        update_only,
        no_update,
    } = args;
    let (first, case_timeout) = (*first, *case_timeout);
    let server = url.trim_end_matches('/');
    let direct = authority(server)?;
    let tls = connect_ca.as_deref().map(TlsClient::trusting).transpose()?;
    if !*update_only {
        let count = get_case_count(server, &direct).await?;
        let last = last.unwrap_or(count).min(count);
        let via = connect
            .as_deref()
            .map(|c| format!(" via {c}"))
            .unwrap_or_default();
        println!("{agent}: {count} cases, running {first} to {last}{via}");
        let target = connect.as_deref().unwrap_or(&direct);
        let idle = Duration::from_secs_f64(*idle_timeout);
        let mut abandoned = Vec::new();
        for case in first..=last {
            let url = format!("{server}/runCase?case={case}&agent={agent}");
            let run = async {
                match open(&url, target, tls.as_ref()).await {
                    // The fuzzing server judges the connection; a failed one is its verdict.
                    Err(_) => Ok(()),
                    Ok(mut ws) => echo(&mut ws, Some(idle)).await,
                }
            };
            match timeout(Duration::from_secs_f64(case_timeout), run).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => abandoned.push(format!("#{case} ({why})")),
                Err(_) => abandoned.push(format!("#{case} (not over after {case_timeout:.0} s)")),
            }
        }
        if !abandoned.is_empty() {
            println!(
                "{agent}: {} cases abandoned: {}",
                abandoned.len(),
                abandoned.join(", ")
            );
        }
    }
    if !*no_update {
        update_reports(server, &direct, agent).await?;
        println!("{agent}: reports updated");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Server { listen } => serve(&listen).await,
        Command::Client(args) => {
            let done = client(&args).await;
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("wsecho: the fuzzing server is not reachable: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
