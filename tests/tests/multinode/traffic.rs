//! Echo traffic from real WebSocket clients, one task per user: each sends a numbered
//! message every `SEND_EVERY`, records every echo, every live move (`connected` with
//! `migratedFrom`) and every close, and on a close reconnects through the balancer and
//! resends what was not echoed yet.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{net::TcpStream, task::JoinHandle, time::Instant};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};
use wscluster_testkit::MultinodeSwarm;

const SEND_EVERY: Duration = Duration::from_millis(250);
/// Between failed connection attempts (a gateway restarting, a node cut off).
const RETRY_AFTER: Duration = Duration::from_millis(250);

type Socket = WebSocketStream<TcpStream>;

/// A live move: the backend's `connected` message with `migratedFrom`.
#[derive(Clone, Debug)]
pub(crate) struct Move {
    pub(crate) at: Instant,
    pub(crate) from: String,
    pub(crate) to: String,
}

/// The end of a connection: its close code (`None`: it ended with no close frame).
#[derive(Clone, Debug)]
pub(crate) struct Close {
    pub(crate) code: Option<u16>,
    /// When it ended.
    pub(crate) at: Instant,
    /// The backend it was on then.
    pub(crate) on: Option<String>,
}

impl Close {
    fn now(code: Option<u16>, log: &Mutex<UserLog>) -> Self {
        let on = log.lock().unwrap_or_else(|e| e.into_inner()).on.clone();
        Self {
            code,
            at: Instant::now(),
            on,
        }
    }
}

/// What happened to one user since the last [`Traffic::take_events`].
#[derive(Clone, Debug, Default)]
pub(crate) struct UserEvents {
    pub(crate) moves: Vec<Move>,
    pub(crate) closes: Vec<Close>,
    /// Each connection's first backend, and when.
    pub(crate) connects: Vec<(Instant, String)>,
    /// Echoes from a backend other than the one the user was told it is on.
    pub(crate) stray_echoes: u32,
}

impl UserEvents {
    /// No move, no close, every echo from the right backend.
    pub(crate) fn is_quiet(&self) -> bool {
        self.moves.is_empty() && self.closes.is_empty() && self.stray_echoes == 0
    }
}

#[derive(Default)]
struct UserLog {
    first: Option<String>,
    on: Option<String>,
    /// Its connection is open and its backend said `connected`.
    connected: bool,
    events: UserEvents,
    next_seq: u64,
    unacked: BTreeMap<u64, Instant>,
    echoes: HashMap<u64, u32>,
}

/// One user: its key, the gateway (node) it first connected through, and its log.
pub(crate) struct User {
    pub(crate) key: String,
    pub(crate) gateway: usize,
    log: Arc<Mutex<UserLog>>,
}

impl User {
    fn log(&self) -> std::sync::MutexGuard<'_, UserLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backend of its first connection.
    pub(crate) fn first_backend(&self) -> Option<String> {
        self.log().first.clone()
    }

    /// The backend it is on now.
    pub(crate) fn backend(&self) -> Option<String> {
        self.log().on.clone()
    }
}

struct Control {
    sending: AtomicBool,
    stopped: AtomicBool,
}

/// The users and their tasks.
pub(crate) struct Traffic {
    keys: Vec<String>,
    users: Vec<User>,
    control: Arc<Control>,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens `/connect/{key}` through `via` (HAProxy, which sends the PROXY header).
async fn connect(via: SocketAddr, key: &str) -> Option<Socket> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(via))
        .await
        .ok()?
        .ok()?;
    let url = format!("ws://{via}/connect/{key}");
    let handshake = tokio_tungstenite::client_async(url, tcp);
    let (socket, _) = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .ok()?
        .ok()?;
    Some(socket)
}

/// One connection through `via` for `key`: the backend that says `connected`, checked to
/// echo a message too. Panics if that fails within 20 s.
pub(crate) async fn probe(via: SocketAddr, key: &str) -> String {
    let exchange = async {
        let mut socket = connect(via, key).await.expect("a handshake");
        let hello = next_json(&mut socket).await.expect("connected");
        let server = hello["server"].as_str().expect("a server").to_owned();
        socket.send(Message::text("probe")).await.expect("sent");
        let echo = next_json(&mut socket).await.expect("an echo");
        assert_eq!(echo["server"].as_str(), Some(server.as_str()), "{echo}");
        server
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| panic!("no echo for {key} through {via} within 20 s"))
}

