//! A bounded WebSocket load generator for loopback targets.
//!
//! Opens `--connections` WebSockets to `--url` (with `{user}` replaced by a user id), waits
//! for each backend's `connected` message, then does `--messages` echo round trips of
//! `--size` bytes per connection (at `--rate` messages/s per connection if given). Prints
//! handshakes/s, messages/s, round-trip percentiles and errors. `--hold SECS` instead keeps
//! the connections open and idle (for memory measurements), printing `<label>: holding`
//! once every handshake is over. Refuses non-loopback targets, and stops by itself after
//! `--time-limit`.
//!
//! `wss://` URLs connect over TLS, trusting only `--ca` (a full handshake every time, no
//! session resumption). `--close wait` ends each WebSocket as a browser does (its Close,
//! then the server's); `--close leave` as a client that does not wait: its Close, then the
//! socket dropped.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::{
    tungstenite::{http::Uri, Message},
    WebSocketStream,
};
use wscluster_tools::{
    check_loopback, percentile_ms,
    tls::{ClientStream, TlsClient},
};

/// How a client ends its WebSockets.
#[derive(Clone, Copy, ValueEnum)]
enum Close {
    /// Its Close, then it reads until the server's Close ends the stream (as browsers do).
    Wait,
    /// Its Close, then it drops the socket without waiting (a tab closing, an app going to
    /// the background).
    Leave,
}

#[derive(Parser, Clone)]
#[command(about = "Bounded WebSocket load against a loopback target")]
struct Args {
    /// Target, with `{user}` for the user id, e.g. `ws://127.0.0.1:7000/connect/{user}`.
    #[arg(long)]
    url: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Echo round trips per connection.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per second per connection (default: as fast as echoes come back).
    #[arg(long)]
    rate: Option<f64>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    handshake_concurrency: usize,
    /// Keep the connections open and idle this many seconds instead of sending messages.
    #[arg(long)]
    hold: Option<u64>,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 120)]
    time_limit: u64,
    /// How each WebSocket ends.
    #[arg(long, value_enum, default_value_t = Close::Wait)]
    close: Close,
    /// The CA certificate (PEM) that `wss://` targets are checked against.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A label for the report line.
    #[arg(long, default_value = "target")]
    label: String,
}

#[derive(Default)]
struct ConnectionReport {
    connected: bool,
    errors: usize,
    round_trips_us: Vec<u64>,
}

/// Where the target is: host:port to connect to, the host the certificate names, and TLS.
struct Target {
    address: String,
    host: String,
    tls: Option<TlsClient>,
}

impl Target {
    fn of(args: &Args) -> Result<Self, String> {
        let url = args.url.replace("{user}", "u0");
        let uri: Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let secure = uri.scheme_str() == Some("wss");
        let host = uri.host().ok_or_else(|| format!("no host in {url}"))?;
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = match (secure, &args.ca) {
            (false, _) => None,
            (true, Some(ca)) => Some(TlsClient::trusting(ca)?),
            (true, None) => return Err("a wss:// URL needs --ca".into()),
        };
        Ok(Self {
            address: format!("{host}:{port}"),
            host: host.to_owned(),
            tls,
        })
    }

