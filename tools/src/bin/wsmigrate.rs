//! Measures a ring change under load: how long until every affected WebSocket is on its new
//! owner, how many messages were lost, and how many unaffected connections were touched.
//!
//! Opens `--connections` WebSockets through a gateway, keeps echo traffic on all of them
//! (`--rate` messages per second each), then changes the ring through the gateway's admin
//! API (`--add id=host:port`, or with no value a demo backend). It computes which users
//! must move from the ring before and after (as the admin API reports it) and follows every
//! connection: a `connected` message with `migratedFrom` marks a live move, a close a
//! reconnect. Loopback only; every run is bounded by `--time-limit`.

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{watch, Semaphore},
};
use tokio_tungstenite::tungstenite::Message;
use tower_hashring::Ring;
use wscluster_tools::{check_loopback, percentile_ms};

#[derive(Parser, Clone)]
#[command(about = "Measure a live ring change through a loopback gateway")]
struct Args {
    /// The gateway's WebSocket URL with `{user}`, e.g. `ws://127.0.0.1:7000/connect/{user}`.
    #[arg(long)]
    url: String,
    /// The gateway's admin address, e.g. `127.0.0.1:7001`.
    #[arg(long)]
    admin: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Echo messages per second per connection.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds of traffic before the change.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds of traffic after the change.
    #[arg(long, default_value_t = 5)]
    after: u64,
    /// The backend to add, `id=host:port`; without it the gateway starts a demo backend.
    #[arg(long)]
    add: Option<String>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    handshake_concurrency: usize,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 120)]
    time_limit: u64,
}

/// What one connection saw.
#[derive(Debug, Default)]
struct Seen {
    user: String,
    first_server: String,
    /// Live moves: when, and to which backend.
    moves: Vec<(Instant, String)>,
    sent: u64,
    /// Echoes received in order, without a gap.
    in_order: u64,
    /// Echoes that arrived out of order or twice.
    disordered: u64,
    /// A close frame's code, or 1006 for an error.
    closed: Option<u16>,
}

async fn admin(addr: &str, method: &str, path: &str, body: &str) -> Result<Value, String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("admin {addr}: {e}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 2") {
        return Err(format!("{method} {path}: {head} {body}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{method} {path}: {e}: {body}"))
}

fn ring_from(admin_ring: &Value) -> Result<Ring, String> {
    let members = admin_ring["members"].as_array().ok_or("no members")?;
    members
        .iter()
        .fold(Ring::builder(), |builder, m| {
            let id = m["id"].as_str().unwrap_or_default();
            builder.node(id, m["weight"].as_u64().unwrap_or(1) as u32)
        })
        .build()
        .map_err(|e| e.to_string())
}

async fn connection(
    args: Arc<Args>,
    user: String,
    handshakes: Arc<Semaphore>,
    ready: Arc<tokio::sync::Barrier>,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen {
        user: user.clone(),
        ..Seen::default()
    };
    let url = args.url.replace("{user}", &user);
    let permit = handshakes.acquire().await;
    let connected = tokio_tungstenite::connect_async(url).await;
    drop(permit);
    let socket = match connected {
        Ok((mut socket, _)) => match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let hello: Value = serde_json::from_str(&text).unwrap_or_default();
                seen.first_server = hello["server"].as_str().unwrap_or_default().to_owned();
                Some(socket)
            }
            _ => None,
        },
        Err(_) => None,
    };
    ready.wait().await;
    let Some(socket) = socket else {
        seen.closed = Some(1006);
        return seen;
    };
    let (mut sink, mut stream) = socket.split();
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    // Spread the first sends over one gap so the load is even.
    let mut next_send = tokio::time::Instant::now() + gap.mul_f64(fastrand_unit(&user));
    let mut stopping = false;
    let mut drain_deadline = None;
    loop {
        if stopping && seen.in_order + seen.disordered >= seen.sent {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_send), if !stopping => {
                if sink.send(Message::text(format!("n{}", seen.sent))).await.is_err() {
                    seen.closed.get_or_insert(1006);
                    break;
                }
                seen.sent += 1;
                next_send += gap;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                drain_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            () = async { tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if drain_deadline.is_some() => break,
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap_or_default();
                    match message["type"].as_str() {
                        Some("echo") => {
                            let expected = format!("n{}", seen.in_order);
                            if message["content"].as_str() == Some(&expected) {
                                seen.in_order += 1;
                            } else {
                                seen.disordered += 1;
                            }
                        }
                        Some("connected") => {
                            let server = message["server"].as_str().unwrap_or_default();
                            seen.moves.push((Instant::now(), server.to_owned()));
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    seen.closed = Some(frame.map_or(1005, |f| f.code.into()));
                    break;
                }
                Some(Ok(_)) => {}
                _ => {
                    seen.closed.get_or_insert(1006);
                    break;
                }
            },
        }
    }
    let _ = sink.close().await;
    seen
}