async fn next_json(socket: &mut Socket) -> Option<Value> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Records a backend's message.
fn record(log: &mut UserLog, message: &Value) {
    let server = message["server"].as_str().unwrap_or_default().to_owned();
    let now = Instant::now();
    match message["type"].as_str() {
        Some("connected") => {
            match message["migratedFrom"].as_str() {
                Some(from) => log.events.moves.push(Move {
                    at: now,
                    from: from.to_owned(),
                    to: server.clone(),
                }),
                None => {
                    log.first.get_or_insert_with(|| server.clone());
                    log.connected = true;
                    log.events.connects.push((now, server.clone()));
                }
            }
            log.on = Some(server);
        }
        Some("echo") => {
            if log.on.as_deref() != Some(server.as_str()) {
                log.events.stray_echoes += 1;
            }
            if let Some(seq) = message["content"].as_str().and_then(|c| c.parse().ok()) {
                log.unacked.remove(&seq);
                *log.echoes.entry(seq).or_default() += 1;
            }
        }
        _ => {}
    }
}

/// Relays one connection until it ends (its close code) or the traffic stops (`None`).
async fn session(socket: Socket, log: &Mutex<UserLog>, control: &Control) -> Option<Close> {
    let (mut sink, mut stream) = socket.split();
    // What the previous connection left unanswered goes first.
    let resend: Vec<u64> = log.lock().unwrap().unacked.keys().copied().collect();
    for seq in resend {
        if sink.send(Message::text(seq.to_string())).await.is_err() {
            return Some(Close::now(None, log));
        }
    }
    let mut ticks = tokio::time::interval(SEND_EVERY);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if control.stopped.load(Ordering::Relaxed) {
                    return None;
                }
                if !control.sending.load(Ordering::Relaxed) {
                    continue;
                }
                let seq = {
                    let mut log = log.lock().unwrap();
                    let seq = log.next_seq;
                    log.next_seq += 1;
                    log.unacked.insert(seq, Instant::now());
                    seq
                };
                // A failed send stays unacknowledged: resent after the reconnect.
                let _ = sink.send(Message::text(seq.to_string())).await;
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(message) = serde_json::from_str::<Value>(&text) {
                        record(&mut log.lock().unwrap(), &message);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    return Some(Close::now(code, log));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(Close::now(None, log)),
            },
        }
    }
}

/// A user's task: connects through `first_via`, then through `reconnect_via` after every
/// close, until the traffic stops.
async fn drive_user(
    key: String,
    first_via: SocketAddr,
    reconnect_via: SocketAddr,
    log: Arc<Mutex<UserLog>>,
    control: Arc<Control>,
) {
    let mut via = first_via;
    while !control.stopped.load(Ordering::Relaxed) {
        let Some(socket) = connect(via, &key).await else {
            tokio::time::sleep(RETRY_AFTER).await;
            via = reconnect_via;
            continue;
        };
        let Some(close) = session(socket, &log, &control).await else {
            return;
        };
        let mut log = log.lock().unwrap();
        log.connected = false;
        log.events.closes.push(close);
        drop(log);
        via = reconnect_via;
    }
}

impl Traffic {
    /// One user per key, user `u` first connected through gateway `u % nodes + 1` alone;
    /// every reconnection goes through the balancer.
    pub(crate) fn start(swarm: &MultinodeSwarm, keys: &[String]) -> Self {
        let control = Arc::new(Control {
            sending: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
        });
        let mut users = Vec::new();
        let mut tasks = Vec::new();
        for (u, key) in keys.iter().enumerate() {
            let gateway = u % swarm.nodes() + 1;
            let log = Arc::new(Mutex::new(UserLog::default()));
            tasks.push(tokio::spawn(drive_user(
                key.clone(),
                swarm.gateway_alone(gateway),
                swarm.balancer(),
                log.clone(),
                control.clone(),
            )));
            users.push(User {
                key: key.clone(),
                gateway,
                log,
            });
        }
        Self {
            keys: keys.to_vec(),
            users,
            control,
            tasks,
        }
    }

    pub(crate) fn users(&self) -> &[User] {
        &self.users
    }

    pub(crate) fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Waits until every user is connected and its connection has said `connected`.
    pub(crate) async fn wait_connected(&self, within: Duration) {
        let connected = wscluster_testkit::eventually(within, async || {
            self.users.iter().all(|u| u.log().connected)
        });
        assert!(
            connected.await,
            "not every user connected within {within:?}"
        );
    }