    async fn websocket(&self, url: String) -> Result<WebSocketStream<ClientStream>, String> {
        let stream = ClientStream::open(&self.address, &self.host, self.tls.as_ref()).await?;
        let (socket, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(socket)
    }
}

async fn one_connection(
    args: Arc<Args>,
    target: Arc<Target>,
    user: usize,
    handshakes: Arc<Semaphore>,
    start_messages: Arc<tokio::sync::Barrier>,
) -> ConnectionReport {
    let mut report = ConnectionReport::default();
    let url = args.url.replace("{user}", &format!("u{user}"));
    let permit = handshakes.acquire().await;
    let connected = target.websocket(url).await;
    drop(permit);
    let mut socket = match connected {
        Ok(mut socket) => match socket.next().await {
            Some(Ok(Message::Text(_))) => socket,
            _ => {
                report.errors += 1;
                start_messages.wait().await;
                return report;
            }
        },
        Err(_) => {
            report.errors += 1;
            start_messages.wait().await;
            return report;
        }
    };
    report.connected = true;
    start_messages.wait().await;
    if let Some(hold) = args.hold {
        tokio::time::sleep(Duration::from_secs(hold)).await;
        close(&mut socket, args.close).await;
        return report;
    }
    let payload = "x".repeat(args.size);
    let gap = args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_send = Instant::now();
    report.round_trips_us.reserve(args.messages);
    for _ in 0..args.messages {
        if let Some(gap) = gap {
            tokio::time::sleep_until(next_send.into()).await;
            next_send += gap;
        }
        let sent = Instant::now();
        if socket.send(Message::text(payload.clone())).await.is_err() {
            report.errors += 1;
            break;
        }
        match socket.next().await {
            Some(Ok(Message::Text(_))) => {
                report
                    .round_trips_us
                    .push(sent.elapsed().as_micros() as u64);
            }
            _ => {
                report.errors += 1;
                break;
            }
        }
    }
    close(&mut socket, args.close).await;
    report
}

async fn close<S>(socket: &mut WebSocketStream<S>, how: Close)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match how {
        Close::Wait => close_as_a_browser_does(socket).await,
        // The Close is written and flushed; the caller drops the socket.
        Close::Leave => {
            let _ = socket.send(Message::Close(None)).await;
        }
    }
}

/// Sends a Close, then reads until the server's Close ends the stream (RFC 6455 §7.1.1: the
/// server closes TCP first), as browsers do, instead of dropping the socket right after its
/// own Close. Bounded: a server that never answers gets 5 s.
async fn close_as_a_browser_does<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if socket.close(None).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Arc::new(Args::parse());
    if let Err(error) = check_loopback(&args.url) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let target = match Target::of(&args) {
        Ok(target) => Arc::new(target),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let handshakes = Arc::new(Semaphore::new(args.handshake_concurrency.max(1)));
    let start_messages = Arc::new(tokio::sync::Barrier::new(args.connections + 1));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|user| {
            tokio::spawn(one_connection(
                args.clone(),
                target.clone(),
                user,
                handshakes.clone(),
                start_messages.clone(),
            ))
        })
        .collect();
    let limit = Duration::from_secs(args.time_limit);
    let run = async {
        start_messages.wait().await;
        let handshake_time = started.elapsed();
        if args.hold.is_some() {
            // Every handshake is over: a memory sample may be taken from now on.
            println!("{}: holding", args.label);
        }
        let messages_started = Instant::now();
        let mut reports = Vec::with_capacity(tasks.len());
        for task in tasks {
            reports.push(task.await.unwrap_or_default());
        }
        (handshake_time, messages_started.elapsed(), reports)
    };
    let Ok((handshake_time, message_time, reports)) = tokio::time::timeout(limit, run).await else {
        eprintln!("error: time limit of {}s reached", args.time_limit);
        return ExitCode::FAILURE;
    };
    let connected = reports.iter().filter(|r| r.connected).count();
    let errors: usize = reports.iter().map(|r| r.errors).sum();
    let mut rtts: Vec<u64> = reports.into_iter().flat_map(|r| r.round_trips_us).collect();
    rtts.sort_unstable();
    let handshakes_per_s = connected as f64 / handshake_time.as_secs_f64();
    if args.hold.is_some() {
        println!(
            "{}: {connected} connections held ({:.0} handshakes/s), {errors} errors",
            args.label, handshakes_per_s
        );
    } else {
        println!(
            "{}: {connected} conns, {:.0} handshakes/s, {:.0} msgs/s, rtt p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms, {errors} errors",
            args.label,
            handshakes_per_s,
            rtts.len() as f64 / message_time.as_secs_f64(),
            percentile_ms(&rtts, 50.0),
            percentile_ms(&rtts, 99.0),
            percentile_ms(&rtts, 99.9),
        );
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
