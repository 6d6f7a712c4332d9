//! The reference backend: a stateful WebSocket service that keeps each user's connections.
//!
//! - `GET /connect/{userId}` (WebSocket): sends `{"type":"connected","server":ID,"count":N}`
//!   on open (with `"migratedFrom":OLD` when the gateway moved the connection live from
//!   backend `OLD`; with a [`MigrationSecret`], only when the move's signature checks out),
//!   then echoes each text message as `{"type":"echo","server":ID,
//!   "content":…}`, before reading the next one, so every message read gets its echo even if a
//!   close follows. Several connections of one user are all kept.
//! - `POST /send?userId=U` (body = message) and `GET /send?userId=U&message=M`: deliver
//!   `{"type":"message","server":ID,"content":M}` to every local connection of `U`; answers
//!   the number delivered, or 404 with a reason when `U` has none here.
//! - `GET /count`: the local connection count; `GET /health`: `ok`, or 503 while draining.
//!
//! [`ReferenceBackend::serve_draining`] shuts down the way a backend behind the gateway should: it
//! first fails its health check, so the gateway takes it off the ring and moves its users
//! live, and stops once they have gone (or a deadline passes).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use axum::{
    extract::{
        ws::{Message, WebSocket, WebSocketUpgrade},
        Path, Query, State,
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;
use tokio::{net::TcpListener, sync::mpsc};
use tower_ws_migrate::{MigrationSecret, MIGRATED_FROM, MIGRATION_SIGNATURE};

/// The connections of one backend, by user.
#[derive(Clone, Debug)]
pub struct ReferenceBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    secret: Option<MigrationSecret>,
    next_connection: AtomicU64,
    users: Mutex<HashMap<String, HashMap<u64, mpsc::UnboundedSender<String>>>>,
    draining: std::sync::atomic::AtomicBool,
}