    /// Stops sending and waits for the echoes of everything sent; returns, per user, the
    /// messages still unanswered after `within` (and forgets them: lost).
    pub(crate) async fn quiesce(&self, within: Duration) -> Vec<(String, Vec<u64>)> {
        self.control.sending.store(false, Ordering::Relaxed);
        wscluster_testkit::eventually(within, async || {
            self.users.iter().all(|u| u.log().unacked.is_empty())
        })
        .await;
        let mut lost = Vec::new();
        for user in &self.users {
            let mut log = user.log();
            if !log.unacked.is_empty() {
                let seqs = std::mem::take(&mut log.unacked).into_keys().collect();
                lost.push((user.key.clone(), seqs));
            }
        }
        lost
    }

    /// Sends again after [`quiesce`](Self::quiesce).
    pub(crate) fn resume(&self) {
        self.control.sending.store(true, Ordering::Relaxed);
    }

    /// Every user's events since the last call.
    pub(crate) fn take_events(&self) -> Vec<UserEvents> {
        self.users
            .iter()
            .map(|u| std::mem::take(&mut u.log().events))
            .collect()
    }

    /// Waits until each of `users` has moved live at least once since the last
    /// [`take_events`](Self::take_events); those that did not, with their events.
    pub(crate) async fn wait_moved(&self, users: &[usize], within: Duration) -> Result<(), String> {
        let moved = wscluster_testkit::eventually(within, async || {
            users
                .iter()
                .all(|&u| !self.users[u].log().events.moves.is_empty())
        });
        if moved.await {
            return Ok(());
        }
        let still: Vec<(&str, UserEvents)> = users
            .iter()
            .filter(|&&u| self.users[u].log().events.moves.is_empty())
            .map(|&u| (self.keys[u].as_str(), self.users[u].log().events.clone()))
            .collect();
        Err(format!("not moved within {within:?}: {still:?}"))
    }

    /// Waits until each of `users` has moved live to `owners[u]` since the last
    /// [`take_events`](Self::take_events) (maybe through another backend first, when two
    /// backends leave one after the other), or reconnected to it after a 1012 close; when
    /// each first got there.
    pub(crate) async fn wait_moved_to(
        &self,
        users: &[usize],
        owners: &[String],
        within: Duration,
    ) -> Result<Vec<Instant>, String> {
        let arrived = |u: usize| {
            let log = self.users[u].log();
            let mut moves = log.events.moves.iter();
            let moved = moves.find(|m| m.to == owners[u]).map(|m| m.at);
            // A move to a backend that is dead too but not yet known to be falls back to a
            // 1012 close: the user then reconnects to its owner.
            let fell_back = log.events.closes.iter().any(|c| c.code == Some(1012));
            let mut connects = log.events.connects.iter();
            let reconnected = connects.find(|(_, on)| fell_back && *on == owners[u]);
            moved.or(reconnected.map(|(at, _)| *at))
        };
        let moved = wscluster_testkit::eventually(within, async || {
            users.iter().all(|&u| arrived(u).is_some())
        });
        if !moved.await {
            let still: Vec<(&str, &str, UserEvents)> = users
                .iter()
                .filter(|&&u| arrived(u).is_none())
                .map(|&u| {
                    let events = self.users[u].log().events.clone();
                    (self.keys[u].as_str(), owners[u].as_str(), events)
                })
                .collect();
            return Err(format!("not on their owners within {within:?}: {still:?}"));
        }
        Ok(users.iter().filter_map(|&u| arrived(u)).collect())
    }

    /// Waits until each of `users` was closed and connected again since the last
    /// [`take_events`](Self::take_events); each one's first new connection: when, and its
    /// backend.
    pub(crate) async fn wait_reconnected(
        &self,
        users: &[usize],
        within: Duration,
    ) -> Vec<(Instant, String)> {
        let reconnected = wscluster_testkit::eventually(within, async || {
            users.iter().all(|&u| {
                let log = self.users[u].log();
                !log.events.closes.is_empty() && !log.events.connects.is_empty()
            })
        });
        assert!(
            reconnected.await,
            "not every user reconnected within {within:?}"
        );
        users
            .iter()
            .map(|&u| self.users[u].log().events.connects[0].clone())
            .collect()
    }

    /// How many messages were echoed, and those echoed more than once: (key, seq, count).
    pub(crate) fn echo_counts(&self) -> (usize, Vec<(String, u64, u32)>) {
        let mut echoed = 0;
        let mut duplicated = Vec::new();
        for user in &self.users {
            let log = user.log();
            echoed += log.echoes.len();
            for (&seq, &count) in &log.echoes {
                if count > 1 {
                    duplicated.push((user.key.clone(), seq, count));
                }
            }
        }
        (echoed, duplicated)
    }

    /// Stops every user's task and waits for them (at most 5 s).
    pub(crate) async fn stop(mut self) {
        self.control.stopped.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        // On a panic elsewhere: no user task outlives the test's cluster.
        self.control.stopped.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}