/// A per-user fraction in [0, 1), so send times are spread but reproducible.
fn fastrand_unit(user: &str) -> f64 {
    let hash = user.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Arc::new(Args::parse());
    for url in [args.url.clone(), format!("http://{}", args.admin)] {
        if let Err(error) = check_loopback(&url) {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    }
    let limit = Duration::from_secs(args.time_limit);
    match tokio::time::timeout(limit, run(args.clone())).await {
        Ok(Ok(clean)) if clean => ExitCode::SUCCESS,
        Ok(Ok(_)) => ExitCode::FAILURE,
        Ok(Err(error)) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: time limit of {}s reached", args.time_limit);
            ExitCode::FAILURE
        }
    }
}

/// Runs the measurement; `Ok(true)` when nothing was lost or touched that should not be.
async fn run(args: Arc<Args>) -> Result<bool, String> {
    let handshakes = Arc::new(Semaphore::new(args.handshake_concurrency.max(1)));
    let ready = Arc::new(tokio::sync::Barrier::new(args.connections + 1));
    let (stop, stopped) = watch::channel(false);
    let tasks: Vec<_> = (0..args.connections)
        .map(|n| {
            tokio::spawn(connection(
                args.clone(),
                format!("u{n}"),
                handshakes.clone(),
                ready.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    ready.wait().await;
    println!(
        "{} connections open in {:.1} s",
        args.connections,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    let before = ring_from(&admin(&args.admin, "GET", "/admin/ring", "").await?)?;
    let body = match &args.add {
        Some(spec) => {
            let (id, address) = spec
                .split_once('=')
                .ok_or_else(|| format!("--add `{spec}` is not id=host:port"))?;
            serde_json::json!({ "id": id, "address": address }).to_string()
        }
        None => String::new(),
    };
    let changed_at = Instant::now();
    let added = admin(&args.admin, "POST", "/admin/backends", &body).await?;
    let after = ring_from(&admin(&args.admin, "GET", "/admin/ring", "").await?)?;
    println!("added {}", added["id"]);
    tokio::time::sleep(Duration::from_secs(args.after)).await;
    stop.send_replace(true);

    let mut seen = Vec::with_capacity(tasks.len());
    for task in tasks {
        seen.push(task.await.map_err(|e| e.to_string())?);
    }
    let owner = |ring: &Ring, user: &str| {
        ring.route(user.as_bytes())
            .map(|n| n.id().to_string())
            .unwrap_or_default()
    };
    let (mut affected, mut moved, mut unaffected_touched, mut wrong) = (0, 0, 0, 0);
    let (mut sent, mut lost, mut disordered, mut closes) = (0u64, 0u64, 0u64, 0);
    let mut move_times_us = Vec::new();
    let mut close_codes: HashMap<u16, usize> = HashMap::new();
    for s in &seen {
        let (old, new) = (owner(&before, &s.user), owner(&after, &s.user));
        sent += s.sent;
        lost += s.sent.saturating_sub(s.in_order + s.disordered);
        disordered += s.disordered;
        if let Some(code) = s.closed {
            closes += 1;
            *close_codes.entry(code).or_default() += 1;
        }
        let last_server = s.moves.last().map_or(&s.first_server, |(_, server)| server);
        if old != new {
            affected += 1;
            if *last_server == new && s.closed.is_none() {
                moved += 1;
                if let Some((at, _)) = s.moves.last() {
                    move_times_us.push(at.duration_since(changed_at).as_micros() as u64);
                }
            }
        } else if !s.moves.is_empty() || s.closed.is_some() {
            unaffected_touched += 1;
        }
        if *last_server != new {
            wrong += 1;
        }
    }
    move_times_us.sort_unstable();
    let all_moved_ms = move_times_us
        .last()
        .map_or(f64::NAN, |us| *us as f64 / 1000.0);
    println!(
        "affected {affected} of {} ({:.1} %), moved live {moved}, on the wrong backend {wrong}",
        seen.len(),
        100.0 * affected as f64 / seen.len().max(1) as f64
    );
    println!(
        "time to move every affected connection: {all_moved_ms:.1} ms (p50 {:.1} ms, p99 {:.1} ms)",
        percentile_ms(&move_times_us, 50.0),
        percentile_ms(&move_times_us, 99.0)
    );
    println!(
        "messages sent {sent}, lost {lost}, out of order {disordered}; closes {closes} {close_codes:?}; unaffected touched {unaffected_touched}"
    );
    Ok(moved == affected && lost == 0 && disordered == 0 && unaffected_touched == 0 && wrong == 0)
}