impl ReferenceBackend {
    /// A backend named `id` (the `server` field of its messages).
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: id.into(),
                secret: None,
                next_connection: AtomicU64::new(0),
                users: Mutex::new(HashMap::new()),
                draining: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Believes `x-wscluster-migrated-from` only with a valid signature by `secret`.
    ///
    /// ```
    /// use reference_backend::ReferenceBackend;
    /// use tower_ws_migrate::MigrationSecret;
    ///
    /// let backend = ReferenceBackend::new("backend-a").with_secret(MigrationSecret::new("0123456789abcdef"));
    /// assert_eq!(backend.id(), "backend-a");
    /// ```
    pub fn with_secret(self, secret: MigrationSecret) -> Self {
        let inner = Inner {
            id: self.inner.id.clone(),
            secret: Some(secret),
            next_connection: AtomicU64::new(0),
            users: Mutex::new(HashMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Live WebSocket connections on this backend.
    pub fn connection_count(&self) -> usize {
        self.users().values().map(HashMap::len).sum()
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/connect/{user}", get(connect))
            .route("/send", get(send_query).post(send_body))
            .route("/count", get(count))
            .route("/health", get(health))
            .with_state(self.clone())
    }

    /// A listener for a backend on `addr`, with a 4096-connection accept backlog: when a
    /// ring change moves thousands of users to a new backend at once, the gateway's dials
    /// arrive together, and tokio's default backlog (1024) would drop the rest into SYN
    /// retries a second later.
    pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serves on `listener`; once `shutdown` resolves, answers its health check with 503
    /// and keeps serving until its last WebSocket has gone (moved by the gateway) or
    /// `drain_limit` has passed.
    pub async fn serve_draining(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        drain_limit: std::time::Duration,
    ) -> std::io::Result<()> {
        let this = self.clone();
        let drained = async move {
            shutdown.await;
            this.inner.draining.store(true, Ordering::Relaxed);
            tracing::info!(backend = %this.id(), "draining: health answers 503");
            let deadline = tokio::time::Instant::now() + drain_limit;
            while this.connection_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        self.serve(listener, drained).await
    }

    fn users(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, mpsc::UnboundedSender<String>>>>
    {
        self.inner.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn message(&self, kind: &str, content: &str) -> String {
        json!({ "type": kind, "server": self.id(), "content": content }).to_string()
    }

    fn deliver(&self, user: &str, content: &str) -> usize {
        let message = self.message("message", content);
        self.users().get(user).map_or(0, |conns| {
            conns
                .values()
                .filter(|tx| tx.send(message.clone()).is_ok())
                .count()
        })
    }
}

async fn connect(
    State(backend): State<ReferenceBackend>,
    Path(user): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let migrated_from = migrated_from(&backend, &user, &headers);
    // A subprotocol is offered so that its negotiation can be checked through proxies.
    upgrade
        .protocols(["wscluster.v1"])
        .on_upgrade(move |socket| session(backend, user, migrated_from, socket))
}

/// Where a live move came from, when the claim holds: with a secret, only a move signed for
/// this user, from that backend, to this one, recently. (Without one, the gateway's word is
/// trusted: it drops the header from clients.)
fn migrated_from(backend: &ReferenceBackend, user: &str, headers: &HeaderMap) -> Option<String> {
    let from = headers.get(MIGRATED_FROM)?.to_str().ok()?;
    if let Some(secret) = &backend.inner.secret {
        let signature = headers
            .get(MIGRATION_SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if let Err(error) = secret.verify_now(user.as_bytes(), from, backend.id(), signature) {
            tracing::warn!(%user, %from, %error, "ignoring an unproven migration claim");
            return None;
        }
    }
    Some(from.to_owned())
}

async fn session(
    backend: ReferenceBackend,
    user: String,
    migrated_from: Option<String>,
    mut socket: WebSocket,
) {
    let id = backend
        .inner
        .next_connection
        .fetch_add(1, Ordering::Relaxed);
    let (tx, mut outbox) = mpsc::unbounded_channel();
    let count = {
        let mut users = backend.users();
        users.entry(user.clone()).or_default().insert(id, tx);
        users.values().map(HashMap::len).sum::<usize>()
    };
    let mut hello = json!({ "type": "connected", "server": backend.id(), "count": count });
    if let Some(from) = migrated_from {
        hello["migratedFrom"] = from.into();
    }
    let mut next = Some(hello.to_string());
    // One task reads and writes: an echo is written before the next frame is read, so a
    // close that follows a message never overtakes its echo.
    while let Some(text) = next.take() {
        if socket.send(Message::text(text)).await.is_err() {
            break;
        }
        next = next_outgoing(&backend, &mut socket, &mut outbox).await;
    }
    // Reading on after a close sends tungstenite's answer to it: the close handshake
    // completes instead of ending in a bare EOF.
    while let Some(Ok(_)) = socket.recv().await {}
    {
        let mut users = backend.users();
        if let Some(conns) = users.get_mut(&user) {
            conns.remove(&id);
            if conns.is_empty() {
                users.remove(&user);
            }
        }
    }
}

/// The next text to send: the echo of what the client sent, or a message for the user;
/// `None` once the client has closed.
async fn next_outgoing(
    backend: &ReferenceBackend,
    socket: &mut WebSocket,
    outbox: &mut mpsc::UnboundedReceiver<String>,
) -> Option<String> {
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => return Some(backend.message("echo", text.as_str())),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                // axum answers pings itself.
                Some(Ok(_)) => {}
            },
            Some(text) = outbox.recv() => return Some(text),
        }
    }
}

#[derive(Deserialize)]
struct SendQuery {
    #[serde(rename = "userId")]
    user: Option<String>,
    message: Option<String>,
}

async fn send_query(
    State(backend): State<ReferenceBackend>,
    Query(query): Query<SendQuery>,
) -> Response {
    match (query.user, query.message) {
        (Some(user), Some(message)) => send(&backend, &user, &message),
        _ => (
            StatusCode::BAD_REQUEST,
            "send needs the query parameters userId and message\n",
        )
            .into_response(),
    }
}

async fn send_body(
    State(backend): State<ReferenceBackend>,
    Query(query): Query<SendQuery>,
    body: String,
) -> Response {
    match query.user {
        Some(user) => send(&backend, &user, &body),
        None => (
            StatusCode::BAD_REQUEST,
            "send needs the query parameter userId\n",
        )
            .into_response(),
    }
}

fn send(backend: &ReferenceBackend, user: &str, message: &str) -> Response {
    match backend.deliver(user, message) {
        0 => (
            StatusCode::NOT_FOUND,
            format!("user {user} has no connection on {}\n", backend.id()),
        )
            .into_response(),
        delivered => {
            Json(json!({ "delivered": delivered, "server": backend.id() })).into_response()
        }
    }
}

async fn health(State(backend): State<ReferenceBackend>) -> Response {
    if backend.inner.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ok".into_response()
    }
}

async fn count(State(backend): State<ReferenceBackend>) -> Json<serde_json::Value> {
    Json(json!({ "server": backend.id(), "count": backend.connection_count() }))
}
